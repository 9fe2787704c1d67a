"""The tables of benchmarks/README.md, made from the data files in benchmarks/results/ (and, with --charts,
the charts drawn from them).

Every table of the README that holds measured figures sits between ``<!-- table:NAME -->`` and
``<!-- /table -->``; this script replaces what is between the two with the table NAME made from the data files
(mmkat/utils/results.py describes their format). tests/test_tools/test_benchmark.py checks that the README's
tables are what this script makes, so that a table cannot drift from its data.

    python benchmarks/make_tables.py            # rewrite the README's tables
    python benchmarks/make_tables.py --check    # exit 1 if a table differs from what the data files give
    python benchmarks/make_tables.py --charts   # also redraw docs/speed_h200.png and results/fmnist_*_curves.png
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
README = os.path.join(HERE, 'README.md')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import summarize_cls_runs  # noqa: E402  (no torch import: the tables are made without torch)

BLOCK = re.compile(r'(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)', re.S)
ARCHS = ('tiny', 'small', 'base')
SETTINGS = (('train', 'eager'), ('train', 'default'), ('train', 'reduce-overhead'), ('infer', 'eager'),
            ('infer', 'default'), ('infer', 'reduce-overhead'))
SETTING_NAMES = {'eager': 'eager', 'default': 'compiled', 'reduce-overhead': 'CUDA graphs'}


def load(name: str, results: str = RESULTS) -> dict:
    with open(os.path.join(results, name)) as f:
        return json.load(f)


def table(header, rows) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def span(values, digits=2, suffix='x') -> str:
    """'0.90x', or '0.83-0.86x' where the rounded values differ."""
    shown = sorted({round(v, digits) for v in values})
    if not shown:
        return ''
    text = [f'{v:.{digits}f}' for v in (shown[0], shown[-1])]
    return (text[0] if text[0] == text[1] else f'{text[0]}-{text[1]}') + suffix


# ------------------------------------------------------------------------------ model speed (tools/benchmark.py)
def speed_settings(results):
    """{(arch, mode, compile): [(kat row, vit row), ...]} over the speed runs and the decomposition runs (its
    'kat-safe' model is KAT as shipped), in file order; runs under the profiler (--profile) are left out."""
    found = {}
    runs = load('speed_h200.json', results)['runs'] + load('decomposition_h200.json', results)['runs']
    for run in runs:
        rows = run['rows']
        if any('kernel_ms' in r for r in rows):
            continue
        for row in rows:
            if row['model'] not in ('kat', 'kat-safe'):
                continue
            key = (row['arch'], row['mode'], row['compile'])
            twin = [r for r in rows if r['model'] == 'vit' and (r['arch'], r['mode'], r['compile']) == key]
            if twin:
                found.setdefault(key, []).append((row, twin[0]))
    return found


def speed_table(results) -> str:
    found = speed_settings(results)
    header = [''] + [f"{'train' if m == 'train' else 'inference'}, {SETTING_NAMES[c]}" for m, c in SETTINGS]
    header.append('training memory')
    rows = []
    for arch in ARCHS:
        cells = [arch]
        for mode, comp in SETTINGS:
            pairs = found.get((arch, mode, comp), [])
            ratios = span([k['images_per_s'] / v['images_per_s'] for k, v in pairs])
            cells.append(f"{pairs[0][0]['images_per_s']:,.0f}, **{ratios}**" if pairs else '')
        memory = [k['peak_mem_gib'] / v['peak_mem_gib'] for (a, m, _), pairs in found.items() if a == arch
                  and m == 'train' for k, v in pairs if 'peak_mem_gib' in k and 'peak_mem_gib' in v]
        cells.append(span(memory))
        rows.append(cells)
    return table(header, rows)


def timm_table(results) -> str:
    """timm's VisionTransformer over the twin, in every speed run that measured it."""
    columns, values = [], {}
    for run in load('speed_h200.json', results)['runs']:
        for row in run['rows']:
            if row['model'] != 'timm-vit':
                continue
            key = (row['mode'], row['compile'])
            twin = [r for r in run['rows'] if r['model'] == 'vit' and
                    (r['arch'], r['mode'], r['compile']) == (row['arch'],) + key]
            if key not in columns:
                columns.append(key)
            values.setdefault((row['arch'], key), []).append(row['images_per_s'] / twin[0]['images_per_s'])
    columns.sort(key=lambda k: SETTINGS.index(k))
    header = [''] + [f"{'train' if m == 'train' else 'inference'}, {SETTING_NAMES[c]}" for m, c in columns]
    return table(header, [[arch] + [span(values.get((arch, k), [])) for k in columns] for arch in ARCHS
                          if any((arch, k) in values for k in columns)])


