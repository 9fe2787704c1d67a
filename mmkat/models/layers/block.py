"""The pre-norm transformer block of KAT (and of its same-size ViT baseline)."""
import functools
import logging
from typing import Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .attention import Attention
from .kan import KAN, Mlp, _hooked

_MATMULS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default})


def _keep_only_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective checkpointing policy: keep matmul outputs, recompute everything else in backward."""
    return CheckpointPolicy.MUST_SAVE if op in _MATMULS else CheckpointPolicy.PREFER_RECOMPUTE


_KEEP_ONLY_MATMULS = functools.partial(create_selective_checkpoint_contexts, _keep_only_matmuls)


class _DropCheckpointInPlaceWarning(logging.Filter):
    """torch.compile warns, once, that a region checkpointed with a ``context_fn`` must not hold in-place ops;
    the block's region (LayerNorm, rational, linear) holds none, and the warning would only puzzle a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'context_fn is passed to torch.utils.checkpoint under torch.compile' not in record.getMessage()


_FILTER = None


@torch.compiler.assume_constant_result
def _quiet_checkpoint_warning() -> bool:
    """Install the filter above on torch's logger (once, at trace time, not traced)."""
    global _FILTER
    if _FILTER is None:
        _FILTER = _DropCheckpointInPlaceWarning()
        logging.getLogger('torch._higher_order_ops.wrap').addFilter(_FILTER)
    return True


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
    Compiled for training with a KAN whose ``recompute`` holds, norm2 -> act1 -> fc1 runs under a selective
    activation checkpoint that keeps only matmul outputs: neither norm2's output nor act1's is kept for
    backward (both recomputed from x, bitwise the same), where inductor would otherwise keep both.
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

    def _recompute_kan_input(self) -> bool:
        """Under torch.compile in training, whether norm2 -> act1 -> fc1 is checkpointed (KAN's ``recompute``)."""
        if not torch.compiler.is_compiling():  # eager: decided before any submodule lookup (this runs every call)
            return False
        mlp = self.mlp
        return (self.training and torch.is_grad_enabled() and type(mlp) is KAN
                and type(self.norm2) is nn.LayerNorm and mlp.recomputes_act1()
                and not _hooked(self.norm2, mlp, mlp.act2, mlp.drop2, mlp.fc2))

    def _kan_hidden(self, x: torch.Tensor, fold: bool) -> torch.Tensor:
        mlp = self.mlp
        return mlp.fc1_without_bias(mlp.act1_for_fc1(self.norm2(x)), fold)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        if self._recompute_kan_input():
            # Inductor's partitioner would keep both act1's input (norm2's fp32 output) and its output for
            # backward; checkpointed with only the matmuls' outputs kept, both are recomputed from x (kept
            # anyway for norm2's backward): the same values, two activations less per block.
            _quiet_checkpoint_warning()
            mlp = self.mlp
            fold = mlp.folds_bias(x)
            h = checkpoint(self._kan_hidden, x, fold, use_reentrant=False, context_fn=_KEEP_ONLY_MATMULS)
            return x + self.drop_path(mlp.fc2(mlp.drop2(mlp.act2_with_bias(h, fold))))
        return x + self.drop_path(self.mlp(self.norm2(x)))
