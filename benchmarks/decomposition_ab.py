"""Compiled KAT with the overflow-safe forward decomposition against the bare direct formula (and the GELU
twin), timed in alternating rounds in one process (one CUDA GPU, bf16 autocast, batch 128 of 224 px images):

    python benchmarks/decomposition_ab.py ARCH [MODE] [--out benchmarks/results/decomposition_h200.json]

Prints images/s, ms/step and the ratio to the twin of each model; ``--out FILE`` appends the run to the data
file FILE (mmkat/utils/results.py)."""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import benchmark as B  # noqa: E402

import mmkat.ops.rational as gr  # noqa: E402
from mmkat.utils.results import (  # noqa: E402
    command_line,
    new_run,
    now,
    save_results,
)

BENCHMARK = ('benchmarks/decomposition_ab.py: compiled KAT with the overflow-safe forward against the bare direct '
             'formula, and the GELU twin')
BATCH, IMG_SIZE, WARMUP = 128, 224, 5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('arch', choices=sorted(B.ARCHS))
    parser.add_argument('mode', nargs='?', default='infer', choices=['train', 'infer'])
    parser.add_argument('--rounds', type=int, default=7, help='alternating timed rounds (the median is reported)')
    parser.add_argument('--steps', type=int, default=10, help='iterations per model and round')
    parser.add_argument('--out', metavar='FILE', help='data file the run is appended to')
    args = parser.parse_args(argv)
    dev = torch.device('cuda')
    command, started = command_line(__file__, sys.argv[1:] if argv is None else argv), now()
    B.check_out(parser, args.out, BENCHMARK, dev)
    torch._inductor.config.fx_graph_cache = False  # the two decompositions trace to the same pre-decomposition graph
    torch._functorch.config.enable_autograd_cache = False

    runners = {}
    for name, kind, forward in (('vit', 'vit', None), ('kat-safe', 'kat', 'decomposed'),
                                ('kat-direct', 'kat', 'direct')):
        if forward is not None:
            gr.compile_forward = forward  # the formula inductor decomposes the op into, read when the model compiles
        torch.manual_seed(0)
        r = B.Runner(B.build(kind, args.arch, IMG_SIZE), args.mode, 'default', BATCH, IMG_SIZE, dev, torch.bfloat16)
        for _ in range(WARMUP):
            r.step()
        torch.cuda.synchronize()
        runners[name] = r
    gr.compile_forward = 'decomposed'
    secs = {n: [] for n in runners}
    for _ in range(args.rounds):
        for n, r in runners.items():
            secs[n].append(B.time_steps(r, args.steps))
    vit = statistics.median(secs['vit'])
    rows = []
    for n in runners:
        med = statistics.median(secs[n])
        rows.append(dict(arch=args.arch, mode=args.mode, compile='default', model=n,
                         images_per_s=BATCH * args.steps / med, ms_per_step=1e3 * med / args.steps, vs_vit=vit / med,
                         ms_per_step_all=[1e3 * s / args.steps for s in secs[n]]))
        print(f'{args.arch} {args.mode} {n:10s} {rows[-1]["images_per_s"]:8.0f} img/s  '
              f'{rows[-1]["ms_per_step"]:6.2f} ms/step  {vit / med:.3f}x ViT', flush=True)
    if args.out:
        settings = dict(batch_size=BATCH, img_size=IMG_SIZE, dtype='bfloat16', compile='default', rounds=args.rounds,
                        steps=args.steps, warmup=WARMUP)
        save_results(args.out, new_run(command, dev, date=started, settings=settings, rows=rows), BENCHMARK)
    return rows


if __name__ == '__main__':
    main()
