"""Benchmark the group-rational op: mmkat._C against the eager reference and torch.compile of the reference.

    python tools/benchmark_op.py                       # CUDA: [128,197,1536] and [128,197,384], fp32 + bf16
    python tools/benchmark_op.py --device cpu --shapes 8x197x384 --reps 5

For every shape, dtype and implementation it times forward, backward (dx and both coefficient gradients)
and forward+backward (through autograd), reports the median, and compares it with the memory-bandwidth
floor: the fewest bytes the pass must move (forward: read x, write y; backward: read x and dy, write dx)
over the device-to-device copy bandwidth measured on the same GPU. The table is printed; ``--out FILE``
appends the run (rows, settings, command, machine, versions, date) to the data file FILE
(mmkat/utils/results.py: one file per benchmark and machine, earlier runs kept, a file of another benchmark or
machine refused), e.g. ``--out benchmarks/results/op_h200.json``.

--fused-forward adds what torch.compile's inductor makes of a LayerNorm followed by the activation (no
grad, as in inference): GELU, the group-rational op (decomposed into its overflow-safe pointwise formula,
the default under torch.compile), and the bare direct formula P(x)/Q(|x|) without the overflow handling,
so the cost of that handling is measured, not guessed.
"""
import argparse
import platform
import statistics
import sys
import time

import torch

from mmkat.ops import extension_info, get_preset, group_rational_reference, group_rational_reference_backward

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    p.add_argument('--shapes', nargs='+', default=['128x197x1536', '128x197x384'], help='BxNxC shapes')
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=list(DTYPES))
    p.add_argument('--impls', nargs='+', default=['mmkat', 'compile', 'eager'],
                   help='mmkat (the compiled op), compile (torch.compile of the reference), eager (reference)')
    p.add_argument('--groups', type=int, default=8)
    p.add_argument('--reps', type=int, default=50, help='timed repetitions (median reported)')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--out', metavar='FILE',
                   help='data file the run is appended to (created if missing; earlier runs are kept)')
    p.add_argument('--build-label', metavar='TEXT',
                   help="what build of mmkat._C this is, recorded as the run's settings.kernels "
                        '(benchmarks/build_ab.py sets it)')
    p.add_argument('--markdown', action='store_true', help='also print the table in Markdown (for README)')
    p.add_argument('--fused-forward', action='store_true',
                   help='also time torch.compile(LayerNorm -> activation) for GELU, the op and its bare direct formula')
    return p.parse_args()


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_ms(fn, device, reps, warmup):
    """Median time of fn in ms. On CUDA: events around each call, calls queued back to back (so that the
    host's launch overhead overlaps the GPU work, as in training) and the L2 cache flushed before each."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type != 'cuda':
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    sync(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        model = platform.machine()
    return f'{model}, {torch.get_num_threads()} threads'


def copy_bandwidth(device, reps):
    """Bytes read + written per second by a large device-to-device copy (the practical ceiling)."""
    n = (1 << 30) if device.type == 'cuda' else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, reps, 3)
    return 2 * n / (ms * 1e-3)


def make_impls(args, groups):
    """Each implementation: (forward, backward, forward+backward) callables over (x, wn, wd, dy)."""
    op_f = torch.ops.mmkat.group_rational_forward if extension_info()['loaded'] else None
    op_b = torch.ops.mmkat.group_rational_backward if extension_info()['loaded'] else None

    def fwd_bwd(forward):

        def run(x, wn, wd, dy):
            y = forward(x, wn, wd, groups)
            return torch.autograd.grad(y, (x, wn, wd), dy)

        return run

    impls = {}
    if 'mmkat' in args.impls and op_f is not None:
        impls['mmkat'] = (lambda x, wn, wd, dy: op_f(x, wn, wd, groups),
                          lambda x, wn, wd, dy: op_b(dy, x, wn, wd, groups), fwd_bwd(op_f))
    if 'eager' in args.impls:
        impls['eager'] = (lambda x, wn, wd, dy: group_rational_reference(x, wn, wd, groups),
                          lambda x, wn, wd, dy: group_rational_reference_backward(dy, x, wn, wd, groups),
                          fwd_bwd(group_rational_reference))
    if 'compile' in args.impls:
        # No background compile workers: they would compete with the host side of the timed runs.
        torch._inductor.config.compile_threads = 1
        cf = torch.compile(group_rational_reference)
        cb = torch.compile(group_rational_reference_backward)
        impls['compile'] = (lambda x, wn, wd, dy: cf(x, wn, wd, groups), lambda x, wn, wd, dy: cb(
            dy, x, wn, wd, groups), fwd_bwd(cf))
    return impls


def make_inputs(shape, dtype, device, groups, num, den):
    """x (values of both signs) and dy, and swish coefficients with a little noise, all fixed by a seed."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, generator=gen).mul_(2).requires_grad_()
    dy = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    wn = torch.tensor([num], device=device).add_(0.01 * torch.randn(1, 6, device=device, generator=gen))
    wd = torch.tensor([den] * groups, device=device)
    wd = wd.add_(0.01 * torch.randn(wd.shape, device=device, generator=gen))
    return x, wn.requires_grad_(), wd.requires_grad_(), dy


