"""Find, evaluate and plot the learned group-rational activations stored in a checkpoint.

KAT keeps one activation pair per transformer block, ``blocks.{i}.mlp.act1`` and ``blocks.{i}.mlp.act2``, each
with ``weight_numerator`` [1, 6] (shared by all groups) and ``weight_denominator`` [G, 4] (one row per group).
The keys may carry any prefix (``backbone.`` in mmpretrain/mmdet/mmseg checkpoints, ``module.`` in wrapped
models); checkpoints may be plain state dicts or wrap one under 'state_dict', 'model' or 'state_dict_ema'.

Used by ``tools/visualize_rationals.py``; importable without a display (matplotlib's Agg canvas is used
directly, pyplot is never imported).
"""
import os
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mmkat.ops import NUM_DENOMINATOR, NUM_NUMERATOR, get_preset, group_rational

__all__ = [
    'RationalsError', 'RATIONAL_KEY_PATTERN', 'load_checkpoint', 'select_state_dict', 'collect_rationals',
    'evaluate_rationals', 'plot_rationals'
]

# <prefix>(blocks|layers).<i>.<module>.(act1|act2).weight_(numerator|denominator)
RATIONAL_KEY_PATTERN = (r'^(?P<prefix>(?:.*\.)?)(?:blocks|layers)\.(?P<block>\d+)\.(?P<module>[A-Za-z_]\w*)\.'
                        r'(?P<act>act[12])\.weight_(?P<kind>numerator|denominator)$')
_KEY_RE = re.compile(RATIONAL_KEY_PATTERN)
KEY_EXAMPLE = 'blocks.{i}.mlp.act1.weight_numerator / blocks.{i}.mlp.act1.weight_denominator (and act2)'

# checkpoint wrappers, in order of preference
_WRAPPERS = ('state_dict', 'model', 'state_dict_ema', 'module')
_WRAPPERS_EMA = ('state_dict_ema', 'state_dict', 'model', 'module')

Key = Tuple[int, str]  # (block index, 'act1' | 'act2')


class RationalsError(ValueError):
    """A checkpoint that cannot be read or holds no (or inconsistent) rational coefficients."""


# ------------------------------------------------------------------------------------------- loading
def load_checkpoint(path: str):
    """``torch.load(path, map_location='cpu', weights_only=True)``, allowing mmengine's objects if needed.

    An mmengine training checkpoint holds non-tensor objects (message_hub, config) that the weights-only
    unpickler refuses; ``mmkat.engine.allow_mmengine_checkpoints()`` (when present) allow-lists them.
    """
    if not os.path.isfile(path):
        raise RationalsError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as first:
        reason = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
        try:
            from mmkat.engine import allow_mmengine_checkpoints
        except ImportError:
            raise RationalsError(
                f'{path} holds objects that torch.load(weights_only=True) refuses ({reason}). It looks like an '
                'mmengine training checkpoint, and mmkat.engine.allow_mmengine_checkpoints (which allow-lists '
                "mmengine's types) is not available in this mmkat. For a file you trust, save its weights "
                "alone: torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth'), and "
                'pass that file.') from first
        allow_mmengine_checkpoints()
        try:
            return torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as second:
            raise RationalsError(f'{path} still cannot be loaded with weights_only=True after '
                                 f'allow_mmengine_checkpoints(): {str(second).strip().splitlines()[0]}') from second
    except (RuntimeError, EOFError, OSError) as e:
        raise RationalsError(f'cannot load {path} with torch.load: {e}') from e


def select_state_dict(checkpoint, prefer_ema: bool = False) -> Tuple[Mapping, str]:
    """The state dict inside a checkpoint and a description of where it came from.

    Prefers 'state_dict' (mmengine), then 'model', then 'state_dict_ema' (timm); with ``prefer_ema``,
    'state_dict_ema' first. mmengine's EMAHook already swaps the averaged weights into 'state_dict' (the raw
    ones go to 'ema_state_dict'), so for those checkpoints 'state_dict' is the EMA model either way.
    """
    if not isinstance(checkpoint, Mapping):
        raise RationalsError(f'the checkpoint holds a {type(checkpoint).__name__}, expected a dict (a state '
                             'dict, or one wrapping it under state_dict / model / state_dict_ema)')
    for name in (_WRAPPERS_EMA if prefer_ema else _WRAPPERS):
        inner = checkpoint.get(name)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            note = f"'{name}'"
            if name == 'state_dict' and 'ema_state_dict' in checkpoint:
                note += " (mmengine EMAHook checkpoint: 'state_dict' holds the EMA weights)"
            elif prefer_ema and name != 'state_dict_ema':
                note += ' (no EMA weights in this checkpoint)'
            return inner, note
    return checkpoint, 'the top-level dict'


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


