"""Does a checkpoint fit a model? Checked before ``tools/test.py`` reports metrics for it.

mmengine loads a test checkpoint with ``strict=False`` and only logs the keys it could not place, so a file
that does not belong to the model (another architecture, a backbone-only state dict without the
``backbone.`` prefix, an empty dict) would be evaluated as an untrained model. :func:`checkpoint_fit`
reads the file as mmengine will (``state_dict`` entry or the whole dict, ``module.`` prefixes dropped) and
lists what the model would be left without.
"""
from typing import Dict, List, NamedTuple

import torch


class CheckpointFit(NamedTuple):
    missing: List[str]      # model parameters the file does not hold
    mismatched: List[str]   # 'key: file [shape] vs model [shape]'
    non_finite: List[str]   # model tensors whose values in the file hold NaN or inf
    unexpected: List[str]   # keys of the file the model has no place for
    loaded: int             # model tensors the file fills

    def problems(self, total: int) -> List[str]:
        out = []
        for what, keys in (('model parameters are not in it', self.missing),
                           ('tensors have other shapes', self.mismatched),
                           ('tensors hold NaN or inf', self.non_finite)):
            if keys:
                shown = ', '.join(keys[:5]) + (f', ... ({len(keys) - 5} more)' if len(keys) > 5 else '')
                out.append(f'{len(keys)} of {total} {what}: {shown}')
        return out


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file as mmengine's loader sees them; errors name the file."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated zip, unpickling refused, not a torch file
        raise ValueError(f'{path} could not be read as a checkpoint ({type(e).__name__}: '
                         f'{str(e).splitlines()[0] if str(e) else ""})') from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path} holds a {type(checkpoint).__name__}, not a dict of tensors')
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: its 'state_dict' entry is a {type(state).__name__}, not a dict of tensors")
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def checkpoint_fit(model: torch.nn.Module, path: str) -> CheckpointFit:
    """Compare the tensors of ``path`` with ``model``'s state dict (a model wrapper is looked through)."""
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    state = read_state_dict(path)
    params = {name for name, _ in model.named_parameters()}
    missing, mismatched, non_finite, loaded = [], [], [], 0
    for key, tensor in model.state_dict().items():
        if key not in state:
            if key in params:
                missing.append(key)
            continue
        value = state[key]
        if tuple(value.shape) != tuple(tensor.shape):
            mismatched.append(f'{key}: file {list(value.shape)} vs model {list(tensor.shape)}')
            continue
        loaded += 1
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            non_finite.append(key)
    unexpected = sorted(set(state) - set(model.state_dict()))
    return CheckpointFit(missing, mismatched, non_finite, unexpected, loaded)


def describe_fit(fit: CheckpointFit, model: torch.nn.Module) -> List[str]:
    """The problems of ``fit`` as sentences; empty when the checkpoint fills every model parameter."""
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    total = len(model.state_dict())
    out = fit.problems(total)
    if out and fit.unexpected:
        out.append(f'the file holds {len(fit.unexpected)} keys the model has no place for, e.g. '
                   f'{", ".join(fit.unexpected[:3])}')
    return out


__all__ = ['CheckpointFit', 'checkpoint_fit', 'describe_fit', 'read_state_dict']
