"""fc1's bias inside act2 (``rational=dict(fold_bias=True)``) against the separate calls, in one process on one CUDA
GPU: the op (act2's backward plus the bias gradient's reduction, against the bias op's backward, bf16) and KAT
training (the GELU twin, KAT, KAT with the bias folded; batch 128 of 224 px images, bf16 autocast, AdamW; timed in
alternating rounds):

    python benchmarks/fold_bias_ab.py ARCH [--compile eager default] [--out benchmarks/results/fold_bias_h100.json]

Prints milliseconds and ratios; ``--out FILE`` appends the run to the data file FILE (mmkat/utils/results.py)."""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import benchmark as B  # noqa: E402

from mmkat.utils.results import command_line, new_run, now, save_results  # noqa: E402

BENCHMARK = ("benchmarks/fold_bias_ab.py: fc1's bias inside act2 (fold_bias) against the separate calls, op and "
             'model level')
BATCH, IMG_SIZE, WARMUP, OP_REPS = 128, 224, 5, 50
OP_SHAPES = ((128, 197, 1536), (128, 197, 3072))


def time_op(fn, reps, flush):
    """Median milliseconds of ``fn`` over ``reps`` CUDA-event timings, the L2 cache flushed before each."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def op_rows(reps):
    """Per shape: act2's backward kernel followed by the bias gradient's reduction over dx (what autograd runs for
    the separate calls), the bias op's backward (one pass), and the two forwards."""
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device='cuda')
    rows = []
    for shape in OP_SHAPES:
        gen = torch.Generator(device='cuda').manual_seed(0)
        x = torch.randn(*shape, device='cuda', generator=gen).bfloat16()
        dy = torch.randn(*shape, device='cuda', generator=gen).bfloat16()
        bias = torch.randn(shape[-1], device='cuda', generator=gen)
        wn = torch.randn(1, 6, device='cuda', generator=gen) * 0.5
        wd = torch.randn(8, 4, device='cuda', generator=gen) * 0.5
        ops = torch.ops.mmkat
        separate = time_op(lambda: ops.group_rational_backward(dy, x, wn, wd, 8)[0].reshape(-1, shape[-1]).sum(
            0, dtype=torch.float32), reps, flush)
        folded = time_op(lambda: ops.group_rational_bias_backward(dy, x, bias, wn, wd, 8), reps, flush)
        fwd = time_op(lambda: ops.group_rational_forward(x, wn, wd, 8), reps, flush)
        fwd_bias = time_op(lambda: ops.group_rational_bias_forward(x, bias, wn, wd, 8), reps, flush)
        rows.append(dict(kind='op', shape='x'.join(map(str, shape)), dtype='bf16', backward_and_sum_ms=separate,
                         bias_backward_ms=folded, forward_ms=fwd, bias_forward_ms=fwd_bias))
        print(f'op {rows[-1]["shape"]} bf16: backward + bias sum {separate:.4f} ms, bias backward {folded:.4f} ms '
              f'({folded / separate:.3f}x); forward {fwd:.4f} ms, bias forward {fwd_bias:.4f} ms', flush=True)
    return rows


def model_rows(arch, compile_mode, rounds, steps, dev):
    runners = {}
    peaks = {}
    for name, kind, fold in (('vit', 'vit', False), ('kat', 'kat', False), ('kat-fold', 'kat', True)):
        torch.manual_seed(0)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        r = B.Runner(B.build(kind, arch, IMG_SIZE, fold_bias=fold), 'train', compile_mode, BATCH, IMG_SIZE, dev,
                     torch.bfloat16)
        for _ in range(WARMUP):
            r.step()
        torch.cuda.synchronize()
        if not r.cudagraphs:
            torch.cuda.reset_peak_memory_stats(dev)
            B.time_steps(r, 2)
            peaks[name] = (torch.cuda.max_memory_allocated(dev) - base) / 2**30
        runners[name] = r
    secs = {n: [] for n in runners}
    for _ in range(rounds):
        for n, r in runners.items():
            secs[n].append(B.time_steps(r, steps))
    vit = statistics.median(secs['vit'])
    kat = statistics.median(secs['kat'])
    rows = []
    for n in runners:
        med = statistics.median(secs[n])
        row = dict(kind='model', arch=arch, mode='train', compile=compile_mode, model=n,
                   images_per_s=BATCH * steps / med, ms_per_step=1e3 * med / steps, vs_vit=vit / med, vs_kat=kat / med,
                   peak_mem_gib=peaks.get(n), ms_per_step_all=[1e3 * s / steps for s in secs[n]])
        rows.append(row)
        print(f'{arch} train {compile_mode:8s} {n:9s} {row["images_per_s"]:7.0f} img/s {row["ms_per_step"]:7.2f} '
              f'ms/step  {vit / med:.3f}x ViT  {kat / med:.3f}x KAT', flush=True)
    del runners
    torch._dynamo.reset()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('arch', choices=sorted(B.ARCHS))
    parser.add_argument('--compile', nargs='+', default=['eager', 'default'],
                        choices=['eager', 'default', 'reduce-overhead'], help='model settings (default: eager default)')
    parser.add_argument('--rounds', type=int, default=7, help='alternating timed rounds (the median is reported)')
    parser.add_argument('--steps', type=int, default=10, help='iterations per model and round')
    parser.add_argument('--no-op', action='store_true', help='skip the op timings')
    parser.add_argument('--out', metavar='FILE', help='data file the run is appended to')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error('needs a CUDA GPU')
    dev = torch.device('cuda')
    command, started = command_line(__file__, sys.argv[1:] if argv is None else argv), now()
    B.check_out(parser, args.out, BENCHMARK, dev)
    rows = [] if args.no_op else op_rows(OP_REPS)
    for compile_mode in args.compile:
        rows += model_rows(args.arch, compile_mode, args.rounds, args.steps, dev)
    if args.out:
        settings = dict(batch_size=BATCH, img_size=IMG_SIZE, dtype='bfloat16', rounds=args.rounds, steps=args.steps,
                        warmup=WARMUP, op_reps=OP_REPS)
        save_results(args.out, new_run(command, dev, date=started, settings=settings, rows=rows), BENCHMARK)
    return rows


if __name__ == '__main__':
    main()
