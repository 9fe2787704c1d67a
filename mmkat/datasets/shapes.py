"""A small classification dataset that mmkat draws itself: coloured shapes on noisy backgrounds.

It lets the demo config train and evaluate a KAT on any machine with no download. Images are drawn
deterministically from ``seed`` and the split, so runs are reproducible and train/val never overlap.
"""
from typing import List, Optional

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS

SHAPES = ('disc', 'ring', 'square', 'frame', 'triangle', 'cross', 'bars', 'diagonal')
_SPLIT_SEEDS = {'train': 0, 'val': 1, 'test': 2}


def shape_mask(name: str, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Boolean mask of shape ``name`` on coordinates (dy, dx) measured from its centre in units of its radius."""
    dist = np.sqrt(dy ** 2 + dx ** 2)
    box = np.maximum(np.abs(dy), np.abs(dx))
    if name == 'disc':
        return dist <= 1
    if name == 'ring':
        return (dist <= 1) & (dist >= 0.6)
    if name == 'square':
        return box <= 0.85
    if name == 'frame':
        return (box <= 0.9) & (box >= 0.55)
    if name == 'triangle':
        return (dy <= 0.8) & (dy >= 1.6 * np.abs(dx) - 0.8)
    if name == 'cross':
        return ((np.abs(dy) <= 0.25) | (np.abs(dx) <= 0.25)) & (box <= 1)
    if name == 'bars':
        return (np.floor((dy + 1) * 2.5) % 2 == 0) & (box <= 1)
    if name == 'diagonal':
        return (np.floor((dy + dx + 2) * 2) % 2 == 0) & (box <= 1)
    raise ValueError(f'shape_mask: unknown shape {name!r}; expected one of {SHAPES}')


def draw_shape(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image of shape ``SHAPES[label]`` with random position, scale, colour and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    radius = rng.uniform(0.22, 0.38) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    mask = shape_mask(SHAPES[label], (yy - cy) / radius, (xx - cx) / radius)
    background = rng.uniform(0, 110, size=3)
    foreground = rng.uniform(120, 255, size=3)
    image = np.where(mask[..., None], foreground, background)
    image = image + rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@DATASETS.register_module()
class KATDemoShapes(BaseDataset):
    """Eight shape classes drawn in memory (see :data:`SHAPES`).

    Args:
        split: 'train', 'val' or 'test'; each has its own random stream.
        num_per_class: images per class.
        img_size: image side in pixels.
        seed: base seed; the same seed and split give the same images.
        pipeline: mmpretrain-style transforms (images arrive as ``results['img']``, uint8 HxWx3).
    """

    METAINFO = dict(classes=SHAPES)

    def __init__(self,
                 split: str = 'train',
                 num_per_class: int = 200,
                 img_size: int = 32,
                 seed: int = 0,
                 pipeline: Optional[list] = None,
                 test_mode: bool = False,
                 **kwargs):
        if split not in _SPLIT_SEEDS:
            raise ValueError(f'KATDemoShapes: split must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}')
        if not isinstance(num_per_class, int) or num_per_class < 1:
            raise ValueError(f'KATDemoShapes: num_per_class must be a positive int, got {num_per_class!r}')
        if not isinstance(img_size, int) or img_size < 8:
            raise ValueError(f'KATDemoShapes: img_size must be an int >= 8, got {img_size!r}')
        self.split, self.num_per_class, self.img_size, self.seed = split, num_per_class, img_size, seed
        super().__init__(ann_file='', pipeline=pipeline or [], test_mode=test_mode, **kwargs)

    def load_data_list(self) -> List[dict]:
        rng = np.random.default_rng([self.seed, _SPLIT_SEEDS[self.split]])
        labels = np.repeat(np.arange(len(SHAPES)), self.num_per_class)
        rng.shuffle(labels)
        return [dict(img=draw_shape(int(label), self.img_size, rng), gt_label=int(label),
                     img_shape=(self.img_size, self.img_size), ori_shape=(self.img_size, self.img_size))
                for label in labels]

    def get_gt_labels(self) -> np.ndarray:
        """Labels of every item, as mmpretrain's datasets provide them."""
        return np.array([self.get_data_info(i)['gt_label'] for i in range(len(self))], dtype=np.int64)
