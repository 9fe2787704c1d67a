"""Small scene datasets that mmkat draws itself, for the detection and segmentation demos.

Each image holds one to ``max_objects`` shapes (disc, ring, square, triangle, cross) of random size and colour on
a noisy two-tone background; objects never overlap, so every mask is whole. :func:`make_scenes` writes one
folder in the standard layouts, so mmdet's ``CocoDataset`` and mmseg's ``BaseSegDataset`` read it unchanged:

    ROOT/images/{train,val}/000000.jpg ...           RGB images
    ROOT/annotations/instances_{train,val}.json       COCO instances (category ids 1..5, bbox, RLE masks
                                                      (pycocotools' compressed form), area)
    ROOT/seg/{train,val}/000000.png ...               semantic label maps: 0 background, 1..5 the classes

Everything is drawn from ``seed`` and the split, so the same arguments give the same files.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np

from .shapes import _SPLIT_SEEDS, shape_mask

SCENE_CLASSES = ('disc', 'ring', 'square', 'triangle', 'cross')
SCENE_PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 225, 25), (145, 30, 180)]
SEG_CLASSES = ('background', ) + SCENE_CLASSES
SEG_PALETTE = [(0, 0, 0)] + SCENE_PALETTE


def draw_scene(size: int, rng: np.random.Generator, max_objects: int = 4,
               min_radius: float = 0.07, max_radius: float = 0.2) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One HxWx3 uint8 scene and its objects as (class index into SCENE_CLASSES, HxW bool mask).

    Radii are drawn as fractions of ``size``; an object whose box would touch another's is redrawn (up to 50
    tries), so objects stay apart.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # background: two tones split by a random line, plus noise
    tones = rng.uniform(0, 110, size=(2, 3))
    angle = rng.uniform(0, np.pi)
    side = (np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2)) > rng.uniform(-size / 4, size / 4)
    image = np.where(side[..., None], tones[0], tones[1])
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(50):
            radius = rng.uniform(min_radius, max_radius) * size
            cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
            box = (cy - radius, cx - radius, cy + radius, cx + radius)
            if all(box[0] > b[2] + 2 or box[2] < b[0] - 2 or box[1] > b[3] + 2 or box[3] < b[1] - 2 for b in boxes):
                break
        else:
            continue
        label = int(rng.integers(len(SCENE_CLASSES)))
        mask = shape_mask(SCENE_CLASSES[label], (yy - cy) / radius, (xx - cx) / radius)
        if mask.sum() < 16:
            continue
        image = np.where(mask[..., None], rng.uniform(120, 255, size=3), image)
        objects.append((label, mask))
        boxes.append(box)
    image = image + rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def mask_to_rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO's compressed RLE of a bool HxW mask (pycocotools' encoder; counts as a str, so it is JSON)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {'counts': rle['counts'].decode('ascii'), 'size': [int(v) for v in rle['size']]}


def _bbox_xywh(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]


def make_scenes(root: str, num_images: Dict[str, int] = None, img_size: int = 256, seed: int = 0,
                max_objects: int = 4, overwrite: bool = False) -> Dict[str, int]:
    """Write the scene set under ``root`` (layout in the module docstring); returns objects per split.

    ``num_images`` maps split ('train', 'val', 'test') to image count (default train 400, val 60). An existing
    non-empty ``root`` is an error unless ``overwrite`` is set, so nothing the user has is replaced silently.
    """
    from PIL import Image  # pillow comes with torchvision

    num_images = dict(train=400, val=60) if num_images is None else dict(num_images)
    for split, count in num_images.items():
        if split not in _SPLIT_SEEDS:
            raise ValueError(f'make_scenes: split must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}')
        if not isinstance(count, int) or count < 1:
            raise ValueError(f'make_scenes: the image count of {split!r} must be a positive int, got {count!r}')
    if not isinstance(img_size, int) or img_size < 32:
        raise ValueError(f'make_scenes: img_size must be an int >= 32, got {img_size!r}')
    if osp.isdir(root) and os.listdir(root) and not overwrite:
        raise FileExistsError(f'make_scenes: {root!r} exists and is not empty; choose another folder or pass '
                              'overwrite=True (--overwrite) to rewrite its files')
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(SCENE_CLASSES)]
    totals = {}
    for split, count in num_images.items():
        rng = np.random.default_rng([seed, _SPLIT_SEEDS[split]])
        for sub in (f'images/{split}', f'seg/{split}', 'annotations'):
            os.makedirs(osp.join(root, sub), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image, objects = draw_scene(img_size, rng, max_objects=max_objects)
            stem = f'{index:06d}'
            Image.fromarray(image).save(osp.join(root, 'images', split, stem + '.jpg'), quality=92)
            label_map = np.zeros((img_size, img_size), dtype=np.uint8)
            for label, mask in objects:
                label_map[mask] = label + 1
                annotations.append(dict(id=len(annotations) + 1, image_id=index, category_id=label + 1,
                                        bbox=_bbox_xywh(mask), area=float(mask.sum()),
                                        segmentation=mask_to_rle(mask), iscrowd=0))
            Image.fromarray(label_map).save(osp.join(root, 'seg', split, stem + '.png'))
            images.append(dict(id=index, file_name=stem + '.jpg', height=img_size, width=img_size))
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
        totals[split] = len(annotations)
    return totals

