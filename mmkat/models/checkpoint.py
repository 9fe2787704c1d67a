"""Reading released KAT (and timm ViT) checkpoints for the KAT backbone.

Released files are plain fp32 state dicts in timm's ViT layout, possibly wrapped under 'model',
'state_dict' or 'state_dict_ema'; full OpenMMLab model checkpoints prefix the backbone with 'backbone.'.
Downloaded weights are untrusted: they are read with ``torch.load(weights_only=True)``.
"""
import os
import re
from typing import Dict, List, Optional, Tuple

import torch

WRAPPER_KEYS = ('state_dict', 'model', 'state_dict_ema')
HEAD_PREFIXES = ('head.', 'fc_norm.', 'head_drop.')
_RATIONAL_KEY = re.compile(r'^blocks\.\d+\.mlp\.act[12]\.weight_(numerator|denominator)$')


def load_state_dict_file(path: str, map_location='cpu') -> dict:
    """Load a checkpoint file as tensors only (``weights_only=True``), with a clear error when it is
    missing or holds more than tensors."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path!r} (expected a .pth file of a released KAT, '
                                'a timm ViT or an mmkat-converted model)')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises UnpicklingError and friends)
        raise RuntimeError(
            f'could not load {path} as a weights-only checkpoint ({type(err).__name__}: {err}). Released KAT and '
            'timm files hold tensors only; a training checkpoint written by mmengine should be given to '
            '`tools/train.py --resume` or converted by `tools/convert_checkpoint.py`.') from err


def unwrap_state_dict(checkpoint: dict, prefer_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """The tensor dict inside ``checkpoint`` and where it was found ('' for a plain state dict)."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must be a dict of tensors, got {type(checkpoint).__name__}')
    order = ('state_dict_ema',) + WRAPPER_KEYS if prefer_ema else WRAPPER_KEYS
    for key in order:
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return dict(inner), key
    tensors = {k: v for k, v in checkpoint.items() if torch.is_tensor(v)}
    if not tensors:
        raise ValueError('no state dict found in the checkpoint: expected tensors at the top level or under one of '
                         f'{WRAPPER_KEYS}; top-level keys are {sorted(checkpoint)[:10]}')
    return tensors, ''


def strip_prefixes(state_dict: Dict[str, torch.Tensor],
                   prefixes: Tuple[str, ...] = ('module.', 'backbone.')) -> Dict[str, torch.Tensor]:
    """Remove wrapper prefixes ('module.' of DDP, 'backbone.' of OpenMMLab models). When some keys carry
    'backbone.' and others not (a whole detector), only the backbone's keys are kept."""
    out = dict(state_dict)
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
    return out


def checkpoint_kind(state_dict: Dict[str, torch.Tensor]) -> str:
    """'kat' (has rational coefficients), 'vit' (timm ViT layout without them) or 'unknown'."""
    if any(_RATIONAL_KEY.match(k) for k in state_dict):
        return 'kat'
    if 'blocks.0.mlp.fc1.weight' in state_dict and 'blocks.0.attn.qkv.weight' in state_dict:
        return 'vit'
    return 'unknown'


def backbone_state_dict(checkpoint: dict,
                        prefer_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """The backbone part of a released KAT / timm ViT / mmkat checkpoint, in KAT's key names.

    Returns the state dict and a report: 'source' (where it was found), 'kind', 'dropped' (classifier keys
    removed: a dense task has no ImageNet head).
    """
    state_dict, source = unwrap_state_dict(checkpoint, prefer_ema)
    state_dict = strip_prefixes(state_dict)
    kind = checkpoint_kind(state_dict)
    if kind == 'unknown':
        raise ValueError('the checkpoint is neither a KAT nor a timm ViT state dict: expected keys such as '
                         "'blocks.0.attn.qkv.weight' and 'blocks.0.mlp.fc1.weight' (optionally under "
                         f"'backbone.'); found e.g. {sorted(state_dict)[:6]}")
    dropped = sorted(k for k in state_dict if k.startswith(HEAD_PREFIXES))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIXES)}
    return state_dict, dict(source=[source or '<top level>'], kind=[kind], dropped=dropped)


def classifier_state_dict(checkpoint: dict, prefer_ema: bool = False) -> Optional[Dict[str, torch.Tensor]]:
    """The released classifier ('head.weight', 'head.bias') if present, else None."""
    state_dict, _ = unwrap_state_dict(checkpoint, prefer_ema)
    state_dict = strip_prefixes(state_dict, ('module.',))
    if 'head.weight' in state_dict and 'head.bias' in state_dict:
        return {'weight': state_dict['head.weight'], 'bias': state_dict['head.bias']}
    return None


TASKS = ('cls', 'det', 'seg')


def to_openmmlab_checkpoint(checkpoint: dict, task: str, prefer_ema: bool = False, source: str = '') -> dict:
    """A full OpenMMLab model checkpoint (``{'state_dict': ..., 'meta': ...}``) from a released KAT / timm ViT
    checkpoint: the backbone under 'backbone.', and for ``task='cls'`` the released classifier as
    mmpretrain's LinearClsHead ('head.fc.weight', 'head.fc.bias'). Detection and segmentation models get the
    backbone only (their heads are trained); the position embedding keeps its 224 px grid and is resized
    when the model loads it."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    backbone, report = backbone_state_dict(checkpoint, prefer_ema)
    state_dict = {'backbone.' + k: v.clone() for k, v in backbone.items()}
    if task == 'cls':
        head = classifier_state_dict(checkpoint, prefer_ema)
        if head is None:
            raise ValueError("task='cls' needs the released classifier ('head.weight', 'head.bias'), which this "
                             "checkpoint lacks; use task='det' or 'seg' for a backbone-only file")
        state_dict['head.fc.weight'] = head['weight'].clone()
        state_dict['head.fc.bias'] = head['bias'].clone()
    blocks = {int(k.split('.')[1]) for k in backbone if k.startswith('blocks.')}
    meta = dict(converted_by='mmkat tools/convert_checkpoint.py', source=source, task=task,
                kind=report['kind'][0], found_in=report['source'][0], embed_dims=int(backbone['cls_token'].shape[-1])
                if 'cls_token' in backbone else None, num_layers=len(blocks))
    return dict(state_dict=state_dict, meta=meta)