def decomposition_table(results) -> str:
    rows = []
    for run in load('decomposition_h200.json', results)['runs']:
        by = {r['model']: r for r in run['rows']}
        vit = by['vit']
        cells = [by['vit']['arch'], by['vit']['mode'], f"{vit['images_per_s']:,.0f}"]
        for model in ('kat-safe', 'kat-direct'):
            r = by[model]
            cells.append(f"{r['images_per_s']:,.0f}, {r['images_per_s'] / vit['images_per_s']:.3f}x")
        rows.append(cells)
    return table(['arch', 'mode', 'GELU twin, images/s', 'KAT with the overflow handling (shipped)',
                  'KAT with the bare direct formula'], rows)


def speed_runs_table(results) -> str:
    rows = []
    for name in ('speed_h200.json', 'decomposition_h200.json'):
        for i, run in enumerate(load(name, results)['runs'], 1):
            settings = sorted({f"{r['arch']} {r['mode']} {r['compile']}" for r in run['rows']})
            rows.append([f'`{name}` #{i}', f"`{run['command']}`", run['date'] or '-', ', '.join(settings)])
    return table(['run', 'command', 'date', 'settings'], rows)


def profile_table(results) -> str:
    rows = []
    runs = load('speed_h200.json', results)['runs'] + load('profile_h100.json', results)['runs']
    for run in runs:
        for r in run['rows']:
            if 'kernel_ms' in r:
                act = f"{r['activation_kernel_ms']:.2f}" if 'activation_kernel_ms' in r else '-'
                rows.append([run['machine'], f"{r['arch']} {r['mode']} {r['compile']}", r['model'],
                             f"{r['kernel_ms']:.1f}", act,
                             f"{r['profile_wall_ms']:.1f}", f"{100 * r['gpu_busy']:.0f}%",
                             f"{r['ms_per_step']:.1f}"])
    return table(['machine', 'setting', 'model', 'kernel ms/step', 'activation kernels ms/step',
                  'wall ms/step (profiled)', 'GPU busy', 'ms/step (timed rounds)'], rows)


def host_table(results) -> str:
    rows = []
    for name in ('host_cuda_h200.json', 'host_cpu.json'):
        for i, run in enumerate(load(name, results)['runs'], 1):
            h, calls = run['host'], run['host']['call_us']
            fb = h.get('forward_backward_kat_over_vit')
            pair = ' / '.join
            fused = h.get('fused_adamw_kat_over_vit')
            opt = h.get('optimizer_step_ms')
            opt_cell = '-' if opt is None else ' / '.join(
                f"{opt[f'kat {o}'] / opt[f'vit {o}']:.2f}" for o in ('default', 'fused'))
            rows.append([f'`{name}` #{i}', f"{run['machine']}, {run['settings']['device']}",
                         f"{h['kat_over_vit']:.2f}", f'{fused:.2f}' if fused is not None else '-',
                         f'{fb:.2f}' if fb is not None else '-', opt_cell,
                         pair(f"{calls[f'{a} forward']:.1f}" for a in ('GroupRational', 'GELU')),
                         pair(f"{calls[f'{a} forward+backward']:.1f}" for a in ('GroupRational', 'GELU')),
                         pair(f"{calls[f'{a} forward, no grad']:.1f}" for a in ('GroupRational', 'GELU')),
                         pair(f"{calls[f'{a} forward+backward']:.1f}" for a in ('KAN', 'MLP'))
                         if 'KAN forward+backward' in calls else '-'])
    return table(['run', 'machine, tensors on', 'step KAT / ViT', 'step KAT / ViT, AdamW(fused=True)',
                  'forward + backward KAT / ViT', 'optimizer step KAT / ViT, AdamW / fused',
                  'forward us, GroupRational / GELU', 'forward + backward us', 'forward without grad us',
                  'block forward + backward us, KAN / MLP'], rows)


# ------------------------------------------------------------------------------ the op (tools/benchmark_op.py)
IMPL_NAMES = {'mmkat': '**mmkat**', 'compile': 'torch.compile(reference)', 'eager': 'eager reference'}


def op_run(results) -> dict:
    """The newest run of the op benchmark with the shipped kernels (the kernel-variant runs carry 'tuning')."""
    return [r for r in load('op_h200.json', results)['runs'] if not r.get('tuning')][-1]


