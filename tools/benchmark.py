"""Speed of KAT against the ViT of the same size, measured side by side in one process.

Models (``--models``): ``kat`` (the KAT backbone with the compiled group-rational op and a 1000-class
head), ``vit`` (the same backbone with ``mlp='gelu'``: the plain ViT that KAT is compared with) and
``timm-vit`` (timm's ``VisionTransformer`` of the same size, an outside reference). For every arch, mode
(``train``: forward, backward and an AdamW step under autocast; ``infer``: forward under inference mode
and autocast) and compile setting (``eager``, or a ``torch.compile`` mode: ``default``,
``reduce-overhead`` (CUDA graphs), ``max-autotune``), the models are built and warmed up one after the
other, then timed in alternating rounds: each round runs ``--steps`` iterations of every model in turn,
and the reported images/s is the median over ``--repeats`` rounds. Peak memory is what a model's
training iterations allocate (parameters, gradients, optimizer state and activations) on top of what was
allocated before it was built.

``--profile`` also runs each setting under torch.profiler and reports the summed GPU kernel time per
step against the wall time per step (a step whose wall time is well above its kernel time is waiting
for the host), and the kernel time of the activations (KAT's group-rational kernels, the twin's GELU).

``--host`` measures the host cost instead (one CPU thread; with ``--device cuda``, on tiny CUDA tensors): a
training step of a tiny KAT and its GELU twin (12 blocks of width 64, 5 tokens, batch 2), whose time is
all framework overhead, timed in alternating rounds with torch's default AdamW and with AdamW(fused=True);
and the host cost of one activation call (GELU vs GroupRational) on tiny tensors.

Prints Markdown tables; ``--out FILE`` appends the run (rows, settings, command, machine, versions, date) to
the data file FILE (mmkat/utils/results.py: one file per benchmark and machine, earlier runs kept, a file of
another benchmark or machine refused); ``--chart`` draws a PNG bar chart; ``--from-json`` prints the table
and draws the chart of recorded runs without measuring.

    python tools/benchmark.py --archs tiny small base --compile eager --out benchmarks/results/speed_h200.json
    python tools/benchmark.py --from-json benchmarks/results/speed_h200.json --chart docs/speed_h200.png
    python tools/benchmark.py --host --device cpu --out benchmarks/results/host_cpu.json
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

from mmkat.models import KAT
from mmkat.models.layers import KAN, GroupRational, Mlp
from mmkat.utils.results import (
    ResultsFileError,
    check_results_file,
    command_line,
    cpu_name,
    load_results,
    machine_name,
    new_run,
    now,
    save_results,
)

ARCHS = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}
MODELS = ('vit', 'kat', 'timm-vit')
COMPILE = ('eager', 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
NAMES = {'vit': 'ViT (mmkat, mlp=gelu)', 'kat': 'KAT (mmkat)', 'timm-vit': 'ViT (timm)'}


class Classifier(nn.Module):
    """A KAT backbone (cls-token output) with a linear head."""

    def __init__(self, backbone: nn.Module, dims: int, classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dims, classes)

    def forward(self, x):
        return self.head(self.backbone(x)[-1])


def build(kind: str, arch, img_size: int, patch_size: int = 16, classes: int = 1000,
          drop_path: float = 0.1, recompute: bool = True, fold_bias: bool = False) -> nn.Module:
    """``arch``: a name of ARCHS or dict(embed_dims, num_layers, num_heads); ``recompute`` and ``fold_bias``:
    KAT's ``rational=dict(recompute=..., fold_bias=...)``."""
    if isinstance(arch, str):
        dims, heads = ARCHS[arch]
        depth = 12
    else:
        dims, depth, heads = arch['embed_dims'], arch['num_layers'], arch['num_heads']
    if kind == 'timm-vit':
        from timm.models.vision_transformer import VisionTransformer
        return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dims, depth=depth,
                                 num_heads=heads, num_classes=classes, drop_path_rate=drop_path)
    if kind not in ('kat', 'vit'):
        raise ValueError(f'unknown model {kind!r}; expected one of {MODELS}')
    backbone_arch = arch if isinstance(arch, str) else dict(arch, mlp_ratio=4)
    backbone = KAT(backbone_arch, img_size=img_size, patch_size=patch_size, mlp='kan' if kind == 'kat' else 'gelu',
                   drop_path_rate=drop_path,
                   rational=dict(recompute=recompute, fold_bias=fold_bias) if kind == 'kat' else None)
    return Classifier(backbone, dims, classes)


