"""Reading checkpoints: the one place where mmkat opens a checkpoint file and finds its state dict.

Released KAT and timm files are plain fp32 state dicts in timm's ViT layout, possibly wrapped under 'model',
'state_dict' or 'state_dict_ema'; OpenMMLab model checkpoints (mmengine) hold 'state_dict' (and, for training
checkpoints, 'message_hub', 'meta' and optimizer states) and prefix the backbone with 'backbone.'. Every file
is read with ``torch.load(weights_only=True)``; the inert types of mmengine's training checkpoints are on
torch's allowlist from ``import mmkat`` on (see :func:`mmkat.engine.allow_mmengine_checkpoints`).

Errors: a missing file raises FileNotFoundError, a file that cannot be read as tensors RuntimeError, a
checkpoint without the expected content :class:`CheckpointError` (a ValueError); every message names the
file or what was expected.
"""
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

# checkpoint wrappers, in order of preference (with prefer_ema, 'state_dict_ema' first)
WRAPPER_KEYS = ('state_dict', 'model', 'state_dict_ema', 'module')
MMENGINE_WRAPPERS = ('state_dict', )  # what mmengine's own loader looks into
HEAD_PREFIXES = ('head.', 'fc_norm.', 'head_drop.')
_RATIONAL_KEY = re.compile(r'^blocks\.\d+\.mlp\.act[12]\.weight_(numerator|denominator)$')


class CheckpointError(ValueError):
    """A checkpoint without the content that was expected of it."""


SAFETENSORS = 'safetensors'


def file_format(path: str) -> str:
    """'safetensors' for a safetensors file (an 8-byte header length, then a JSON header), else 'torch'."""
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) == 9 and head[:2] != b'PK' and head[8:9] == b'{':
        return SAFETENSORS
    return 'torch'


def load_state_dict_file(path: str, map_location='cpu'):
    """Load a checkpoint file as tensors only: a ``.safetensors`` file (recognised by its content) with
    safetensors, any other with ``torch.load(weights_only=True)`` (mmengine's training checkpoints load too,
    through the allowlist ``import mmkat`` registers). Raises FileNotFoundError for a missing file and
    RuntimeError, naming the file, for one that cannot be read."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path!r} (expected a .pth or .safetensors file of a '
                                'released KAT, a timm ViT or an mmkat / OpenMMLab model)')
    if file_format(path) == SAFETENSORS:
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise RuntimeError(f'{path} is a safetensors file; reading it needs safetensors '
                               f'(pip install safetensors): {err}') from None
        try:
            device = map_location if isinstance(map_location, (str, torch.device)) else 'cpu'
            return load_file(path, device=str(device))
        except Exception as err:  # noqa: BLE001  (SafetensorError and friends)
            raise RuntimeError(f'could not load {path} as a safetensors file ({type(err).__name__}: '
                               f'{str(err).strip().splitlines()[0] if str(err).strip() else ""})') from err
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises UnpicklingError and friends)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise RuntimeError(
            f'could not load {path} as a weights-only checkpoint ({type(err).__name__}: {reason}). Released KAT '
            "and timm files hold tensors only, and mmengine's checkpoints only the types "
            'mmkat.engine.allow_mmengine_checkpoints() allows; this file holds something else.') from err


def unwrap_state_dict(checkpoint: Mapping, prefer_ema: bool = False, wrappers: Tuple[str, ...] = WRAPPER_KEYS,
                      allow_empty: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """The tensor dict inside ``checkpoint`` and where it was found ('' for a plain state dict).

    The first of ``wrappers`` that holds a dict with tensors wins (with ``prefer_ema``, 'state_dict_ema'
    first); otherwise the top-level tensors. ``wrappers=MMENGINE_WRAPPERS`` looks where mmengine's loader
    looks. Non-tensor entries are left out. A dict without tensors is an error unless ``allow_empty``.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'a checkpoint must be a dict of tensors (or one wrapping it under one of '
                              f'{list(wrappers)}), got {type(checkpoint).__name__}')
    order = (('state_dict_ema', ) + tuple(w for w in wrappers if w != 'state_dict_ema')) if prefer_ema else wrappers
    for key in order:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return {k: v for k, v in inner.items() if torch.is_tensor(v)}, key
    tensors = {k: v for k, v in checkpoint.items() if torch.is_tensor(v)}
    if not tensors and not allow_empty:
        raise CheckpointError('no state dict found in the checkpoint: expected tensors at the top level or under '
                              f'one of {list(wrappers)}; top-level keys are {sorted(map(str, checkpoint))[:10]}')
    return tensors, ''


def describe_source(checkpoint: Mapping, source: str, prefer_ema: bool = False) -> str:
    """Where :func:`unwrap_state_dict` found the weights, for messages ('the top-level dict', "'model'", ...)."""
    if not source:
        return 'the top-level dict'
    note = f"'{source}'"
    if source == 'state_dict' and 'ema_state_dict' in checkpoint:
        note += " (mmengine EMAHook checkpoint: 'state_dict' holds the EMA weights)"
    elif prefer_ema and source != 'state_dict_ema':
        note += ' (no EMA weights in this checkpoint)'
    return note