def op_table(results) -> str:
    rows = []
    for r in op_run(results)['rows']:
        ms = r['ms']
        rows.append(['x'.join(map(str, r['shape'])), r['dtype'], IMPL_NAMES.get(r['impl'], r['impl']),
                     f"{ms['fwd']:.3f}", f"{ms['bwd']:.3f}", f"{ms['fwd_bwd']:.3f}", f"{r['floor_ms']['fwd_bwd']:.3f}",
                     f"{r['x_floor']:.2f}"])
    return table(['shape', 'dtype', 'impl', 'fwd ms', 'bwd ms', 'fwd+bwd ms', 'floor ms', 'x floor'], rows)


def fused_table(results) -> str:
    rows = [['x'.join(map(str, r['shape'])), r['dtype'], f"{r['ms']['gelu']:.3f}", f"{r['ms']['rational']:.3f}",
             f"{r['ms']['direct formula']:.3f}", f"{r['rational_over_gelu']:.2f}", f"{r['rational_over_direct']:.2f}"]
            for r in op_run(results)['fused_forward']]
    return table(['shape', 'dtype', 'GELU ms', 'group-rational ms', 'bare direct formula ms', 'rational / GELU',
                  'rational / direct'], rows)


def tuning_table(results) -> str:
    rows = []
    for run in load('op_h200.json', results)['runs']:
        t = run.get('tuning')
        if not t:
            continue
        cells = [t['label']]
        for dtype in ('fp32', 'bf16'):
            r = next(r for r in run['rows'] if r['impl'] == 'mmkat' and r['dtype'] == dtype and r['shape'][-1] == 1536)
            fb = f"{r['ms']['fwd_bwd']:.3f}"
            cells += [f"{r['ms']['fwd']:.3f}", f"{r['ms']['bwd']:.3f}",
                      f'({fb})' if dtype in (t.get('delayed') or ()) else fb]
        cells += [f"`{t['build']}`" if t['build'] else '', t['note'] or '']
        rows.append(cells)
    return table(['kernel', 'fp32 fwd', 'fp32 bwd', 'fp32 f+b', 'bf16 fwd', 'bf16 bwd', 'bf16 f+b', 'build setting',
                  'note'], rows)


# ------------------------------------------------------------------------------ Fashion-MNIST
def fmnist_rows(run) -> dict:
    """{row name: [runs with top1 {epoch (int): value}]}, as tools/summarize_cls_runs.py reads them."""
    return {name: [dict(r, top1={int(k): v for k, v in r['top1'].items()}) for r in row['runs']]
            for name, row in run['rows'].items()}


def fmnist_table(name, results) -> str:
    run = load(name, results)['runs'][-1]
    return summarize_cls_runs.summary_table({n: row['summary'] for n, row in run['rows'].items()})


def fmnist_seed_table(name, results) -> str:
    run = load(name, results)['runs'][-1]
    rows = [[n, r['seed'], f"{r['last']:.2f}", f"{r['best']:.2f}", f"{r['wall']['wall_s']:.0f}" if r['wall'] else '-',
             f"{r['median_step_s']:.3f}"] for n, row in run['rows'].items() for r in row['runs']]
    return table(['row', 'seed', 'final top-1', 'best top-1', 'wall s', 'median s/step'], rows)


def fmnist_epoch_table(name, results) -> str:
    return summarize_cls_runs.per_epoch_table(fmnist_rows(load(name, results)['runs'][-1]))


# ------------------------------------------------------------------------------ detection and segmentation
def config_table(task, results) -> str:
    rows = []
    for run in load('det_seg_h200.json', results)['runs']:
        s = run['settings']
        if s['task'] != task:
            continue
        base = next(r for r in run['rows'] if r['variant'] == 'gelu')
        for r in run['rows']:
            label = 'KAT-S (group-rational KAN)' if r['variant'] == 'kat' else 'ViT-S (GELU MLP)'
            rows.append([label, s['batch_size'], f"{r['params_m']:.1f} M / {r['backbone_params_m']:.1f} M",
                         f"{r['iters_per_s']:.2f}", f"{r['images_per_s']:.1f}", f"{r['ms_per_iter']:.0f}",
                         f"{r['images_per_s'] / base['images_per_s']:.2f}", f"{r['peak_mem_gib']:.1f} GiB"])
    model = 'detector' if task == 'det' else 'segmentor'
    return table(['backbone', 'images per GPU', f'params ({model} / backbone)', 'iters/s', 'images/s', 'ms/iter',
                  'vs ViT', 'peak memory'], rows)


