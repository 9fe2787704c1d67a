"""The pre-norm transformer block of KAT (and of its same-size ViT baseline)."""
from typing import Optional, Tuple

import torch
from torch import nn

from .attention import Attention
from .kan import KAN, Mlp


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.):
        super().__init__()
        if not 0. <= p < 1.:
            raise ValueError(f'DropPath: p must be in [0, 1), got {p}')
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.:
            return x
        keep = 1. - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'p={self.p}'


class KATBlock(nn.Module):
    """x = x + DropPath(Attn(LN1(x))); x = x + DropPath(MLP(LN2(x))), MLP being KAN (KAT) or GELU (ViT).

    Module names follow timm's ViT block (norm1, attn, norm2, mlp), as in the released checkpoints.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 mlp: str = 'kan',
                 rational: Optional[dict] = None,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 norm_eps: float = 1e-6,
                 window_size: int = 0,
                 use_rel_pos: bool = False,
                 rel_pos_size: Optional[int] = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop,
                              window_size=window_size, use_rel_pos=use_rel_pos, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if mlp == 'kan':
            self.mlp = KAN(dim, hidden, drop=drop, **(rational or {}))
        elif mlp == 'gelu':
            self.mlp = Mlp(dim, hidden, drop=drop)
        else:
            raise ValueError(f"KATBlock: mlp must be 'kan' or 'gelu', got {mlp!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))
