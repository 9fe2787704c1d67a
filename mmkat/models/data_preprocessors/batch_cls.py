"""A classification data preprocessor that augments whole batches on the model's device.

``KATBatchClsPreprocessor`` takes the batches of :class:`mmkat.datasets.KATTensorDataset` (``inputs`` uint8
``[B, C, H, W]`` and ``labels`` ``[B]``) or those of any mmpretrain dataset packed by ``PackInputs``
(``inputs`` a list of tensors, ``data_samples`` with ``gt_label``), moves them to the model's device, and
there applies, in this order:

1. a horizontal flip of each image with probability ``flip_prob``;
2. a random crop of the image's own size from the image padded by ``crop_padding`` pixels of
   ``pad_value`` on every side (torchvision's ``RandomCrop(size, padding)``), per image;
3. normalisation ``(x - mean) / std``;
4. in training, mixup (``mixup_alpha``) and/or cutmix (``cutmix_alpha``) of the batch with its own
   permutation: one mixing weight per batch drawn from Beta(alpha, alpha), cutmix's box sized by it and
   the weight then set to the box's true area; with both, cutmix is picked with probability
   ``cutmix_prob``. Targets become ``gt_score`` = lam * one_hot(y) + (1 - lam) * one_hot(y[perm]).

Colour images given to a grey model (``mean`` of one channel) are turned into their BT.601 luma first, as
the images that mmpretrain's inferencers read are always in colour (BGR). Steps 1, 2 and 4 run only in
training. All random draws come from torch's default generators (seeded by
mmengine's ``randomness.seed``), on the device for 1 and 2, on the CPU for 4. It returns what mmpretrain's
``ImageClassifier`` expects: ``dict(inputs=float [B, C, H, W], data_samples=[DataSample, ...])``.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor
from mmengine.registry import MODELS


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Images ``x`` [B, C, H, W] with those where ``flip`` [B] (bool) is true mirrored left-right."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def pad_crop(x: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor,
             pad_value: float = 0.) -> torch.Tensor:
    """Per image b, the [H, W] window at (top[b], left[b]) of ``x`` padded by ``padding`` on every side.
    Offsets lie in [0, 2 * padding]; offset ``padding`` returns the image unchanged."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), value=pad_value)
    rows = (top.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (left.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def cutmix_box(h: int, w: int, lam: float, centre: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the cutmix box covering about 1 - lam of an h x w image, centred at ``centre``
    and clipped to the image (the box of Yun et al. 2019, as timm and mmpretrain draw it)."""
    ratio = math.sqrt(1. - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = centre
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    return y0, y1, x0, x1


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * one_hot(labels) + (1 - lam) * one_hot(labels[perm]), float [B, num_classes]."""
    one_hot = F.one_hot(labels, num_classes).float()
    return lam * one_hot + (1. - lam) * one_hot[perm]


@MODELS.register_module()
class KATBatchClsPreprocessor(BaseDataPreprocessor):
    """Batched flip, padded random crop, normalisation and mixup / cutmix on the model's device.

    Args:
        num_classes: classes of the head (needed for the mixed targets).
        mean, std: per-channel normalisation, in the images' pixel scale (e.g. 0-255).
        flip_prob: probability of a horizontal flip per image (training only).
        crop_padding: pixels of padding for the random crop (0: no crop).
        pad_value: pixel value of the padding, before normalisation.
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) of the mixing weight; 0 turns each off.
        cutmix_prob: with both on, the probability that a batch uses cutmix rather than mixup.
        mix_prob: the probability that a training batch is mixed at all.
        batch_augments: what mmpretrain's ``ImageClassifier`` passes from its ``train_cfg`` (``augments``);
            only None is accepted here: mixup and cutmix are this preprocessor's own arguments.
    """

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float], flip_prob: float = 0.5,
                 crop_padding: int = 0, pad_value: float = 0., mixup_alpha: float = 0., cutmix_alpha: float = 0.,
                 cutmix_prob: float = 0.5, mix_prob: float = 1.0, non_blocking: bool = True,
                 batch_augments: Optional[dict] = None):
        super().__init__(non_blocking=non_blocking)
        if batch_augments is not None:
            raise ValueError(f'KATBatchClsPreprocessor does not take batch_augments ({batch_augments!r}, from the '
                             "model's train_cfg): use its mixup_alpha / cutmix_alpha / cutmix_prob arguments")
        if len(mean) != len(std):
            raise ValueError(f'KATBatchClsPreprocessor: mean has {len(mean)} channels but std {len(std)}')
        if any(s <= 0 for s in std):
            raise ValueError(f'KATBatchClsPreprocessor: std must be positive, got {list(std)}')
        for name, value in (('flip_prob', flip_prob), ('cutmix_prob', cutmix_prob), ('mix_prob', mix_prob)):
            if not 0. <= value <= 1.:
                raise ValueError(f'KATBatchClsPreprocessor: {name}={value}, expected a probability in [0, 1]')
        if crop_padding < 0 or mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError('KATBatchClsPreprocessor: crop_padding, mixup_alpha and cutmix_alpha must be >= 0, got '
                             f'{crop_padding}, {mixup_alpha}, {cutmix_alpha}')
        self.num_classes = int(num_classes)
        self.flip_prob, self.crop_padding, self.pad_value = float(flip_prob), int(crop_padding), float(pad_value)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.cutmix_prob, self.mix_prob = float(cutmix_prob), float(mix_prob)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)

    # ------------------------------------------------------------------------------------------ input
    def _unpack(self, data: dict) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[List]]:
        """(images [B, C, H, W] on the model's device, labels [B] or None where the batch holds them, the
        incoming data samples or None)."""
        if 'labels' in data:
            inputs, labels, samples = data['inputs'], data['labels'], None
        elif 'data_samples' in data:
            inputs, samples = data['inputs'], list(data['data_samples'])
            if isinstance(inputs, (list, tuple)):
                shapes = {tuple(t.shape) for t in inputs}
                if len(shapes) != 1:
                    raise ValueError(f'KATBatchClsPreprocessor needs images of one size, got {sorted(shapes)}')
                inputs = torch.stack(list(inputs))
            # an inferencer's samples carry no label
            labels = torch.cat([s.gt_label.view(-1)[:1] for s in samples]) if all(
                'gt_label' in s for s in samples) else None
        else:
            raise KeyError(f"KATBatchClsPreprocessor expects a batch with 'inputs' and 'labels' (KATTensorDataset) "
                           f"or 'inputs' and 'data_samples' (PackInputs), got keys {sorted(data)}")
        inputs = inputs.to(self.mean.device, non_blocking=self._non_blocking)
        if inputs.ndim == 4 and inputs.shape[1] == 3 and self.mean.shape[1] == 1:
            # a colour image for a grey model (mmpretrain's inferencers read every file in colour, BGR as
            # mmcv reads it): its luma, ITU-R BT.601; a grey file read in colour comes back unchanged
            weights = torch.tensor([0.114, 0.587, 0.299], dtype=torch.float32, device=inputs.device)
            inputs = (inputs.float() * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
        if inputs.ndim != 4 or inputs.shape[1] != self.mean.shape[1]:
            raise ValueError(f'KATBatchClsPreprocessor: images of shape {tuple(inputs.shape)}, expected '
                             f'[B, {self.mean.shape[1]}, H, W] (mean/std give {self.mean.shape[1]} channel(s))')
        return inputs, labels, samples

    # ------------------------------------------------------------------------------------------ augment
    def _mix(self, x: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or float(torch.rand(())) >= self.mix_prob:
            return x, None
        cutmix = use_cutmix and (not use_mixup or float(torch.rand(())) < self.cutmix_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(x.shape[0]).to(x.device)
        if cutmix:
            h, w = x.shape[-2:]
            centre = (int(torch.randint(h, ())), int(torch.randint(w, ())))
            y0, y1, x0, x1 = cutmix_box(h, w, lam, centre)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            lam = 1. - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            x = lam * x + (1. - lam) * x[perm]
        return x, mix_targets(labels, self.num_classes, lam, perm)

    def forward(self, data: dict, training: bool = False) -> dict:
        from mmpretrain.structures import DataSample  # mmkat never imports mmpretrain at import time

        inputs, labels, samples = self._unpack(data)
        x = inputs.float()
        b = x.shape[0]
        if training and self.flip_prob > 0:
            x = random_flip(x, torch.rand(b, device=x.device) < self.flip_prob)
        if training and self.crop_padding > 0:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, b), device=x.device)
            x = pad_crop(x, self.crop_padding, offsets[0], offsets[1], self.pad_value)
        x = (x - self.mean) / self.std
        scores = None
        if training:
            if labels is None:
                raise ValueError('KATBatchClsPreprocessor: a training batch needs labels (gt_label)')
            labels = labels.to(x.device, non_blocking=self._non_blocking).long()
            x, scores = self._mix(x, labels)

        if samples is None:
            samples = [DataSample() for _ in range(b)]
        # the head's loss concatenates gt_label (on the device); the evaluator moves each one to the CPU,
        # so outside training they are given as CPU tensors from one copy
        if labels is not None:
            label_views = (labels if training else labels.cpu().long()).view(b, 1).unbind(0)
            for i, sample in enumerate(samples):
                sample.set_field(label_views[i], 'gt_label', dtype=torch.Tensor)
                if scores is not None:
                    sample.set_gt_score(scores[i])
        return dict(inputs=x, data_samples=samples)