def _metrics(task, entry) -> str:
    if task == 'det':
        return f"{entry['bbox_mAP']:.3f} / {entry['segm_mAP']:.3f}"
    if task == 'seg':
        return f"{entry['mIoU']:.1f}"
    return f"{entry['top1']:.2f}"


def demo_table(results) -> str:
    rows = []
    for name in ('demo_h200.json', 'dist_h200x2.json'):
        for run in load(name, results)['runs']:
            task, res = run['task'], run['result']
            where = ', '.join(f"{'epoch' if 'epoch' in v else 'iter'} {v.get('epoch', v.get('iter'))}: "
                              f'{_metrics(task, v)}' for v in res['val'])
            rows.append([task, run['machine'], f"`{run['command']}`",
                         f"{res['wall_s']:.0f}" if res['wall_s'] is not None else '-',
                         f"{res['loss_first']:.2f} -> {res['loss_last']:.2f}", where,
                         _metrics(task, res['test']) if res.get('test') else '-'])
    return table(['task', 'machine', 'command', 'wall s', 'loss (first -> last logged)',
                  'validation (bbox / segm mAP; mIoU; top-1)', 'test of the last checkpoint'], rows)


# ------------------------------------------------------------------------------ files, tests
def files_table(results) -> str:
    rows = []
    for name in sorted(os.listdir(results)):
        if not name.endswith('.json'):
            continue
        data = load(name, results)
        machines = sorted({r['machine'] or '-' for r in data['runs']})
        rows.append([f'`results/{name}`', data['benchmark'], ', '.join(machines), len(data['runs'])])
    return table(['data file', 'benchmark', 'machine', 'runs'], rows)


def tests_table(results) -> str:
    rows = []
    for run in load('pytest_h200.json', results)['runs']:
        command = f"`{run['command']}`" if run['command'] else run.get('selection', '-')
        rows.append([run['machine'], command, run['summary'], '; '.join(run['skipped']) or '-'])
    return table(['machine', 'command', 'summary', 'skipped'], rows)


# ------------------------------------------- the kernels before / after, side by side on one H100 (kernel_ab_h100)
def _ab_runs(results, tool):
    runs = [r for r in load('kernel_ab_h100.json', results)['runs'] if r['settings']['tool'] == tool]
    return tuple([r for r in runs if r['settings']['kernel'] == kernel] for kernel in ('before', 'after'))


def kernel_ab_op_table(results) -> str:
    before, after = _ab_runs(results, 'benchmark_op')
    rows = []
    for old, new in zip(before[0]['rows'], after[0]['rows']):
        shape = 'x'.join(map(str, old['shape']))
        rows.append([shape, old['dtype'], f"{old['ms']['fwd']:.3f} / {new['ms']['fwd']:.3f}",
                     f"{old['ms']['bwd']:.3f} / {new['ms']['bwd']:.3f}",
                     f"{old['ms']['fwd_bwd']:.3f} / {new['ms']['fwd_bwd']:.3f}", f"{old['floor_ms']['fwd_bwd']:.3f}",
                     f"{old['x_floor']:.2f} / **{new['x_floor']:.2f}**"])
    return table(['shape', 'dtype', 'fwd ms', 'bwd ms', 'fwd+bwd ms', 'floor ms', 'x floor'], rows)


def kernel_ab_speed_table(results) -> str:
    before, after = _ab_runs(results, 'benchmark')
    rows = []
    for old, new in zip(before, after):
        def ratio(run, mode, key='images_per_s'):
            by = {(r['model'], r['mode']): r for r in run['rows']}
            return by[('kat', mode)][key] / by[('vit', mode)][key]
        arch, compile_ = old['rows'][0]['arch'], old['rows'][0]['compile']
        rows.append([arch, compile_, f"{ratio(old, 'train'):.2f}x / **{ratio(new, 'train'):.2f}x**",
                     f"{ratio(old, 'infer'):.2f}x / **{ratio(new, 'infer'):.2f}x**",
                     f"{ratio(new, 'train', 'peak_mem_gib'):.2f}x"])
    return table(['arch', 'compile', 'train, KAT / twin', 'inference, KAT / twin', 'training memory'], rows)