class Runner:
    """One model in one setting: ``step()`` runs one training or inference iteration."""

    def __init__(self, model, mode, compile_mode, batch, img_size, device, dtype, classes=1000, fused_adamw=False):
        self.model = model.to(device).train(mode == 'train')
        self.mode, self.compile_mode, self.device, self.dtype = mode, compile_mode, device, dtype
        self.images = torch.randn(batch, 3, img_size, img_size, device=device)
        self.labels = torch.randint(0, classes, (batch, ), device=device)
        self.fn = self.model
        if compile_mode != 'eager':
            self.fn = torch.compile(self.model, mode=None if compile_mode == 'default' else compile_mode)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05,
                                           fused=fused_adamw or None) \
            if mode == 'train' else None
        self.loss_fn = nn.CrossEntropyLoss()
        self.cudagraphs = compile_mode in ('reduce-overhead', 'max-autotune')

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def step(self):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.mode == 'infer':
            with torch.inference_mode(), self.autocast():
                return self.fn(self.images)
        with self.autocast():
            loss = self.loss_fn(self.fn(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(runner: Runner, steps: int) -> float:
    """Seconds for ``steps`` iterations (CUDA events on a GPU, the host clock on the CPU)."""
    if runner.device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            runner.step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return time.perf_counter() - t0


ACTIVATION_KERNELS = ('mmkat::', 'gelu')


def is_activation_kernel(name: str) -> bool:
    """Whether a GPU kernel computes an MLP activation: mmkat's group-rational kernels (namespace mmkat), or a
    GELU (ATen's kernels; inductor's fused kernels are named after their aten ops, so a fused GELU counts whole,
    while KAT's rational forward, decomposed into plain arithmetic under torch.compile, is not recognised
    there)."""
    name = name.lower()
    return any(k in name for k in ACTIVATION_KERNELS)


def profile_steps(runner: Runner, steps: int, top: int = 0) -> dict:
    """GPU kernel time per step (summed over kernels, and the union of their intervals) against the wall
    time per step, under torch.profiler, and the part of it in activation kernels (``is_activation_kernel``);
    with ``top``, the kernels that take the most time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == 'cuda' else [])
    sync(runner.device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        sync(runner.device)
        wall = time.perf_counter() - t0
    # Not the ranges mirrored on the GPU (user annotations, 'Optimizer.step#AdamW.step'); kernel names may hold
    # '#' too ('{lambda()#1}'), but never without a space.
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA
               and not getattr(e, 'is_user_annotation', False) and not ('#' in e.name and ' ' not in e.name)]
    total_us = sum(e.time_range.elapsed_us() for e in kernels)
    busy_us, end = 0., float('-inf')
    for e in sorted(kernels, key=lambda e: e.time_range.start):
        start, stop = max(e.time_range.start, end), e.time_range.end
        if stop > start:
            busy_us += stop - start
        end = max(end, stop)
    span_us = (max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)) if kernels else 0.
    act_us = sum(e.time_range.elapsed_us() for e in kernels if is_activation_kernel(e.name))
    result = dict(profile_wall_ms=1e3 * wall / steps, kernel_ms=total_us / 1e3 / steps,
                  activation_kernel_ms=act_us / 1e3 / steps, gpu_busy=busy_us / span_us if span_us else float('nan'))
    if top:
        by_name = {}
        for e in kernels:
            by_name[e.name] = by_name.get(e.name, 0.) + e.time_range.elapsed_us()
        result['top_kernels_ms'] = {k[:90]: v / 1e3 / steps
                                    for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]}
    return result


def run_group(args, arch, mode, compile_mode, device, dtype) -> list:
    """Build, warm up and measure every model of one (arch, mode, compile) setting; time them in rounds."""
    runners, rows = [], []
    for kind in args.models:
        torch.manual_seed(0)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
        model = build(kind, arch, args.img_size, recompute=not args.no_recompute, fold_bias=args.fold_bias)
        params = sum(p.numel() for p in model.parameters())
        runner = Runner(model, mode, compile_mode, args.batch_size, args.img_size, device, dtype)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            runner.step()
        sync(device)
        warmup_s = time.perf_counter() - t0
        row = dict(arch=arch if isinstance(arch, str) else 'custom', model=kind, mode=mode, compile=compile_mode,
                   params=params, warmup_s=warmup_s)
        # Inference peaks are too small to tell apart; under CUDA graphs the graphs' memory pool is allocated
        # during warm-up, before this window, so no peak is reported for those modes.
        if device.type == 'cuda' and mode == 'train' and not runner.cudagraphs:
            torch.cuda.reset_peak_memory_stats(device)
            time_steps(runner, 2)
            row['peak_mem_gib'] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        if args.profile:
            row.update(profile_steps(runner, args.steps, args.top_kernels))
        runners.append(runner)
        rows.append(row)
    seconds = [[] for _ in runners]
    for _ in range(args.repeats):
        for i, runner in enumerate(runners):
            seconds[i].append(time_steps(runner, args.steps))
    for row, secs in zip(rows, seconds):
        med = statistics.median(secs)
        row.update(images_per_s=args.batch_size * args.steps / med, ms_per_step=1e3 * med / args.steps,
                   ms_per_step_all=[1e3 * s / args.steps for s in secs])
        print(f"{row['arch']:5s} {mode:5s} {compile_mode:15s} {row['model']:8s} {row['images_per_s']:9.1f} img/s"
              + (f"  kernel {row['kernel_ms']:.1f} (activations {row['activation_kernel_ms']:.2f}) / wall "
                 f"{row['profile_wall_ms']:.1f} ms" if args.profile else ''),
              flush=True)
    del runners
    torch._dynamo.reset()
    return rows


def ratio(rows, row, key='images_per_s', ref='vit'):
    """``row[key]`` over the reference model's in the same setting (and the same recorded run, for rows read
    by --from-json, which carry the index of their run)."""
    keys = ('arch', 'mode', 'compile', 'run')
    base = [r for r in rows if r['model'] == ref and all(r.get(k) == row.get(k) for k in keys)]
    return row[key] / base[0][key] if base and base[0].get(key) else float('nan')


def print_table(rows, profile):
    cols = '| arch | mode | compile | model | params | images/s | vs ViT | ms/step | peak GiB | mem vs ViT |'
    extra = (' kernel ms/step | activation kernels ms/step | wall ms/step (profiled) | GPU busy (kernel span) |'
             if profile else '')
    print('\n' + cols + extra)
    print('|' + '---|' * (cols.count('|') - 1 + extra.count('|')))
    for r in rows:
        # no peak memory on the CPU, for inference, or under CUDA graphs: '-' (not measured), not a number
        mem = f"{r['peak_mem_gib']:.2f} | {ratio(rows, r, 'peak_mem_gib'):.2f}" if 'peak_mem_gib' in r else '- | -'
        line = (f"| {r['arch']} | {r['mode']} | {r['compile']} | {NAMES[r['model']]} | {r['params'] / 1e6:.2f} M | "
                f"{r['images_per_s']:.0f} | {ratio(rows, r):.2f} | {r['ms_per_step']:.2f} | {mem} |")
        if profile and 'kernel_ms' in r:
            act = f"{r['activation_kernel_ms']:.2f}" if 'activation_kernel_ms' in r else '-'
            line += f" {r['kernel_ms']:.2f} | {act} | {r['profile_wall_ms']:.2f} | {100 * r['gpu_busy']:.0f}% |"
        elif profile:  # a run without the profiler, shown beside profiled ones (--from-json)
            line += ' - | - | - | - |'
        print(line)
    for r in rows:
        if r.get('top_kernels_ms'):
            print(f"\n{r['arch']} {r['mode']} {r['compile']} {r['model']}: costliest kernels, ms/step")
            for name, ms in r['top_kernels_ms'].items():
                print(f'  {ms:7.3f}  {name}')


def draw_chart(rows, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    settings = []
    for r in rows:
        key = (r['mode'], r['compile'])
        if key not in settings:
            settings.append(key)
    archs = [a for a in ARCHS if any(r['arch'] == a for r in rows)] or sorted({r['arch'] for r in rows})
    models = [m for m in MODELS if any(r['model'] == m for r in rows)]
    colors = {'vit': '#8c8c8c', 'kat': '#d62728', 'timm-vit': '#1f77b4'}
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4.2), squeeze=False)
    width = 0.8 / len(models)
    for ax, (mode, comp) in zip(axes[0], settings):
        for j, m in enumerate(models):
            xs, ys, labels = [], [], []
            for i, a in enumerate(archs):
                match = [r for r in rows if (r['arch'], r['model'], r['mode'], r['compile']) == (a, m, mode, comp)]
                if match:
                    xs.append(i + (j - (len(models) - 1) / 2) * width)
                    ys.append(match[0]['images_per_s'])
                    labels.append(f'{ratio(rows, match[0]):.2f}x')
            bars = ax.bar(xs, ys, width, label=NAMES[m], color=colors[m])
            if m != 'vit':
                for bar, label in zip(bars, labels):
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha='center',
                            va='bottom', fontsize=7)
        ax.set_xticks(range(len(archs)))
        ax.set_xticklabels(archs)
        ax.set_title(f"{ {'train': 'training', 'infer': 'inference'}[mode]}, "
                     f"{'eager' if comp == 'eager' else 'torch.compile' + ('' if comp == 'default' else f' ({comp})')}")
        ax.set_ylabel('images/s')
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f'wrote {path}')


# --------------------------------------------------------------------------------------------- host mode
def host_costs(args, device) -> dict:
    """The tiny host-bound training step (alternating rounds) and per-call costs, on one CPU thread or on
    tiny CUDA tensors (kernel time negligible: what is measured is the host's work). The step is timed with
    torch's default AdamW (on the CPU a Python loop over the parameters, whose cost grows with their number:
    KAT has 4 more, small, tensors per block than its twin) and with AdamW(fused=True) (one call for all)."""
    torch.set_num_threads(1)
    arch = dict(embed_dims=64, num_layers=12, num_heads=2)
    dtype = torch.float32
    runners = {}
    for optimizer in ('default', 'fused'):
        for kind in ('vit', 'kat'):
            torch.manual_seed(0)
            runner = Runner(build(kind, arch, img_size=8, patch_size=4, classes=10), 'train', 'eager', 2, 8, device,
                            dtype, classes=10, fused_adamw=optimizer == 'fused')
            for _ in range(args.warmup):
                runner.step()
            runners[kind, optimizer] = runner

    def forward_backward(runner):  # the step without the optimizer: what the model itself costs
        with runner.autocast():
            loss = runner.loss_fn(runner.fn(runner.images), runner.labels)
        runner.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    times = {k: [] for k in runners}
    fb_times = {k: [] for k in ('vit', 'kat')}
    for _ in range(args.repeats):
        for (kind, optimizer), runner in runners.items():
            times[kind, optimizer].append(1e3 * time_steps(runner, args.steps) / args.steps)
            if optimizer != 'default':
                continue
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                forward_backward(runner)
            sync(device)
            fb_times[kind].append(1e3 * (time.perf_counter() - t0) / args.steps)
    # The optimizer step alone (the gradients of the last step in place): its cost grows with the number of
    # parameter tensors, which the model's own forward and backward do not show.
    opt_times = {k: [] for k in runners}
    for _ in range(args.repeats):
        for key, runner in runners.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                runner.optimizer.step()
            sync(device)
            opt_times[key].append(1e3 * (time.perf_counter() - t0) / args.steps)
    opt = {f'{kind} {optimizer}': statistics.median(v) for (kind, optimizer), v in opt_times.items()}
    step = {k: statistics.median(times[k, 'default']) for k in ('vit', 'kat')}
    fused_step = {k: statistics.median(times[k, 'fused']) for k in ('vit', 'kat')}
    fb = {k: statistics.median(v) for k, v in fb_times.items()}

    # Each call: (module, input, output gradient). The activations on 256 channels; a whole channel mixer of the
    # step's width, the twin's MLP (fc1, GELU, fc2) and KAT's KAN block.
    x = torch.randn(2, 5, 256, device=device, requires_grad=True)
    dy = torch.randn(2, 5, 256, device=device)
    torch.manual_seed(0)
    xb = torch.randn(2, 5, 64, device=device, requires_grad=True)
    dyb = torch.randn(2, 5, 64, device=device)
    cases = {'GELU': (nn.GELU(), x, dy),
             'GroupRational': (GroupRational(8, 'swish', num_channels=256).to(device), x, dy),
             'MLP': (Mlp(64, 256).to(device), xb, dyb), 'KAN': (KAN(64, 256).to(device), xb, dyb)}

    def per_call_us(fn, calls=2000):
        best = float('inf')
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        return best

    calls = {}
    for name, (act, xi, dyi) in cases.items():
        calls[f'{name} forward'] = per_call_us(lambda: act(xi))
        calls[f'{name} forward+backward'] = per_call_us(lambda: act(xi).backward(dyi))
        with torch.no_grad():
            calls[f'{name} forward, no grad'] = per_call_us(lambda: act(xi))
    where = 'CPU, 1 thread' if device.type == 'cpu' else f'{device.type}, tiny tensors'
    print(f'\n| host-bound training step ({where}) | ms/step, AdamW (median) | ms/step, AdamW(fused=True) |'
          '\n|---|---|---|')
    for kind in ('vit', 'kat'):
        print(f'| {NAMES[kind]} | {step[kind]:.2f} | {fused_step[kind]:.2f} |')
    print(f"| KAT / ViT | {step['kat'] / step['vit']:.3f} | {fused_step['kat'] / fused_step['vit']:.3f} |")
    print(f"| KAT / ViT, forward + backward only (no optimizer step) | {fb['kat'] / fb['vit']:.3f} | |")
    print(f"| KAT / ViT, optimizer step only | {opt['kat default'] / opt['vit default']:.3f} "
          f"({opt['kat default']:.2f} / {opt['vit default']:.2f} ms) | {opt['kat fused'] / opt['vit fused']:.3f} "
          f"({opt['kat fused']:.2f} / {opt['vit fused']:.2f} ms) |")
    print(f'\n| call (2 x 5 x 256; MLP and KAN blocks 2 x 5 x 64, {device.type}) | host us (best of 3 x 2000) |'
          '\n|---|---|')
    for name, us in calls.items():
        print(f'| {name} | {us:.1f} |')
    return dict(step_ms=step, step_ms_all={k: times[k, 'default'] for k in ('vit', 'kat')},
                kat_over_vit=step['kat'] / step['vit'], fused_adamw_step_ms=fused_step,
                fused_adamw_kat_over_vit=fused_step['kat'] / fused_step['vit'], forward_backward_ms=fb,
                forward_backward_kat_over_vit=fb['kat'] / fb['vit'], optimizer_step_ms=opt,
                parameter_tensors={k: sum(1 for _ in runners[k, 'default'].model.parameters()) for k in ('vit', 'kat')},
                call_us=calls)


# ------------------------------------------------------------------------------------------ result files
SPEED_BENCHMARK = 'tools/benchmark.py: images/s and peak training memory of KAT against the same-size ViT'
HOST_BENCHMARK = 'tools/benchmark.py --host: host cost of a tiny training step and of one activation call'


def check_out(parser, path, benchmark, device):
    """Refuse an --out file that the run could not be appended to before measuring anything."""
    if path:
        try:
            check_results_file(path, benchmark, machine_name(device))
        except (OSError, ResultsFileError) as e:
            parser.error(f'--out: {e}')


def save(parser, path, run, benchmark):
    try:
        save_results(path, run, benchmark)
    except (OSError, ResultsFileError) as e:
        parser.error(f'--out: {e}')


def read_speed_runs(parser, paths):
    """The rows of every speed run in the data files ``paths``, each tagged with its run's index (for
    :func:`ratio`), and the runs."""
    rows, runs = [], []
    for path in paths:
        try:
            data = load_results(path)
        except (OSError, ResultsFileError) as e:
            parser.error(f'--from-json: {e}')
        if data['benchmark'] != SPEED_BENCHMARK:
            parser.error(f'--from-json: {path} holds runs of {data["benchmark"]!r}, not of {SPEED_BENCHMARK!r}')
        for run in data['runs']:
            rows += [dict(r, run=len(runs)) for r in run['rows']]
            runs.append(run)
    if not runs:
        parser.error('--from-json: the files hold no runs')
    return rows, runs


def chart_title(run) -> str:
    s, torch_version = run['settings'], (run['versions'] or {}).get('torch') or '?'
    return (f"{run['machine']}, batch {s['batch_size']}, {s['img_size']} px, {s['dtype']} autocast, "
            f"torch {torch_version.split('+')[0]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--archs', nargs='+', default=['tiny', 'small', 'base'], choices=sorted(ARCHS),
                        metavar='ARCH', help='model sizes: tiny small base (default: all three)')
    parser.add_argument('--models', nargs='+', default=['vit', 'kat', 'timm-vit'], choices=MODELS, metavar='MODEL',
                        help="kat, vit (KAT with mlp='gelu', the twin) and timm-vit (default: all three)")
    parser.add_argument('--modes', nargs='+', default=['train', 'infer'], choices=['train', 'infer'],
                        help='train (forward, backward, AdamW step) and/or infer (default: both)')
    parser.add_argument('--compile', nargs='+', default=['eager', 'default'], choices=COMPILE, metavar='MODE',
                        help=f'eager and/or torch.compile modes, of {list(COMPILE)} (default: eager default)')
    parser.add_argument('--batch-size', type=int, default=128, help='images per step (default 128)')
    parser.add_argument('--img-size', type=int, default=224, help='square input size in pixels (default 224)')
    parser.add_argument('--steps', type=int, default=10, help='iterations per timed round')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds (the median is reported)')
    parser.add_argument('--warmup', type=int, default=5, help='iterations before timing (compilation included)')
    parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float16', 'float32'],
                        help='autocast dtype; float32 runs without autocast (default bfloat16)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cuda or cpu (default: cuda when a GPU is visible)')
    parser.add_argument('--no-recompute', action='store_true',
                        help="KAT with rational=dict(recompute=False): act1's output kept for backward")
    parser.add_argument('--fold-bias', action='store_true',
                        help="KAT with rational=dict(fold_bias=True): fc1's bias added inside act2")
    parser.add_argument('--build-label', metavar='TEXT',
                        help="what build of mmkat._C this is, recorded as the run's settings.kernels "
                             '(benchmarks/build_ab.py sets it)')
    parser.add_argument('--profile', action='store_true', help='also report GPU kernel time vs wall time per step')
    parser.add_argument('--top-kernels', type=int, default=0, help='with --profile: list the N costliest kernels')
    parser.add_argument('--host', action='store_true', help='measure host overhead on the CPU instead')
    parser.add_argument('--out', metavar='FILE',
                        help='data file the run is appended to (created if missing; earlier runs are kept)')
    parser.add_argument('--chart', help='PNG bar chart of images/s')
    parser.add_argument('--from-json', nargs='+', metavar='FILE',
                        help='measure nothing: print the table (and draw --chart) of the runs recorded in data '
                        'files written by --out; the chart shows the first run of each setting')
    args = parser.parse_args(argv)
    if args.from_json:
        rows, runs = read_speed_runs(parser, args.from_json)
        print_table(rows, any('kernel_ms' in r for r in rows))
        if args.chart:
            draw_chart(rows, args.chart, chart_title(runs[0]))
        return rows
    for name in ('batch_size', 'img_size', 'steps', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')

    command, started = command_line(__file__, sys.argv[1:] if argv is None else argv), now()
    settings = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
    if args.host:
        device = torch.device(args.device if args.device != 'cuda' or torch.cuda.is_available() else 'cpu')
        check_out(parser, args.out, HOST_BENCHMARK, device)
        result = host_costs(args, device)
        if args.out:
            save(parser, args.out, new_run(command, device, date=started, cpu=cpu_name(),
                                           settings=dict(settings, device=device.type, threads=1), host=result),
                 HOST_BENCHMARK)
        return result

    device = torch.device(args.device)
    if device.type == 'cpu' and any(c in ('reduce-overhead', 'max-autotune') for c in args.compile):
        parser.error('CUDA graphs (reduce-overhead / max-autotune) need a CUDA device')
    check_out(parser, args.out, SPEED_BENCHMARK, device)
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for compile_mode in args.compile:
        for mode in args.modes:
            for arch in args.archs:
                rows += run_group(args, arch, mode, compile_mode, device, dtype)
    print_table(rows, args.profile)
    run = new_run(command, device, date=started, rows=rows,
                  settings=dict(settings, device=device.type, batch_size=args.batch_size, img_size=args.img_size,
                                dtype=args.dtype, **({'recompute': False} if args.no_recompute else {}),
                                **({'fold_bias': True} if args.fold_bias else {}),
                                **({'kernels': args.build_label} if args.build_label else {})))
    if args.out:
        save(parser, args.out, run, SPEED_BENCHMARK)
    if args.chart:
        draw_chart(rows, args.chart, chart_title(run))
    return rows


if __name__ == '__main__':
    main()
