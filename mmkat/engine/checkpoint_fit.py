"""Does a checkpoint fit a model? Checked before ``tools/test.py`` reports metrics for it.

mmengine loads a test checkpoint with ``strict=False`` and only logs the keys it could not place, so a file
that does not belong to the model (another architecture, a backbone-only state dict without the
``backbone.`` prefix, an empty dict) would be evaluated as an untrained model. :func:`checkpoint_fit`
reads the file as mmengine will (``state_dict`` entry or the whole dict, ``module.`` prefixes dropped) and
lists what the model would be left without.
"""
from typing import Dict, List, NamedTuple, Union

import torch

from mmkat.models.checkpoint import MMENGINE_WRAPPERS
from mmkat.models.checkpoint import read_state_dict as read_checkpoint


class CheckpointFit(NamedTuple):
    missing: List[str]      # model parameters the file does not hold
    mismatched: List[str]   # 'key: file [shape] vs model [shape]'
    non_finite: List[str]   # model tensors whose values in the file hold NaN or inf
    unexpected: List[str]   # keys of the file the model has no place for
    total: int              # tensors in the model's state dict

    def problems(self) -> List[str]:
        """The problems as sentences; empty when the checkpoint fills every model parameter."""
        out = []
        for what, keys in (('model parameters are not in it', self.missing),
                           ('tensors have other shapes', self.mismatched),
                           ('tensors hold NaN or inf', self.non_finite)):
            if keys:
                shown = ', '.join(keys[:5]) + (f', ... ({len(keys) - 5} more)' if len(keys) > 5 else '')
                out.append(f'{len(keys)} of {self.total} {what}: {shown}')
        if out and self.unexpected:
            out.append(f'the file holds {len(self.unexpected)} keys the model has no place for, e.g. '
                       f'{", ".join(self.unexpected[:3])}')
        return out


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file as mmengine's loader sees them (the ``state_dict`` entry or the whole
    dict, ``module.`` dropped); errors name the file."""
    try:
        state, _ = read_checkpoint(path, wrappers=MMENGINE_WRAPPERS, allow_empty=True)  # the fit lists what is missing
    except (OSError, RuntimeError) as e:  # truncated zip, unpickling refused, not a torch file
        cause = e.__cause__ or e
        raise ValueError(f'{path} could not be read as a checkpoint ({type(cause).__name__}: '
                         f'{str(cause).splitlines()[0] if str(cause) else ""})') from None
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def checkpoint_fit(model: torch.nn.Module, checkpoint: Union[str, Dict[str, torch.Tensor]]) -> CheckpointFit:
    """Compare the tensors of ``checkpoint`` (a file, or a state dict :func:`read_state_dict` returned) with
    ``model``'s state dict (a model wrapper is looked through)."""
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    state = read_state_dict(checkpoint) if isinstance(checkpoint, str) else checkpoint
    own = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    missing, mismatched, non_finite = [], [], []
    for key, tensor in own.items():
        if key not in state:
            if key in params:
                missing.append(key)
            continue
        value = state[key]
        if tuple(value.shape) != tuple(tensor.shape):
            mismatched.append(f'{key}: file {list(value.shape)} vs model {list(tensor.shape)}')
            continue
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            non_finite.append(key)
    return CheckpointFit(missing, mismatched, non_finite, sorted(set(state) - set(own)), len(own))


__all__ = ['CheckpointFit', 'checkpoint_fit', 'read_state_dict']