# ------------------------- act1 -> fc1 as one recomputing op, before / after, side by side on one H100 (recompute_ab)
def recompute_ab_table(results) -> str:
    """KAT / twin images/s and peak training memory per setting: the runs of the code before the change and after
    it, alternated on one machine in one session; a setting measured only after the change shows '-' before."""
    found = {}
    for run in load('recompute_ab_h100.json', results)['runs']:
        variant = run['settings']['variant']
        for row in run['rows']:
            if row['model'] != 'kat':
                continue
            key = (row['arch'], row['mode'], row['compile'])
            twin = [r for r in run['rows'] if r['model'] == 'vit' and (r['arch'], r['mode'], r['compile']) == key]
            speed = row['images_per_s'] / twin[0]['images_per_s']
            mem = row['peak_mem_gib'] / twin[0]['peak_mem_gib'] if 'peak_mem_gib' in row else None
            found.setdefault(key, {})[variant] = (speed, mem)
    order = {a: i for i, a in enumerate(ARCHS)}
    rows = []
    for (arch, mode, comp), by in sorted(found.items(), key=lambda kv: (kv[0][2], kv[0][1] != 'train',
                                                                          order.get(kv[0][0], 9))):
        def cell(i, variant):
            value = by.get(variant, (None, None))[i]
            return '-' if value is None else f'{value:.2f}x'
        rows.append([arch, mode, SETTING_NAMES[comp], f"{cell(0, 'before')} / **{cell(0, 'after')}**",
                     f"{cell(1, 'before')} / **{cell(1, 'after')}**" if mode == 'train' else '-'])
    return table(['arch', 'mode', 'compile', 'images/s, KAT / twin (before / after)',
                  'peak training memory, KAT / twin (before / after)'], rows)


# --------------- compiled training, KATBlock's checkpointing of norm2 -> act1 -> fc1 off / on, pairs on one H100
def compiled_recompute_table(results) -> str:
    """Per pair of runs (off and on, one after the other on one machine): KAT / twin images/s and peak memory."""
    pairs = {}
    for run in load('compiled_recompute_h100.json', results)['runs']:
        by = {r['model']: r for r in run['rows']}
        kat, twin = by['kat'], by['vit']
        pairs.setdefault(run['settings']['pair'], {})[run['settings']['recompute']] = (
            kat['arch'], kat['images_per_s'] / twin['images_per_s'], kat['peak_mem_gib'] / twin['peak_mem_gib'])
    rows = []
    for pair, by in sorted(pairs.items()):
        arch = by[True][0]
        rows.append([arch, pair, f'{by[False][1]:.2f}x / **{by[True][1]:.2f}x**',
                     f'{by[False][2]:.2f}x / **{by[True][2]:.2f}x**'])
    return table(['arch', 'pair', 'images/s, KAT / twin (off / on)', 'peak training memory, KAT / twin (off / on)'],
                 rows)


# ---------------------------------------------- plain against ahead kernels, and the bias inside act2 (one H100)
def load_stages_table(results) -> str:
    rows = []
    for i, run in enumerate(load('load_stages_h100.json', results)['runs'], 1):
        for r in run['rows']:
            ms = r['ms']
            rows.append([i, run['settings']['kernels'], 'x'.join(map(str, r['shape'])), r['dtype'],
                         f"{ms['fwd']:.3f}", f"{ms['bwd']:.3f}", f"{ms['fwd_bwd']:.3f}",
                         f"{r['floor_ms']['fwd_bwd']:.3f}", f"{r['x_floor']:.2f}"])
    return table(['run', 'kernels', 'shape', 'dtype', 'fwd ms', 'bwd ms', 'fwd+bwd ms', 'fwd+bwd floor ms', 'x floor'],
                 rows)


def _fold_bias_rows(results, kind):
    """The rows of one kind ('op' or 'model') of every run of fold_bias_h100.json."""
    return [r for run in load('fold_bias_h100.json', results)['runs'] for r in run['rows'] if r['kind'] == kind]


def fold_bias_op_table(results) -> str:
    rows = [[r['shape'], r['dtype'], f"{r['backward_and_sum_ms']:.3f}", f"{r['bias_backward_ms']:.3f}",
             f"{r['bias_backward_ms'] / r['backward_and_sum_ms']:.2f}x", f"{r['forward_ms']:.3f}",
             f"{r['bias_forward_ms']:.3f}"] for r in _fold_bias_rows(results, 'op')]
    return table(['shape', 'dtype', 'backward + bias sum ms', 'bias backward ms', 'ratio', 'forward ms',
                  'bias forward ms'], rows)


