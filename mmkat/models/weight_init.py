"""Weight initialisations of KAT: the released one (timm's ViT init + the mimetic attention init) and the
paper's variance-preserving one."""
import math
from functools import lru_cache
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from mmkat.ops import get_preset, group_rational_reference

# Mimetic attention init as released: W_q W_k^T ~ a1 Z + b1 I per head, W_v^T W_proj^T from a1 = b1 = 0.4
# with a negative identity (Trockman & Kolter, 2023, "Mimetic initialization of self-attention layers").
MIMETIC_QK = (0.7, 0.7)
MIMETIC_VO = (0.4, 0.4)


def _ortho_like(dim: int, alpha: float, beta: float, sign: float,
                generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Factors L, R (both [dim, dim]) with L @ R = alpha * U + sign * beta * I, U uniform with unit variance
    per output (entries in +-sqrt(3 / dim)); split through the SVD so each factor takes sqrt(S)."""
    bound = math.sqrt(3.0 / dim)
    noise = torch.rand(dim, dim, generator=generator) * (2 * bound) - bound
    target = alpha * noise + sign * beta * torch.eye(dim)
    u, s, vh = torch.linalg.svd(target)  # fp32: the init is random anyway, and 2x faster than fp64
    root = s.sqrt()
    return u * root, root.unsqueeze(1) * vh


@torch.no_grad()
def mimetic_attention_init_(qkv: nn.Linear, proj: nn.Linear, num_heads: int,
                            generator: Optional[torch.Generator] = None) -> None:
    """Overwrite qkv's and proj's weights with the released mimetic init (biases are left alone).

    For each head h, the q and k rows are the first head_dim columns of the two factors of
    0.7 U + 0.7 I, so q_h . k_h starts close to a (scaled) identity: tokens attend to similar tokens.
    The v rows and the output projection are the two factors of 0.4 U - 0.4 I.
    """
    dim = qkv.in_features
    head_dim = dim // num_heads
    if qkv.out_features != 3 * dim or proj.in_features != dim or proj.out_features != dim:
        raise ValueError(f'mimetic init expects qkv [{3 * dim}, {dim}] and proj [{dim}, {dim}], got '
                         f'{tuple(qkv.weight.shape)} and {tuple(proj.weight.shape)}')
    weight = torch.empty(3 * dim, dim)
    for h in range(num_heads):
        left, right = _ortho_like(dim, *MIMETIC_QK, 1.0, generator)
        rows = slice(h * head_dim, (h + 1) * head_dim)
        weight[rows] = left[:, :head_dim].t()
        weight[dim:][rows] = right[:head_dim, :]
    left, right = _ortho_like(dim, *MIMETIC_VO, -1.0, generator)
    weight[2 * dim:] = left
    qkv.weight.copy_(weight)
    proj.weight.copy_(right)


@lru_cache(maxsize=None)
def _gauss_hermite(points: int = 160) -> Tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(points)
    return x, w / math.sqrt(2 * math.pi)


def rational_second_moment(init: Union[str, dict]) -> float:
    """E[F(x)^2] for x ~ N(0, 1), F the rational of a preset (same for every group), by Gauss-Hermite
    quadrature; for the identity it is exactly 1."""
    num, den = get_preset(init)
    x, w = _gauss_hermite()
    f = group_rational_reference(torch.from_numpy(x).unsqueeze(1), torch.tensor([num], dtype=torch.float64),
                                 torch.tensor([den], dtype=torch.float64), 1)
    return float(np.sum(w * f.squeeze(1).numpy() ** 2))


@torch.no_grad()
def variance_preserving_init_(linear: nn.Linear, previous_activation: Union[str, dict]) -> None:
    """The paper's init of a KAN linear: W ~ N(0, alpha / fan_in) with alpha = Var[x] / E[F(x)^2],
    x ~ N(0, 1) and F the rational that feeds this layer at its init; bias zero."""
    alpha = 1.0 / rational_second_moment(previous_activation)
    nn.init.normal_(linear.weight, 0.0, math.sqrt(alpha / linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def vit_linear_init_(linear: nn.Linear) -> None:
    """timm's ViT init of a Linear: truncated normal (std 0.02, cut at +-2), bias zero."""
    nn.init.trunc_normal_(linear.weight, std=0.02)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