def fused_forward_rows(args, device, num, den):
    """torch.compile(LayerNorm -> activation) forward times, no grad, for each shape and dtype."""
    import torch.nn.functional as F

    from mmkat.ops import group_rational, group_rational_direct
    torch._inductor.config.compile_threads = 1
    groups = args.groups
    acts = {
        'gelu': lambda v, wn, wd: F.gelu(v),
        'rational': lambda v, wn, wd: group_rational(v, wn, wd, groups, impl='compiled'),
        # P(x) / Q(|x|) alone: overflows to inf/NaN for |x| beyond ~1e7 in fp32
        'direct formula': lambda v, wn, wd: group_rational_direct(v, wn, wd, groups),
    }
    rows = []
    print('\ntorch.compile(LayerNorm -> activation), forward without grad:')
    names = ' '.join(f'{n + " ms":>16}' for n in acts)
    print(f'{"shape":>14} {"dtype":>5} | {names} | rational / gelu, / direct')
    for shape_s in args.shapes:
        shape = tuple(int(v) for v in shape_s.split('x'))
        for dname in args.dtypes:
            x, wn, wd, _ = make_inputs(shape, DTYPES[dname], device, groups, num, den)
            x, wn, wd = x.detach(), wn.detach(), wd.detach()
            weight = torch.ones(shape[-1], device=device, dtype=x.dtype)
            bias = torch.zeros(shape[-1], device=device, dtype=x.dtype)
            times = {}
            for name, act in acts.items():
                torch._dynamo.reset()
                fn = torch.compile(lambda v, act=act: act(F.layer_norm(v, (shape[-1], ), weight, bias), wn, wd))
                with torch.no_grad():
                    times[name] = median_ms(lambda: fn(x), device, args.reps, args.warmup)
            row = dict(shape=list(shape), dtype=dname, ms=times, rational_over_gelu=times['rational'] / times['gelu'],
                       rational_over_direct=times['rational'] / times['direct formula'])
            rows.append(row)
            print(f'{shape_s:>14} {dname:>5} | ' + ' '.join(f'{times[n]:16.3f}' for n in acts) +
                  f' | {row["rational_over_gelu"]:.2f}, {row["rational_over_direct"]:.2f}')
    return rows


IMPL_NAMES = {'mmkat': '**mmkat**', 'compile': 'torch.compile(reference)', 'eager': 'eager reference'}


def markdown_table(rows):
    lines = ['| shape | dtype | impl | fwd ms | bwd ms | fwd+bwd ms | floor ms | x floor |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        ms = r['ms']
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['dtype']} | {IMPL_NAMES.get(r['impl'], r['impl'])} | "
                     f"{ms['fwd']:.3f} | {ms['bwd']:.3f} | {ms['fwd_bwd']:.3f} | {r['floor_ms']['fwd_bwd']:.3f} | "
                     f"{r['x_floor']:.2f} |")
    return '\n'.join(lines)


BENCHMARK = 'tools/benchmark_op.py: the group-rational op against its bandwidth floor, the eager reference and ' \
    'torch.compile of the reference'