def fold_bias_model_table(results) -> str:
    rows = [[r['arch'], SETTING_NAMES[r['compile']], r['model'], f"{r['ms_per_step']:.1f}",
             f"{min(r['ms_per_step_all']):.1f}-{max(r['ms_per_step_all']):.1f}", f"{r['vs_vit']:.3f}x"]
            for r in _fold_bias_rows(results, 'model')]
    return table(['arch', 'training', 'model', 'ms/step (median)', 'ms/step (rounds)', 'images/s vs twin'], rows)


TABLES = {
    'files': files_table,
    'speed': speed_table,
    'speed-timm': timm_table,
    'speed-runs': speed_runs_table,
    'speed-profile': profile_table,
    'decomposition': decomposition_table,
    'host': host_table,
    'recompute-ab-h100': recompute_ab_table,
    'compiled-recompute-h100': compiled_recompute_table,
    'fmnist-h200': lambda res: fmnist_table('fmnist_h200.json', res),
    'fmnist-h200-seeds': lambda res: fmnist_seed_table('fmnist_h200.json', res),
    'fmnist-h200-epochs': lambda res: fmnist_epoch_table('fmnist_h200.json', res),
    'fmnist-cpu': lambda res: fmnist_table('fmnist_cpu.json', res),
    'fmnist-cpu-seeds': lambda res: fmnist_seed_table('fmnist_cpu.json', res),
    'op-h200': op_table,
    'op-h200-fused': fused_table,
    'op-tuning': tuning_table,
    'det': lambda res: config_table('det', res),
    'seg': lambda res: config_table('seg', res),
    'demos': demo_table,
    'tests': tests_table,
    'kernel-ab-op': kernel_ab_op_table,
    'kernel-ab-speed': kernel_ab_speed_table,
    'load-stages-h100': load_stages_table,
    'fold-bias-op-h100': fold_bias_op_table,
    'fold-bias-model-h100': fold_bias_model_table,
}


def render(text: str, results: str = RESULTS) -> str:
    """``text`` with every marked table replaced by the one the data files give; ValueError for a marker of
    no known table, or a known table without its marker."""
    seen = []

    def replace(match):
        name = match.group(2)
        if name not in TABLES:
            raise ValueError(f'make_tables: no table named {name!r} (known: {", ".join(TABLES)})')
        seen.append(name)
        return f'{match.group(1)}{TABLES[name](results)}\n{match.group(4)}'

    out = BLOCK.sub(replace, text)
    missing = [n for n in TABLES if n not in seen]
    if missing:
        raise ValueError(f'make_tables: the README has no marker for {missing}')
    return out


def draw_charts(results: str = RESULTS):
    """docs/speed_h200.png (tools/benchmark.py's chart of the first run of each setting) and the Fashion-MNIST
    curves (tools/summarize_cls_runs.py's plot)."""
    import benchmark  # imports torch and mmkat
    parser = argparse.ArgumentParser()
    rows, runs = benchmark.read_speed_runs(parser, [os.path.join(results, 'speed_h200.json')])
    benchmark.draw_chart(rows, os.path.join(ROOT, 'docs', 'speed_h200.png'), benchmark.chart_title(runs[0]))
    for name in ('fmnist_h200', 'fmnist_cpu'):
        run = load(f'{name}.json', results)['runs'][-1]
        epochs = '/'.join(str(e) for e in run['settings']['epochs'])
        seeds = len(run['settings']['seeds'])
        path = os.path.join(results, f'{name}_curves.png')
        summarize_cls_runs.plot(fmnist_rows(run), path,
                                f"Fashion-MNIST, {run['machine']}, {epochs} epochs, {seeds} seeds (mean, range shaded)")
        print(f'wrote {path}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--check', action='store_true', help='change nothing; exit 1 if a table is out of date')
    parser.add_argument('--charts', action='store_true', help='also redraw the charts from the data files')
    parser.add_argument('--readme', default=README)
    parser.add_argument('--results', default=RESULTS)
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = render(text, args.results)
    if args.check:
        if new != text:
            sys.exit(f'make_tables: the tables of {args.readme} differ from the data files; run '
                     'python benchmarks/make_tables.py')
        print('make_tables: the tables are up to date')
    elif new != text:
        with open(args.readme, 'w') as f:
            f.write(new)
        print(f'make_tables: rewrote the tables of {args.readme}')
    if args.charts and not args.check:
        draw_charts(args.results)


if __name__ == '__main__':
    main()
