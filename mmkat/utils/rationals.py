"""Find and evaluate the learned group-rational activations stored in a state dict.

KAT keeps one activation pair per transformer block, ``blocks.{i}.mlp.act1`` and ``blocks.{i}.mlp.act2``, each
with ``weight_numerator`` [1, 6] (shared by all groups) and ``weight_denominator`` [G, 4] (one row per group).
The keys may carry any prefix (``backbone.`` in mmpretrain/mmdet/mmseg checkpoints, ``module.`` in wrapped
models). Reading and unwrapping checkpoint files is :mod:`mmkat.models.checkpoint`'s job; plotting is
``tools/visualize_rationals.py``'s.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from mmkat.models.checkpoint import CheckpointError
from mmkat.ops import NUM_DENOMINATOR, NUM_NUMERATOR, group_rational

__all__ = ['RationalsError', 'RATIONAL_KEY_PATTERN', 'collect_rationals', 'evaluate_rationals']

# <prefix>(blocks|layers).<i>.<module>.(act1|act2).weight_(numerator|denominator)
RATIONAL_KEY_PATTERN = (r'^(?P<prefix>(?:.*\.)?)(?:blocks|layers)\.(?P<block>\d+)\.(?P<module>[A-Za-z_]\w*)\.'
                        r'(?P<act>act[12])\.weight_(?P<kind>numerator|denominator)$')
_KEY_RE = re.compile(RATIONAL_KEY_PATTERN)
KEY_EXAMPLE = 'blocks.{i}.mlp.act1.weight_numerator / blocks.{i}.mlp.act1.weight_denominator (and act2)'

Key = Tuple[int, str]  # (block index, 'act1' | 'act2')


class RationalsError(CheckpointError):
    """A state dict that holds no (or inconsistent) rational coefficients."""


# ---------------------------------------------------------------------------------------- collecting
def _group_by_prefix(state_dict: Mapping) -> Dict[str, Dict[Key, Dict[str, torch.Tensor]]]:
    groups: Dict[str, Dict[Key, Dict[str, torch.Tensor]]] = OrderedDict()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        m = _KEY_RE.match(key)
        if m is None:
            continue
        entry = groups.setdefault(m['prefix'], OrderedDict()).setdefault((int(m['block']), m['act']), {})
        entry[m['kind']] = value
        entry.setdefault('_names', []).append(key)
    return groups


def _is_ema_prefix(prefix: str) -> bool:
    return any(part.startswith('ema_') or part == 'ema' for part in prefix.split('.'))


def collect_rationals(state_dict: Mapping,
                      prefix: Optional[str] = None,
                      prefer_ema: bool = False) -> Dict[Key, Tuple[torch.Tensor, torch.Tensor]]:
    """Every activation's coefficients: ``{(block, 'act1' | 'act2'): (numerator [1, 6], denominator [G, 4])}``.

    Keys are matched by :data:`RATIONAL_KEY_PATTERN` under any prefix; other keys are ignored. When several
    prefixes hold rationals (e.g. a model and an ``ema_`` copy), the non-EMA one is used (the EMA one with
    ``prefer_ema``); if that is still ambiguous, ``prefix`` must name one. Tensors are returned as float64
    on the CPU, sorted by block then activation.
    """
    if not isinstance(state_dict, Mapping):
        raise RationalsError(f'expected a state dict (a mapping of names to tensors), got '
                             f'{type(state_dict).__name__}')
    groups = _group_by_prefix(state_dict)
    if not groups:
        raise RationalsError('no group-rational coefficients found: expected keys like ' + KEY_EXAMPLE +
                             f', under any prefix (regex {RATIONAL_KEY_PATTERN}); the state dict has '
                             f'{len(state_dict)} keys' +
                             (f', e.g. {", ".join(list(map(str, state_dict))[:3])}' if len(state_dict) else ''))
    if prefix is not None:
        if prefix not in groups:
            raise RationalsError(f'no rational coefficients under prefix {prefix!r}; found prefixes '
                                 f'{sorted(groups)}')
        chosen = prefix
    else:
        candidates = [p for p in groups if _is_ema_prefix(p) == prefer_ema] or list(groups)
        if len(candidates) > 1:
            raise RationalsError(f'rational coefficients under several prefixes {candidates}; choose one with '
                                 '--prefix (collect_rationals(..., prefix=...))')
        chosen = candidates[0]

    out: Dict[Key, Tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
    for key in sorted(groups[chosen]):
        entry = groups[chosen][key]
        name = f'{chosen}blocks.{key[0]}.*.{key[1]}'
        for kind in ('numerator', 'denominator'):
            if kind not in entry:
                raise RationalsError(f'{name}: weight_{kind} is missing (found {entry["_names"]})')
        num = entry['numerator'].detach().to('cpu', torch.float64)
        den = entry['denominator'].detach().to('cpu', torch.float64)
        if num.numel() != NUM_NUMERATOR:
            raise RationalsError(f'{name}.weight_numerator has shape {list(num.shape)}, expected '
                                 f'[1, {NUM_NUMERATOR}]')
        if den.dim() != 2 or den.shape[1] != NUM_DENOMINATOR:
            raise RationalsError(f'{name}.weight_denominator has shape {list(den.shape)}, expected '
                                 f'[groups, {NUM_DENOMINATOR}]')
        out[key] = (num.reshape(1, NUM_NUMERATOR), den)
    return out


# --------------------------------------------------------------------------------------- evaluating
def evaluate_rationals(rationals: Mapping[Key, Tuple[torch.Tensor, torch.Tensor]],
                       xlim: float = 3.0,
                       num_points: int = 401) -> Tuple[np.ndarray, Dict[Key, np.ndarray]]:
    """``x`` [N] on [-xlim, xlim] and, per activation, F evaluated per group: an array [N, G].

    Every group sees the same x: the input is [N, G] with column g = x, so with C = G channel g is group g.
    """
    if not xlim > 0:
        raise RationalsError(f'xlim must be positive, got {xlim}')
    x = torch.linspace(-xlim, xlim, num_points, dtype=torch.float64)
    curves = OrderedDict()
    with torch.no_grad():
        for key, (num, den) in rationals.items():
            groups = den.shape[0]
            inp = x[:, None].expand(num_points, groups).contiguous()
            y = group_rational(inp, num.to(torch.float64), den.to(torch.float64), groups, impl='reference')
            curves[key] = y.numpy()
    return x.numpy(), curves
