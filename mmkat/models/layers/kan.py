"""The channel mixers of a KAT block: the group-rational KAN block, and the GELU MLP of the ViT baseline.

Both keep timm's module names (``fc1``/``fc2``, ``act1``/``act2`` for KAN, ``act`` for the MLP), so the
released KAT checkpoints and plain timm ViT checkpoints load without renaming.
"""
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from mmkat.ops import rational as _rational
from .group_rational import GroupRational, parameter_of


def _hooked(*modules: nn.Module) -> bool:
    """Whether a forward or backward hook (global, or on one of ``modules``) expects these modules' calls."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
            or _module._global_backward_pre_hooks):
        return True
    for m in modules:  # a loop, not any(<generator>): this runs on every eager call
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
    return False


def _coefficients(act: GroupRational) -> Tuple[torch.Tensor, torch.Tensor]:
    return parameter_of(act, 'weight_numerator'), parameter_of(act, 'weight_denominator')


def _passes_through(drop: nn.Module) -> bool:
    """Whether ``drop`` is an nn.Dropout that returns its input tensor itself (p = 0 or eval mode; no autograd node)."""
    return type(drop) is nn.Dropout and (drop.p == 0. or not drop.training)


class KAN(nn.Module):
    """Two group-rational KAN layers: act1 -> drop1 -> fc1 -> act2 -> drop2 -> fc2.

    ``act1`` (on ``in_features`` channels) starts as the identity, so the ViT MLP weights can be copied
    into fc1/fc2; ``act2`` (on ``hidden_features`` channels) starts as a rational fit of swish, as
    released.

    Args:
        in_features: channels in and out.
        hidden_features: channels after fc1 (4x in KAT).
        groups: channel groups of each rational (8 in KAT).
        act1_init / act2_init: rational presets ('identity', 'swish', 'gelu') or coefficient dicts.
        impl: group-rational implementation, see :func:`mmkat.ops.group_rational`.
        drop: dropout after each activation.
        recompute: run act1 -> fc1 as one :func:`mmkat.ops.group_rational_linear` call, whose backward
            recomputes act1's output instead of keeping it: one activation of ``in_features`` channels less
            per block held for backward, for one more act1 forward in backward. Taken where it computes the
            same as the separate calls: the compiled op on the input's device, no dropout between act1 and
            fc1 in training, act1 a GroupRational and fc1 an nn.Linear (not a replacement such as a LoRA
            wrapper), no hooks on act1, drop1 or fc1 (nor global module hooks), and not under TorchScript
            tracing or torch.compile. Where in addition act2 -> drop2 -> fc2 cannot be told from plain calls (act2
            a GroupRational on the compiled op, fc2 an nn.Linear, drop2 returning its input, no hooks on them, fc1's
            bias not folded), the whole block is one ``mmkat::group_rational_kan`` call: the same kernels and kept
            tensors, two autograd nodes instead of six, bitwise the same results. Under torch.compile (training) a
            :class:`KATBlock` instead gives inductor the separate calls with norm2 -> act1 -> fc1 selectively
            checkpointed, only fc1's matmul output kept, so that neither norm2's output nor act1's is held for
            backward (the fused op as one graph node did not lower compiled peak memory).
        fold_bias: add fc1's bias inside act2 (:func:`mmkat.ops.group_rational_bias`, act2(h @ W.T + b) as one
            op) so that act2's backward also returns the bias gradient, instead of a separate reduction over its
            output gradient. Taken where the compiled op runs on the input's device, act2 is a GroupRational,
            fc1 an nn.Linear with a bias, no hooks on fc1 or act2 (nor global module hooks), and not under
            TorchScript tracing; torch.compile included. The sum h + b is formed in fp32 (not rounded to the
            autocast dtype first), so outputs differ from the separate calls by that rounding.
    """

    def __init__(self,
                 in_features: int,
                 hidden_features: int,
                 groups: int = 8,
                 act1_init: Union[str, dict] = 'identity',
                 act2_init: Union[str, dict] = 'swish',
                 impl: str = 'auto',
                 drop: float = 0.,
                 recompute: bool = True,
                 fold_bias: bool = False):
        super().__init__()
        for name, channels in (('in_features', in_features), ('hidden_features', hidden_features)):
            if channels % groups:
                raise ValueError(f'KAN: {name} ({channels}) must be divisible by the rational groups ({groups})')
        self.act1 = GroupRational(groups, act1_init, num_channels=in_features, impl=impl)
        self.drop1 = nn.Dropout(drop)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act2 = GroupRational(groups, act2_init, num_channels=hidden_features, impl=impl)
        self.drop2 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.recompute = recompute
        self.fold_bias = fold_bias

    def _act1_fc1_unobserved(self) -> bool:
        """Whether nothing can see act1's output on its way to fc1: act1 is a GroupRational and fc1 an nn.Linear
        (not replacements), no dropout acts between them, and no hook expects their calls."""
        # Submodules read from _modules (nn.Module.__getattr__ costs about a microsecond a lookup, and this runs
        # on every eager call).
        modules = self._modules
        act1, drop1, fc1 = modules['act1'], modules['drop1'], modules['fc1']
        return (type(act1) is GroupRational and type(fc1) is nn.Linear and (drop1.p == 0. or not self.training)
                and not _hooked(act1, drop1, fc1))

    def recomputes_act1(self) -> bool:
        """Whether act1's output may be recomputed in backward instead of kept: ``recompute`` is on and nothing
        can see act1's output on its way to fc1 (:meth:`_act1_fc1_unobserved`)."""
        return self.recompute and self._act1_fc1_unobserved()

    def _fused(self, x: torch.Tensor) -> bool:
        modules = self._modules
        return (self.recompute and x.device.type in getattr(modules['act1'], '_op_devices', ())
                and x.dim() >= 1 and x.shape[-1] == modules['fc1'].in_features and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and self._act1_fc1_unobserved())

    def folds_bias(self, x: torch.Tensor) -> bool:
        """Whether fc1's bias is added inside act2 for the input ``x`` (``fold_bias`` and its conditions)."""
        if not self.fold_bias:
            return False
        modules = self._modules
        act2, fc1 = modules['act2'], modules['fc1']
        return (type(act2) is GroupRational and type(fc1) is nn.Linear and fc1.bias is not None
                and x.device.type in act2._op_devices and not torch.jit.is_tracing() and not _hooked(fc1, act2))

    def act1_for_fc1(self, x: torch.Tensor) -> torch.Tensor:
        """act1 -> drop1, for fc1. Where fc1 casts a float32 input to the autocast dtype (bfloat16 / float16) and
        nothing can tell (act1 a GroupRational and fc1 an nn.Linear, drop1 inactive, no hooks on them nor global
        module hooks, the compiled op on x's device, not TorchScript tracing), act1 writes its output in that dtype
        itself (``mmkat::group_rational_forward_to``): the same values as the cast, and the gradient reaches
        act1's backward in that dtype without a converted float32 copy (under torch.compile, one pass fewer)."""
        act1 = self.act1
        if (x.dtype == torch.float32 and self._act1_fc1_unobserved() and x.device.type in act1._op_devices
                and not torch.jit.is_tracing()):
            dtype = _rational.linear_dtype(x)
            if dtype in (torch.bfloat16, torch.float16):
                act1.check_input(x)
                return _rational._compiled_call_to(x, *_coefficients(act1), act1.groups, dtype)
        return self.drop1(act1(x))

    def fc1_without_bias(self, x: torch.Tensor, fold: bool) -> torch.Tensor:
        """fc1, without its bias where ``fold`` (act2 adds it)."""
        return F.linear(x, self.fc1.weight) if fold else self.fc1(x)

    def act2_with_bias(self, h: torch.Tensor, fold: bool) -> torch.Tensor:
        """act2, adding fc1's bias first where ``fold``."""
        if not fold:
            return self.act2(h)
        act2 = self.act2
        return _rational._bias_compiled_call(h, self.fc1.bias, *_coefficients(act2), act2.groups)

    def _whole(self, x: torch.Tensor) -> bool:
        """Whether, where act1 -> fc1 is one op (:meth:`_fused`), the rest of the block joins it: act2 a GroupRational
        with the compiled op on x's device and fc1's channels, fc2 an nn.Linear, drop2 a dropout that returns its
        input (p = 0 or eval), and no hook on act2, drop2 or fc2."""
        modules = self._modules
        act2, drop2, fc2 = modules['act2'], modules['drop2'], modules['fc2']
        return (type(act2) is GroupRational and type(fc2) is nn.Linear and _passes_through(drop2)
                and x.device.type in act2._op_devices
                and act2.num_channels in (None, modules['fc1'].out_features) and not _hooked(act2, drop2, fc2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = self.folds_bias(x)
        if self._fused(x):
            modules = self._modules
            act1, fc1 = modules['act1'], modules['fc1']
            numerator1, denominator1 = _coefficients(act1)
            weight1, bias1 = parameter_of(fc1, 'weight'), parameter_of(fc1, 'bias')
            dtype = _rational.linear_dtype(x)
            if not fold and self._whole(x):
                # the whole block as one op: the same kernels, two autograd nodes instead of six or eight (eager
                # calls on small tensors are bound by their host cost)
                act2, fc2 = modules['act2'], modules['fc2']
                return _rational._KAN_OP(x, numerator1, denominator1, act1.groups, weight1, bias1,
                                         *_coefficients(act2), act2.groups, parameter_of(fc2, 'weight'),
                                         parameter_of(fc2, 'bias'), dtype)
            x = _rational._LINEAR_OP(x, numerator1, denominator1, act1.groups, weight1, None if fold else bias1, dtype)
        else:
            x = self.fc1_without_bias(self.act1_for_fc1(x), fold)
        return self.fc2(self._drop2(self.act2_with_bias(x, fold)))

    def _drop2(self, x: torch.Tensor) -> torch.Tensor:
        """drop2, not called where it would return ``x`` itself unseen: a module call less per block."""
        drop2 = self._modules['drop2']
        if _passes_through(drop2) and not _hooked(drop2):
            return x
        return drop2(x)

    def extra_repr(self) -> str:
        return f'recompute={self.recompute}, fold_bias={self.fold_bias}'


class Mlp(nn.Module):
    """The ViT MLP, fc1 -> GELU -> drop1 -> fc2 -> drop2, the baseline KAT is compared with."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
