"""Plot the learned group-rational activations (act1, act2 of every block) of a KAT checkpoint.

Usage:
    python tools/visualize_rationals.py work_dirs/kat_tiny/epoch_100.pth
    python tools/visualize_rationals.py kat_tiny_patch16_224.pth --out rationals.png --xlim 4 --preset-overlay
    python tools/visualize_rationals.py timm_ckpt.pth --ema      # plot 'state_dict_ema' when the file has one

One row per block, two columns (act1, act2), one curve per group (every group evaluated on the same x grid
with the reference op). The PNG goes next to the checkpoint as <stem>_rationals.png unless --out is given; an
existing file is never replaced without --force. Reading: mmkat.models.checkpoint; collecting and evaluating
the coefficients: mmkat.utils.rationals; plotting: here.
"""
import argparse
import os
import sys
import time
from typing import List, Mapping, Sequence, Tuple

import numpy as np
import torch

from mmkat.models.checkpoint import CheckpointError, read_state_dict
from mmkat.ops import get_preset, group_rational
from mmkat.utils.rationals import Key, RationalsError, collect_rationals, evaluate_rationals


def _preset_curves(x: np.ndarray, names: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    out = []
    xt = torch.from_numpy(x)[:, None]
    for name in names:
        num, den = get_preset(name)
        y = group_rational(xt, torch.tensor([num], dtype=torch.float64), torch.tensor([den], dtype=torch.float64),
                           1, impl='reference')
        out.append((name, y[:, 0].numpy()))
    return out


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


def default_out(checkpoint: str) -> str:
    directory, base = os.path.split(os.path.abspath(checkpoint))
    stem = os.path.splitext(base)[0]
    return os.path.join(directory, f'{stem}_rationals.png')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Plot the group-rational activations stored in a checkpoint.')
    parser.add_argument('checkpoint', help='a .pth file: a state dict, or one wrapped under state_dict / model / '
                        'state_dict_ema (released KAT, mmpretrain, mmdet, mmseg checkpoints)')
    parser.add_argument('--out', default=None, help='output PNG (default: <checkpoint stem>_rationals.png next '
                        'to the checkpoint)')
    parser.add_argument('--force', action='store_true', help='replace an existing output file')
    parser.add_argument('--xlim', type=float, default=3.0, help='plot x over [-xlim, xlim] (default 3)')
    parser.add_argument('--points', type=int, default=401, help='points per curve (default 401)')
    parser.add_argument('--preset-overlay', action='store_true',
                        help='draw the identity and swish init curves (dashed) for reference')
    parser.add_argument('--dpi', type=int, default=100, help='PNG resolution (default 100)')
    parser.add_argument('--ema', action='store_true', help="prefer EMA weights ('state_dict_ema') when present")
    parser.add_argument('--prefix', default=None,
                        help="key prefix to use when several hold rationals (e.g. 'backbone.')")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or default_out(args.checkpoint)
    try:
        if os.path.exists(out) and not args.force:
            raise RationalsError(f'{out} already exists; pass --force to replace it or choose another --out')
        if args.points < 2:
            raise RationalsError(f'--points must be at least 2, got {args.points}')
        start = time.time()
        print(f'loading {args.checkpoint}', flush=True)
        state_dict, source = read_state_dict(args.checkpoint, prefer_ema=args.ema)
        rationals = collect_rationals(state_dict, prefix=args.prefix, prefer_ema=args.ema)
        blocks = sorted({b for b, _ in rationals})
        groups = sorted({den.shape[0] for _, den in rationals.values()})
        print(f'found {len(rationals)} activations in {len(blocks)} blocks ({", ".join(map(str, groups))} '
              f'groups) in {source}', flush=True)
        x, curves = evaluate_rationals(rationals, xlim=args.xlim, num_points=args.points)
        title = f'{os.path.basename(args.checkpoint)}\nweights from {source}'
        plot_rationals(x, curves, out, title=title, preset_overlay=args.preset_overlay, dpi=args.dpi)
    except (CheckpointError, FileNotFoundError, RuntimeError) as e:  # RationalsError is a CheckpointError
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'wrote {out} ({time.time() - start:.1f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