def _preset_curves(x: np.ndarray, names: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    out = []
    xt = torch.from_numpy(x)[:, None]
    for name in names:
        num, den = get_preset(name)
        y = group_rational(xt, torch.tensor([num], dtype=torch.float64), torch.tensor([den], dtype=torch.float64),
                           1, impl='reference')
        out.append((name, y[:, 0].numpy()))
    return out


# ----------------------------------------------------------------------------------------- plotting
def plot_rationals(x: np.ndarray,
                   curves: Mapping[Key, np.ndarray],
                   out: str,
                   title: str = '',
                   preset_overlay: bool = False,
                   dpi: int = 100) -> str:
    """Draw one row per block, one column per activation (act1, act2), one curve per group; write a PNG.

    The file is written to a temporary name next to ``out`` and renamed, so a failed run leaves no partial
    file. Returns ``out``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not curves:
        raise RationalsError('nothing to plot')
    blocks = sorted({b for b, _ in curves})
    acts = sorted({a for _, a in curves}) or ['act1', 'act2']
    max_groups = max(c.shape[1] for c in curves.values())
    fig = Figure(figsize=(3.6 * len(acts) + 0.6, 1.9 * len(blocks) + 1.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(blocks), len(acts), squeeze=False, sharex=True)

    from matplotlib import colormaps
    cmap = colormaps['tab10' if max_groups <= 10 else 'turbo']
    colours = [cmap(g if max_groups <= 10 else g / max(max_groups - 1, 1)) for g in range(max_groups)]
    overlays = _preset_curves(x, ['identity', 'swish']) if preset_overlay else []
    overlay_style = {'identity': dict(color='0.45', ls=':'), 'swish': dict(color='black', ls='--')}

    for r, block in enumerate(blocks):
        for c, act in enumerate(acts):
            ax = axes[r][c]
            y = curves.get((block, act))
            if y is None:
                ax.text(0.5, 0.5, 'missing', ha='center', va='center', transform=ax.transAxes)
            else:
                for name, yp in overlays:
                    ax.plot(x, yp, lw=1.0, zorder=1, **overlay_style.get(name, dict(ls='--')))
                for g in range(y.shape[1]):
                    ax.plot(x, y[:, g], color=colours[g], lw=1.1, zorder=2)
            ax.axhline(0, color='0.85', lw=0.6, zorder=0)
            ax.axvline(0, color='0.85', lw=0.6, zorder=0)
            ax.tick_params(labelsize=7)
            ax.set_title(f'block {block} {act}', fontsize=8, pad=2)
        axes[r][0].set_ylabel('F(x)', fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel('x', fontsize=7)
        ax.set_xlim(float(x[0]), float(x[-1]))

    handles = [Line2D([], [], color=colours[g], lw=1.5) for g in range(max_groups)]
    labels = [f'group {g}' for g in range(max_groups)]
    for name, _ in overlays:
        handles.append(Line2D([], [], lw=1.0, **overlay_style.get(name, dict(ls='--'))))
        labels.append(f'{name} init')
    # Fixed margins in inches (tight_layout costs seconds with dozens of axes): title, legend, then the grid.
    height, width = fig.get_figheight(), fig.get_figwidth()
    title_in = 0.2 * (title.count('\n') + 1) + 0.1 if title else 0.1
    legend_rows = -(-len(labels) // 5)
    top_in = title_in + 0.17 * legend_rows + 0.35
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.08 / height, va='top')
    fig.legend(handles, labels, loc='upper center', ncol=min(len(labels), 5), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1.0 - title_in / height))
    fig.subplots_adjust(left=0.6 / width, right=1.0 - 0.15 / width, bottom=0.45 / height,
                        top=1.0 - top_in / height, hspace=0.35, wspace=0.22)

    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f'.{os.path.basename(out)}.{os.getpid()}.tmp')
    try:
        fig.savefig(tmp, format='png', dpi=dpi)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