def main():
    args = parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_op: no CUDA GPU visible; use --device cpu')
    from mmkat.utils.results import (
        ResultsFileError,
        check_results_file,
        command_line,
        machine_name,
        new_run,
        now,
        save_results,
    )
    command, started = command_line(__file__, sys.argv[1:]), now()
    if args.out:  # refused before anything is measured
        try:
            check_results_file(args.out, BENCHMARK, machine_name(device))
        except (OSError, ResultsFileError) as e:
            raise SystemExit(f'benchmark_op: --out: {e}')
    info = extension_info()
    if device.type == 'cuda' and not info['with_cuda']:
        print(f'benchmark_op: mmkat._C has no CUDA kernels ({info}); the mmkat rows are skipped', file=sys.stderr)
        args.impls = [i for i in args.impls if i != 'mmkat']
    bandwidth = copy_bandwidth(device, 20)
    num, den = get_preset('swish')
    rows = []
    kernels = '' if device.type != 'cuda' else f", CUDA kernels: {info['cuda_build'] or 'default build'}"
    print(f'device: {device_name(device)}, '
          f'torch {torch.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s{kernels}')
    header = (f'{"shape":>14} {"dtype":>5} {"impl":>8} | {"fwd ms":>8} {"bwd ms":>8} {"f+b ms":>8} | '
              f'{"floor ms":>8} {"f+b GB/s":>9} {"x floor":>7}')
    print(header)
    print('-' * len(header))
    # Implementation by implementation, torch.compile last: compiling leaves host-side work behind that
    # would otherwise slow the host part of the rows measured after it.
    impls = make_impls(args, args.groups)
    for name in [i for i in ('mmkat', 'eager', 'compile') if i in impls]:
        f, b, fb = impls[name]
        for shape_s in args.shapes:
            shape = tuple(int(v) for v in shape_s.split('x'))
            for dname in args.dtypes:
                torch._dynamo.reset()
                x, wn, wd, dy = make_inputs(shape, DTYPES[dname], device, args.groups, num, den)
                elem = x.numel() * x.element_size()
                floor = {'fwd': 2 * elem / bandwidth * 1e3, 'bwd': 3 * elem / bandwidth * 1e3}
                floor['fwd_bwd'] = floor['fwd'] + floor['bwd']
                times = {}
                for key, fn in (('fwd', f), ('bwd', b), ('fwd_bwd', fb)):
                    with torch.no_grad() if key == 'fwd' else torch.enable_grad():
                        times[key] = median_ms(lambda: fn(x, wn, wd, dy), device, args.reps, args.warmup)
                gbs = 5 * elem / (times['fwd_bwd'] * 1e-3) / 1e9
                row = dict(shape=list(shape), dtype=dname, impl=name, ms=times, floor_ms=floor,
                           fwd_bwd_gbs=gbs, x_floor=times['fwd_bwd'] / floor['fwd_bwd'])
                rows.append(row)
                print(f'{shape_s:>14} {dname:>5} {name:>8} | {times["fwd"]:8.3f} {times["bwd"]:8.3f} '
                      f'{times["fwd_bwd"]:8.3f} | {floor["fwd_bwd"]:8.3f} {gbs:9.0f} {row["x_floor"]:7.2f}')
    rows.sort(key=lambda r: (-r['shape'][-1], r['dtype'] != 'fp32', ['mmkat', 'compile', 'eager'].index(r['impl'])))
    fused = fused_forward_rows(args, device, num, den) if args.fused_forward else None
    if args.markdown:
        print(markdown_table(rows))
    if args.out:
        settings = dict(device=device.type, threads=torch.get_num_threads() if device.type == 'cpu' else None,
                        shapes=args.shapes, dtypes=args.dtypes, impls=args.impls, groups=args.groups, reps=args.reps,
                        warmup=args.warmup)
        if args.build_label:
            settings['kernels'] = args.build_label
        run = new_run(command, device, date=started, settings=settings, copy_bandwidth_bytes_per_s=bandwidth,
                      rows=rows)
        if fused is not None:
            run['fused_forward'] = fused
        save_results(args.out, run, BENCHMARK)


if __name__ == '__main__':
    main()
