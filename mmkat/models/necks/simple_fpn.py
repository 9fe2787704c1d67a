"""KATSimpleFPN: ViTDet's simple feature pyramid on the single stride-16 map of a plain KAT/ViT backbone.

Plain torch (no mmdet/mmcv import), registered on mmengine's root ``MODELS`` registry so that
``type='KATSimpleFPN'`` resolves in the mmdet (and mmseg) scopes after ``import mmkat``.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

NORMS = ('LN', None)


@MODELS.register_module('KATLayerNorm2d')
class LayerNorm2d(nn.Module):
    """LayerNorm of a channels-first map [B, C, H, W]: every pixel is normalised over its C channels,
    then scaled and shifted by a learnable per-channel weight and bias.

    Registered as ``KATLayerNorm2d`` so detection/segmentation heads can use it through
    ``norm_cfg=dict(type='KATLayerNorm2d')`` (ViTDet's 'LN2d' lives in mmdet's projects, not in its wheel).
    """

    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels last, layer_norm over the last dim, back to channels first
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f'{self.num_channels}, eps={self.eps}'


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm: Optional[str]) -> nn.Module:
    """Conv (bias only when not normalised) followed by LayerNorm2d when ``norm='LN'``; no activation."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
    if norm is None:
        return nn.Sequential(conv)
    return nn.Sequential(conv, LayerNorm2d(out_channels))


@MODELS.register_module()
class KATSimpleFPN(BaseModule):
    """ViTDet's simple feature pyramid (Li et al., 2022) for a plain backbone with one stride-16 output.

    From the stride-16 map [B, C, H, W] (the last element of the backbone's output tuple, e.g. KAT with
    ``out_type='featmap'``) it builds four maps:

    - stride 4: ConvTranspose2d(C, C/2, 2, 2) -> LayerNorm2d -> GELU -> ConvTranspose2d(C/2, C/4, 2, 2),
      [B, C/4, 4H, 4W];
    - stride 8: ConvTranspose2d(C, C/2, 2, 2), [B, C/2, 2H, 2W];
    - stride 16: the input itself, [B, C, H, W];
    - stride 32: MaxPool2d(2) (floor, as ViTDet), [B, C, floor(H/2), floor(W/2)];

    then, per level, a 1x1 lateral conv to ``out_channels`` and a 3x3 output conv (padding 1), each followed
    by a LayerNorm2d when ``norm='LN'`` (convs without bias then, with bias when ``norm=None``), no
    activation. ``num_outs - 4`` extra levels follow, each a max-pool (kernel 1, stride 2) of the previous
    last output: size ceil(n/2) of a side n, as mmdet's FPN and ViTDet's extra P6 level.

    Args:
        backbone_channel: C, channels of the backbone's stride-16 map; must be divisible by 4.
        in_channels: channels of the four pyramid inputs (before the lateral convs). Fixed by the branches:
            None derives [C/4, C/2, C, C]; a given list must equal it (kept for mmdet-style configs).
        out_channels: channels of every output (256).
        num_outs: number of outputs, >= 4 (5 for Mask R-CNN's RPN: strides 4, 8, 16, 32, 64).
        norm: 'LN' (LayerNorm2d after every conv and inside the stride-4 branch, as ViTDet) or None (no
            normalisation anywhere in the neck, the stride-4 branch is then ConvT -> GELU -> ConvT).
        init_cfg: mmengine init config (None: PyTorch's default init of the convs, LayerNorms at 1/0).

    Returns (forward): a tuple of ``num_outs`` tensors [B, out_channels, h_i, w_i], finest first.
    """

    def __init__(self,
                 backbone_channel: int,
                 in_channels: Optional[Sequence[int]] = None,
                 out_channels: int = 256,
                 num_outs: int = 5,
                 norm: Optional[str] = 'LN',
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(backbone_channel, bool) or not isinstance(backbone_channel, int) or backbone_channel <= 0 \
                or backbone_channel % 4:
            raise ValueError(f'KATSimpleFPN: backbone_channel must be a positive int divisible by 4 (the stride-4 '
                             f'level has backbone_channel / 4 channels), got {backbone_channel!r}')
        C = backbone_channel
        expected = [C // 4, C // 2, C, C]
        if in_channels is None:
            in_channels = expected
        elif isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence) \
                or list(in_channels) != expected:
            raise ValueError(f'KATSimpleFPN: in_channels must be {expected} for backbone_channel={C} (the channels '
                             f'of the stride 4/8/16/32 inputs; leave it None to derive it), got {in_channels!r}')
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(f'KATSimpleFPN: out_channels must be a positive int, got {out_channels!r}')
        if isinstance(num_outs, bool) or not isinstance(num_outs, int) or num_outs < 4:
            raise ValueError(f'KATSimpleFPN: num_outs must be an int >= 4 (4 pyramid levels + extra max-pooled '
                             f'levels), got {num_outs!r}')
        if norm not in NORMS:
            raise ValueError(f"KATSimpleFPN: norm must be 'LN' or None, got {norm!r}")
        self.backbone_channel = C
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.norm = norm

        up4 = [nn.ConvTranspose2d(C, C // 2, 2, stride=2)]
        if norm == 'LN':
            up4.append(LayerNorm2d(C // 2))
        up4 += [nn.GELU(), nn.ConvTranspose2d(C // 2, C // 4, 2, stride=2)]
        self.fpn1 = nn.Sequential(*up4)                                   # stride 4
        self.fpn2 = nn.ConvTranspose2d(C, C // 2, 2, stride=2)             # stride 8
        self.fpn3 = nn.Identity()                                          # stride 16
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)                  # stride 32 (floor)

        self.lateral_convs = nn.ModuleList(_conv_norm(c, out_channels, 1, norm) for c in self.in_channels)
        self.fpn_convs = nn.ModuleList(_conv_norm(out_channels, out_channels, 3, norm) for _ in self.in_channels)

    def forward(self, inputs: Union[Sequence[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if isinstance(inputs, torch.Tensor):
            x = inputs
        elif isinstance(inputs, (tuple, list)) and len(inputs) > 0 and isinstance(inputs[-1], torch.Tensor):
            x = inputs[-1]
        else:
            raise ValueError('KATSimpleFPN: expected a non-empty tuple of backbone outputs whose last element is the '
                             f'stride-16 map [B, {self.backbone_channel}, H, W], got {type(inputs).__name__}')
        if x.dim() != 4 or x.shape[1] != self.backbone_channel:
            raise ValueError(f'KATSimpleFPN: expected the stride-16 map of shape [B, {self.backbone_channel}, H, W] '
                             f"(the backbone's out_type='featmap'), got {tuple(x.shape)}")
        if x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(f'KATSimpleFPN: the stride-16 map must be at least 2x2 (the stride-32 level halves it), '
                             f'got {tuple(x.shape)}')

        feats = [self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x)]
        outs = [fpn_conv(lateral(f)) for f, lateral, fpn_conv in zip(feats, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)

    def extra_repr(self) -> str:
        return (f'backbone_channel={self.backbone_channel}, in_channels={self.in_channels}, '
                f'out_channels={self.out_channels}, num_outs={self.num_outs}, norm={self.norm!r}')