def read_state_dict(path: str, map_location='cpu', prefer_ema: bool = False, wrappers: Tuple[str, ...] = WRAPPER_KEYS,
                    allow_empty: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read ``path`` (mmengine checkpoints allowed) and return its state dict and where it was found."""
    checkpoint = load_state_dict_file(path, map_location=map_location)
    try:
        state_dict, source = unwrap_state_dict(checkpoint, prefer_ema, wrappers, allow_empty)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    return state_dict, describe_source(checkpoint, source, prefer_ema)


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


SIZES = {(192, 12): 'KAT-T / ViT-T', (384, 12): 'KAT-S / ViT-S', (768, 12): 'KAT-B / ViT-B'}


def checkpoint_size(state_dict: Dict[str, torch.Tensor]) -> Tuple[Optional[int], int]:
    """(width, depth) of a backbone state dict in KAT's key names: the patch embedding's output channels
    (None without one) and the number of blocks."""
    proj = state_dict.get('patch_embed.proj.weight')
    dims = int(proj.shape[0]) if proj is not None and proj.dim() == 4 else None
    blocks = {int(k.split('.')[1]) for k in state_dict if k.startswith('blocks.') and k.split('.')[1].isdigit()}
    return dims, (max(blocks) + 1 if blocks else 0)


def size_name(dims: Optional[int], depth: int, kind: str = 'kat') -> str:
    """'KAT-S (384-dim, 12 blocks)' for the released sizes, '64-dim, 4 blocks' for others."""
    shape = f'{dims}-dim, {depth} blocks'
    known = SIZES.get((dims, depth))
    if known is None:
        return shape
    return f'{known.split(" / ")[0 if kind == "kat" else 1]} ({shape})'


def backbone_state_dict(checkpoint: dict,
                        prefer_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Union[str, List[str]]]]:
    """The backbone part of a released KAT / timm ViT / mmkat checkpoint, in KAT's key names.

    Returns the state dict and a report: 'source' (where it was found), 'kind' ('kat' or 'vit'), 'dropped'
    (the classifier keys removed: a dense task has no ImageNet head).
    """
    state_dict, source = unwrap_state_dict(checkpoint, prefer_ema)
    state_dict = strip_prefixes(state_dict)
    kind = checkpoint_kind(state_dict)
    if kind == 'unknown':
        raise CheckpointError('the checkpoint is neither a KAT nor a timm ViT state dict: expected keys such as '
                         "'blocks.0.attn.qkv.weight' and 'blocks.0.mlp.fc1.weight' (optionally under "
                         f"'backbone.'); found e.g. {sorted(state_dict)[:6]}")
    dropped = sorted(k for k in state_dict if k.startswith(HEAD_PREFIXES))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIXES)}
    return state_dict, dict(source=source or '<top level>', kind=kind, dropped=dropped)


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
            raise CheckpointError("task='cls' needs the released classifier ('head.weight', 'head.bias'), which this "
                             "checkpoint lacks; use task='det' or 'seg' for a backbone-only file")
        state_dict['head.fc.weight'] = head['weight'].clone()
        state_dict['head.fc.bias'] = head['bias'].clone()
    blocks = {int(k.split('.')[1]) for k in backbone if k.startswith('blocks.')}
    meta = dict(converted_by='mmkat tools/convert_checkpoint.py', source=source, task=task,
                kind=report['kind'], found_in=report['source'], embed_dims=int(backbone['cls_token'].shape[-1])
                if 'cls_token' in backbone else None, num_layers=len(blocks))
    return dict(state_dict=state_dict, meta=meta)


def is_released_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    """A KAT / timm ViT state dict in timm's key names (``blocks.0.attn.qkv.weight`` at the top level, after
    DDP's ``module.``), as opposed to an OpenMMLab model's (``backbone.blocks...``)."""
    keys = strip_prefixes(state_dict, ('module.', ))
    return checkpoint_kind(keys) != 'unknown'


def openmmlab_layout(checkpoint, source: str = '') -> dict:
    """``checkpoint`` as an OpenMMLab model loads it: a released KAT / timm ViT state dict becomes
    :func:`to_openmmlab_checkpoint`'s (the classifier as ``head.fc`` when it has one, else the backbone
    only); anything else is returned unchanged."""
    if not isinstance(checkpoint, Mapping):
        return checkpoint
    try:
        state_dict, _ = unwrap_state_dict(checkpoint)
    except CheckpointError:
        return checkpoint
    if not is_released_layout(state_dict):
        return checkpoint
    task = 'cls' if classifier_state_dict(checkpoint) is not None else 'det'
    return to_openmmlab_checkpoint(checkpoint, task, source=source)
