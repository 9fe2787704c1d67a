"""Plot the learned group-rational activations (act1, act2 of every block) of a KAT checkpoint.

Usage:
    python tools/visualize_rationals.py work_dirs/kat_tiny/epoch_100.pth
    python tools/visualize_rationals.py kat_tiny_patch16_224.pth --out rationals.png --xlim 4 --preset-overlay
    python tools/visualize_rationals.py timm_ckpt.pth --ema      # plot 'state_dict_ema' when the file has one

One row per block, two columns (act1, act2), one curve per group (every group evaluated on the same x grid
with the reference op). The PNG goes next to the checkpoint as <stem>_rationals.png unless --out is given; an
existing file is never replaced without --force. The logic lives in mmkat/utils/rationals.py.
"""
import argparse
import os
import sys
import time

try:
    import mmkat  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmkat.utils.rationals import (RATIONAL_KEY_PATTERN, RationalsError, collect_rationals,  # noqa: E402,F401
                                   evaluate_rationals, load_checkpoint, plot_rationals, select_state_dict)


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
        checkpoint = load_checkpoint(args.checkpoint)
        state_dict, source = select_state_dict(checkpoint, prefer_ema=args.ema)
        rationals = collect_rationals(state_dict, prefix=args.prefix, prefer_ema=args.ema)
        blocks = sorted({b for b, _ in rationals})
        groups = sorted({den.shape[0] for _, den in rationals.values()})
        print(f'found {len(rationals)} activations in {len(blocks)} blocks ({", ".join(map(str, groups))} '
              f'groups) in {source}', flush=True)
        x, curves = evaluate_rationals(rationals, xlim=args.xlim, num_points=args.points)
        title = f'{os.path.basename(args.checkpoint)}\nweights from {source}'
        plot_rationals(x, curves, out, title=title, preset_overlay=args.preset_overlay, dpi=args.dpi)
    except RationalsError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'wrote {out} ({time.time() - start:.1f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
