"""Classification data held as one uint8 tensor, served a whole batch at a time.

mmpretrain's datasets build one sample at a time through a per-sample CPU pipeline; on 28x28 images that
costs more than the model's training step on a GPU. ``KATTensorDataset`` keeps every image of a split in
one ``uint8`` tensor ``[N, C, H, W]`` (on the GPU when one is visible, ``device='auto'``), and PyTorch's
DataLoader fetches a batch with one indexing operation through ``__getitems__``. Augmentation happens on
the batch, on the model's device, in :class:`mmkat.models.KATBatchClsPreprocessor`.

The dataloader keeps mmengine's samplers (``DefaultSampler``: shuffling seeded per epoch, one shard per
rank), so only the dataset, the collate function and the data preprocessor change in a config::

    train_dataloader = dict(
        batch_size=256, num_workers=0, persistent_workers=False,
        dataset=dict(type='KATFashionMNIST', data_root='data/fashion_mnist', split='train'),
        sampler=dict(type='DefaultSampler', shuffle=True),
        collate_fn=dict(type='kat_batch_collate'))
    data_preprocessor = dict(type='KATBatchClsPreprocessor', num_classes=10, mean=[72.94], std=[90.02],
                             flip_prob=0.5, crop_padding=4)

A batch is ``dict(inputs=uint8 [B, C, H, W], labels=int64 [B], indices=int64 [B])`` on the dataset's device.
A dataset on the GPU needs ``num_workers=0`` (CUDA tensors cannot be shared with forked workers).
"""
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.registry import DATASETS, FUNCTIONS
from torch.utils.data import Dataset, get_worker_info

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Ankle boot')
# split -> (images, labels): the decompressed files that tools/data/fashion_mnist.py writes (mmpretrain's names)
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # unsigned-byte idx files of 3 (images) and 1 (labels) dimensions


def read_idx_ubyte(path: str, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file (the MNIST format) of ``ndim`` dimensions as a numpy array, validated."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} does not exist (expected an idx-ubyte file; for Fashion-MNIST run '
                                '`python tools/data/fashion_mnist.py`)')
    with open(path, 'rb') as f:
        raw = f.read()
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f'{path}: {len(raw)} bytes, too short for an idx header of {ndim} dimension(s)')
    magic = int.from_bytes(raw[:4], 'big')
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f'{path}: idx magic number {magic}, expected {_IDX_MAGIC[ndim]} (unsigned bytes, '
                         f'{ndim} dimension(s)); is it still gzip-compressed?')
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f'{path}: {len(raw)} bytes, expected {expected} for shape {shape}')
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device={str(device)!r}, but no GPU is visible; use device="auto" or "cpu"')
    return device


