"""GroupRational: the learnable group-rational activation of KAT as an nn.Module."""
from typing import Optional, Union

import torch
from mmengine.registry import MODELS
from torch import nn

from mmkat.ops import IMPLEMENTATIONS, NUM_DENOMINATOR, NUM_NUMERATOR, get_preset, group_rational
from mmkat.ops import rational as _rational


def parameter_of(module: nn.Module, name: str) -> Optional[torch.Tensor]:
    """``getattr(module, name)`` for a parameter, read from ``module._parameters`` where it is registered there
    (``nn.Module.__getattr__`` costs about a microsecond a call); where a wrapper has put something else in its place
    (a parametrization's property, FSDP's unsharded views or torch.func's tensors as plain attributes), that."""
    tensor = module._parameters.get(name)
    return getattr(module, name) if tensor is None else tensor


@MODELS.register_module()
class GroupRational(nn.Module):
    """F(x) = P(x) / Q(x) over the last dimension, channels split into ``groups`` contiguous groups.

    Parameters keep the released KAT names and shapes, so released checkpoints load as they are:
    ``weight_numerator`` [1, 6] shared by all groups and ``weight_denominator`` [groups, 4].

    Args:
        groups: number of channel groups (8 in KAT); C must be divisible by it.
        init: a preset name ('identity', 'swish', 'gelu') or dict(numerator=[6], denominator=[4]); the
            denominator is repeated for every group.
        num_channels: if given, inputs must have exactly this many channels.
        impl: 'auto', 'reference' or 'compiled' (see :func:`mmkat.ops.group_rational`). The choice, and
            the ``MMKAT_GROUP_RATIONAL_IMPL`` override of 'auto', are resolved once, when the module is built.

    A call on a CPU or CUDA tensor with the compiled op available goes straight to ``torch.ops.mmkat``
    (whose C++ kernels check the input and hold the autograd formula): the host cost of a call is that of
    one native activation.
    """

    def __init__(self,
                 groups: int = 8,
                 init: Union[str, dict] = 'identity',
                 num_channels: Optional[int] = None,
                 impl: str = 'auto'):
        super().__init__()
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f'GroupRational: groups must be a positive int, got {groups!r}')
        if num_channels is not None and (not isinstance(num_channels, int) or num_channels % groups != 0):
            raise ValueError(f'GroupRational: num_channels ({num_channels!r}) must be an int divisible by '
                             f'groups = {groups}')
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f'GroupRational: impl must be one of {IMPLEMENTATIONS}, got {impl!r}')
        numerator, denominator = get_preset(init)  # validates init
        self.groups = groups
        self.init = init
        self.num_channels = num_channels
        self.impl = impl
        self._impl = _rational._resolve_impl(impl)
        # The devices whose tensors take the direct path (empty for 'reference' or without mmkat._C).
        self._op_devices = frozenset() if self._impl == 'reference' else _rational.compiled_devices()
        self.weight_numerator = nn.Parameter(torch.empty(1, NUM_NUMERATOR))
        self.weight_denominator = nn.Parameter(torch.empty(groups, NUM_DENOMINATOR))
        self._init_values = (numerator, denominator)
        self.reset_parameters()

    def use_impl(self, impl: str) -> 'GroupRational':
        """Switch the implementation (e.g. to 'reference' for ONNX export, whose graph has no mmkat op)."""
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f'GroupRational: impl must be one of {IMPLEMENTATIONS}, got {impl!r}')
        self.impl = impl
        self._impl = _rational._resolve_impl(impl)
        self._op_devices = frozenset() if self._impl == 'reference' else _rational.compiled_devices()
        return self

    def reset_parameters(self) -> None:
        numerator, denominator = self._init_values
        with torch.no_grad():
            self.weight_numerator.copy_(torch.tensor([numerator]))
            self.weight_denominator.copy_(torch.tensor([denominator]).expand(self.groups, -1))

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming the shape when ``x`` does not have this module's channels (a multiple of groups)."""
        shape = x.shape
        channels = shape[-1] if shape else None
        if channels is not None and channels % self.groups == 0 and self.num_channels in (None, channels):
            return  # the common case, in as few steps as possible: this runs on every call
        if self.num_channels is not None and channels != self.num_channels:
            raise ValueError(f'GroupRational: expected an input of shape (..., {self.num_channels}), got '
                             f'{tuple(shape)}')
        if channels is not None:
            raise ValueError(f'GroupRational: the last dimension of the input (C = {channels}, shape '
                             f'{tuple(shape)}) must be divisible by groups = {self.groups}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.device.type in self._op_devices:
            return _rational._compiled_call(x, parameter_of(self, 'weight_numerator'),
                                            parameter_of(self, 'weight_denominator'), self.groups)
        return group_rational(x, self.weight_numerator, self.weight_denominator, self.groups, self._impl)

    def extra_repr(self) -> str:
        init = self.init if isinstance(self.init, str) else 'custom'
        channels = '' if self.num_channels is None else f'num_channels={self.num_channels}, '
        return f'{channels}groups={self.groups}, init={init}, impl={self.impl}'
