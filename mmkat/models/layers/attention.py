"""Multi-head self-attention of a KAT block: global or windowed, optionally with decomposed relative
position terms (the ViTDet options for dense inputs).

Parameter names follow timm (``qkv``, ``proj``; q | k | v rows in ``qkv``) and ViTDet (``rel_pos_h``,
``rel_pos_w``), so released KAT checkpoints load as they are.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def resize_relative_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A relative-position table [L, head_dim] linearly interpolated to [length, head_dim]."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode='linear', align_corners=False)
    return resized.squeeze(0).t().to(table.dtype)


def relative_position_table(q_len: int, k_len: int, table: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` [2 * L - 1, head_dim] for every (query, key) pair along one axis: [q_len, k_len, head_dim].

    The table is resized (linear interpolation) when the axis lengths differ from the ones it was made
    for; query and key coordinates are scaled to the longer axis, as in MViTv2 / ViTDet.
    """
    table = resize_relative_table(table, 2 * max(q_len, k_len) - 1)
    q_scale, k_scale = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=table.device).unsqueeze(1) * q_scale
    k_pos = torch.arange(k_len, device=table.device).unsqueeze(0) * k_scale
    index = (q_pos - k_pos + (k_len - 1) * k_scale).long()
    return table[index]


def window_partition(x: torch.Tensor, window: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """[B, H, W, C] -> [B * windows, window, window, C], zero-padding H and W up to multiples of window."""
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % window, (-W) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C).transpose(2, 3)
    return x.reshape(-1, window, window, C), (Hp, Wp)


def window_merge(windows: torch.Tensor, window: int, padded: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * windows, window, window, C] -> [B, H, W, C]."""
    Hp, Wp = padded
    C = windows.shape[-1]
    B = windows.shape[0] // ((Hp // window) * (Wp // window))
    x = windows.view(B, Hp // window, Wp // window, window, window, C).transpose(2, 3)
    x = x.reshape(B, Hp, Wp, C)
    return x[:, :size[0], :size[1]].contiguous()


class Attention(nn.Module):
    """Pre-norm ViT attention (qkv with bias, scaled dot product, output projection).

    Args:
        dim: channels.
        num_heads: heads; dim must be divisible by it.
        qkv_bias: bias on the qkv projection (True in KAT).
        attn_drop / proj_drop: dropout on attention weights / after the projection.
        window_size: 0 for global attention; else attention within non-overlapping windows of this many
            tokens per side over the patch grid (ViTDet). Needs a token grid without a cls token.
        use_rel_pos: add decomposed relative position terms q . R_h[dh] + q . R_w[dw] to the logits.
        rel_pos_size: the grid side the relative tables are made for (window_size for windowed blocks,
            the patch grid for global blocks); other sizes are interpolated.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 window_size: int = 0,
                 use_rel_pos: bool = False,
                 rel_pos_size: Optional[int] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'Attention: dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.use_rel_pos = use_rel_pos
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_rel_pos:
            if not rel_pos_size:
                raise ValueError('Attention: use_rel_pos needs rel_pos_size (the grid side of the tables)')
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))

    def _attend(self, x: torch.Tensor, grid: Optional[Tuple[int, int]]) -> torch.Tensor:
        """x [B, N, C] -> [B, N, C]; grid (h, w) with h * w == N when relative positions are used."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            h, w = grid
            rel_h = relative_position_table(h, h, self.rel_pos_h).to(q.dtype)
            rel_w = relative_position_table(w, w, self.rel_pos_w).to(q.dtype)
            q_grid = q.reshape(B, self.num_heads, h, w, self.head_dim)
            term_h = torch.einsum('bnhwc,hkc->bnhwk', q_grid, rel_h)
            term_w = torch.einsum('bnhwc,wkc->bnhwk', q_grid, rel_w)
            bias = (term_h.unsqueeze(-1) + term_w.unsqueeze(-2)).reshape(B, self.num_heads, N, N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.)
        return out.transpose(1, 2).reshape(B, N, C)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """x [B, N, C]: N = h * w patch tokens (ViTDet-style) or 1 + h * w with a cls token first."""
        if self.window_size:
            B, N, C = x.shape
            h, w = grid
            windows, padded = window_partition(x.view(B, h, w, C), self.window_size)
            windows = self._attend(windows.flatten(1, 2), (self.window_size, self.window_size))
            windows = windows.view(-1, self.window_size, self.window_size, C)
            x = window_merge(windows, self.window_size, padded, grid).view(B, N, C)
        else:
            x = self._attend(x, grid)
        return self.proj_drop(self.proj(x))
