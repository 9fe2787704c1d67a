"""Does a checkpoint fit a model? Checked before ``tools/test.py`` reports metrics for it.

mmengine loads a test checkpoint with ``strict=False`` and only logs the keys it could not place, so a file
that does not belong to the model (another architecture, a backbone-only state dict without the
``backbone.`` prefix, an empty dict) would be evaluated as an untrained model. :func:`checkpoint_fit`
reads the checkpoint as mmengine will (through mmkat's loader for weights names, URLs, ``hf_hub:`` and
``.safetensors``, see :mod:`mmkat.hub`; the ``state_dict`` entry or the whole dict, ``module.`` prefixes
dropped) and lists what the model would be left without.
"""
from typing import Dict, List, NamedTuple, Union

import torch

from mmkat.models.checkpoint import MMENGINE_WRAPPERS, is_released_layout, read_state_dict, unwrap_state_dict


class CheckpointFit(NamedTuple):
    missing: List[str]      # model parameters the file does not hold
    mismatched: List[str]   # 'key: file [shape] vs model [shape]'
    non_finite: List[str]   # model tensors whose values in the file hold NaN or inf
    unexpected: List[str]   # keys of the file the model has no place for
    total: int              # tensors in the model's state dict
    released: bool = False  # the file is a released KAT / timm ViT state dict in timm's key names

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
        if out and self.released:
            out.append('it is a released KAT / timm ViT state dict (timm key names): give its weights name, URL or '
                       'a .safetensors copy instead (read in the OpenMMLab layout), or convert it once with '
                       'tools/convert_checkpoint.py SRC DST --task cls')
        return out


def read_as_mmengine(ref: str) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint as mmengine's loader sees them (the ``state_dict`` entry or the whole dict,
    ``module.`` dropped): a local ``.pth`` file read weights-only, anything else through mmengine's
    ``CheckpointLoader`` (mmkat's loader for what :func:`mmkat.hub.handled_by_mmkat` names, which gives the
    OpenMMLab layout; mmengine's own for other URLs). Errors name the file or reference.

    (:func:`mmkat.models.checkpoint.read_state_dict` reads a local file only, in mmkat's wrapper keys, and also
    returns where in the file the state dict was found.)"""
    import os.path as osp

    from mmengine.runner.checkpoint import _load_checkpoint

    from mmkat.hub import WeightsError, handled_by_mmkat
    try:
        if osp.isfile(ref) and not handled_by_mmkat(ref):
            state, _ = read_state_dict(ref, wrappers=MMENGINE_WRAPPERS, allow_empty=True)  # the fit lists misses
        else:
            state, _ = unwrap_state_dict(_load_checkpoint(ref, map_location='cpu'), wrappers=MMENGINE_WRAPPERS,
                                         allow_empty=True)
    except WeightsError:
        raise
    except (OSError, RuntimeError, ValueError) as e:  # truncated zip, unpickling refused, not a torch file
        cause = e.__cause__ or e
        raise ValueError(f'{ref} could not be read as a checkpoint ({type(cause).__name__}: '
                         f'{str(cause).splitlines()[0] if str(cause) else ""})') from None
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def checkpoint_fit(model: torch.nn.Module, checkpoint: Union[str, Dict[str, torch.Tensor]]) -> CheckpointFit:
    """Compare the tensors of ``checkpoint`` (a file, or a state dict :func:`read_as_mmengine` returned) with
    ``model``'s state dict (a model wrapper is looked through)."""
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    state = read_as_mmengine(checkpoint) if isinstance(checkpoint, str) else checkpoint
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
    return CheckpointFit(missing, mismatched, non_finite, sorted(set(state) - set(own)), len(own),
                         is_released_layout(state))


__all__ = ['CheckpointFit', 'checkpoint_fit', 'read_as_mmengine']