@DATASETS.register_module()
class KATTensorDataset(Dataset):
    """Images ``uint8 [N, C, H, W]`` (or ``[N, H, W]``) and labels ``[N]`` served a batch at a time.

    Args:
        images: the images, as a tensor or numpy array.
        labels: integer class labels in ``[0, len(classes))``.
        classes: class names (``metainfo['classes']``).
        device: where the tensors live: ``'auto'`` (the current GPU when one is visible, else the CPU),
            ``'cpu'``, ``'cuda'``. A GPU copy is made at the first fetch, on the device current then (the
            rank's own GPU under torch.distributed).
        indices: keep only these samples (an int for the first N, or a sequence), e.g. for quick runs.
        pipeline: not applied to the data here; kept for mmpretrain's ``ImageClassificationInferencer`` (and
            ``tools/infer.py``), which read ``test_dataloader.dataset.pipeline`` to load single image files.
    """

    def __init__(self, images, labels, classes: Sequence[str], device: str = 'auto',
                 indices: Optional[Union[int, Sequence[int]]] = None, pipeline: Optional[list] = None):
        images = torch.as_tensor(np.asarray(images))
        labels = torch.as_tensor(np.asarray(labels)).long()
        if images.dtype != torch.uint8:
            raise TypeError(f'KATTensorDataset: images must be uint8, got {images.dtype}')
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4:
            raise ValueError(f'KATTensorDataset: images must be [N, C, H, W] or [N, H, W], got {tuple(images.shape)}')
        if labels.shape != (images.shape[0], ):
            raise ValueError(f'KATTensorDataset: {images.shape[0]} images but labels of shape {tuple(labels.shape)}')
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(f'KATTensorDataset: labels span {int(labels.min())}..{int(labels.max())}, expected '
                             f'0..{len(classes) - 1} for {len(classes)} classes')
        if indices is not None:
            keep = torch.arange(min(indices, len(labels))) if isinstance(indices, int) else \
                torch.as_tensor(list(indices), dtype=torch.long)
            images, labels = images[keep], labels[keep]
        self.images = images.contiguous()
        self.labels = labels
        self.device = _resolve_device(device)
        self._metainfo = dict(classes=tuple(classes))
        self.pipeline = pipeline

    @property
    def metainfo(self) -> dict:
        return dict(self._metainfo)

    def full_init(self):
        """mmengine calls this after building a dataset; the data is already in memory."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _to_device(self):
        here = self.images.device
        if here.type == self.device.type and (self.device.index is None or here == self.device):
            return
        if self.device.type == 'cuda' and get_worker_info() is not None:
            raise RuntimeError('KATTensorDataset with device on the GPU runs in the main process only: set the '
                               "dataloader's num_workers=0 and persistent_workers=False (or device='cpu')")
        target = self.device
        if target.type == 'cuda' and target.index is None:
            target = torch.device('cuda', torch.cuda.current_device())
        self.images = self.images.to(target)
        self.labels = self.labels.to(target)

    def __getitems__(self, indices: List[int]) -> Dict[str, torch.Tensor]:
        """One batch: the DataLoader passes a sampler's batch of indices here (torch >= 2.0)."""
        self._to_device()
        index = torch.as_tensor(indices, dtype=torch.long).to(self.images.device, non_blocking=True)
        return dict(inputs=self.images.index_select(0, index), labels=self.labels.index_select(0, index),
                    indices=index)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        """One sample, as a batch of one (``kat_batch_collate`` joins such batches)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f'KATTensorDataset: index {index} out of range for {len(self)} samples')
        return self.__getitems__([index % len(self)])


@DATASETS.register_module()
class KATFashionMNIST(KATTensorDataset):
    """Fashion-MNIST from the decompressed idx files that ``tools/data/fashion_mnist.py`` writes.

    Args:
        data_root: the folder holding ``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``.
        split: ``'train'`` (60,000 images) or ``'test'`` (10,000).
        device, indices, pipeline: see :class:`KATTensorDataset`.
    """

    def __init__(self, data_root: str, split: str = 'train', device: str = 'auto',
                 indices: Optional[Union[int, Sequence[int]]] = None, pipeline: Optional[list] = None):
        if split not in FASHION_MNIST_FILES:
            raise ValueError(f'KATFashionMNIST: split={split!r}, expected one of {sorted(FASHION_MNIST_FILES)}')
        image_file, label_file = (os.path.join(data_root, name) for name in FASHION_MNIST_FILES[split])
        images = read_idx_ubyte(image_file, 3)
        labels = read_idx_ubyte(label_file, 1)
        if len(images) != len(labels):
            raise ValueError(f'{image_file} holds {len(images)} images but {label_file} {len(labels)} labels')
        super().__init__(images, labels, FASHION_MNIST_CLASSES, device=device, indices=indices, pipeline=pipeline)
        self.data_root, self.split = data_root, split


@FUNCTIONS.register_module()
def kat_batch_collate(batch):
    """Collate for :class:`KATTensorDataset`: a batch from ``__getitems__`` passes through unchanged; a list
    of single-sample batches (a DataLoader without ``__getitems__`` support) is concatenated."""
    if isinstance(batch, dict):
        return batch
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(b, dict) for b in batch):
        return {key: torch.cat([b[key] for b in batch]) for key in batch[0]}
    raise TypeError(f'kat_batch_collate expects the batches of a KATTensorDataset, got {type(batch).__name__}')
