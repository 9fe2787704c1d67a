"""Table (and plot) of repeated classification runs from their mmengine logs.

Each argument names one row and its runs: ``NAME=RUN[,RUN...]``, where a RUN is a work dir of
``tools/train.py`` (its newest ``*/vis_data/scalars.json`` is read, with ``wall.txt`` from
``benchmarks/fmnist_seeds.sh`` and the dumped config when present) or a ``scalars.json`` file; shell
patterns are expanded. Per row: how many runs, how many completed their schedule (validated at the
config's last epoch), mean +/- sample std over runs of the final and of the best top-1, mean wall time
and median step time. Prints Markdown; ``--plot`` draws a PNG of the per-epoch curves (the mean over runs,
with the range of the runs shaded).

``--out FILE`` appends the table, with every run's per-epoch top-1, as one run to the data file FILE
(mmkat/utils/results.py: earlier runs kept, a file of another benchmark or machine refused). Its command is
``--command`` or the ``command.txt`` that ``benchmarks/fmnist_seeds.sh`` writes beside the work dirs; its
machine ``--machine`` or the GPU that the runs' logs name; its versions and date are those the runs' mmengine
logs record (null where they record none).

    python tools/summarize_cls_runs.py 'KAT-T=work/kat_t_fmnist_seed*' 'ViT-T=work/vit_t_fmnist_seed*' \\
        --out benchmarks/results/fmnist_h200.json --plot curves.png [--require-complete] [--per-epoch]
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys
from typing import Dict, List, Optional

BENCHMARK = 'tools/summarize_cls_runs.py: top-1 of repeated classification runs'


def fail(message: str):
    sys.exit(f'summarize_cls_runs: {message}')


def read_scalars(path: str) -> dict:
    top1, step_times, data_times = {}, [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f'{path}:{number} is not JSON ({e}); expected an mmengine vis_data/scalars.json')
            if 'accuracy/top1' in entry:
                top1[int(entry['step'])] = float(entry['accuracy/top1'])
            elif 'time' in entry and 'loss' in entry:
                step_times.append(float(entry['time']))
                data_times.append(float(entry.get('data_time', 0.0)))
    if not top1:
        fail(f'{path} holds no accuracy/top1 entries (did the run validate?)')
    return dict(top1=top1, median_step_s=statistics.median(step_times) if step_times else None,
                median_data_s=statistics.median(data_times) if data_times else None)


def _max_epochs(work_dir: str) -> Optional[int]:
    """train_cfg.max_epochs of the config that mmengine dumped into the work dir, if one is there."""
    for path in sorted(glob.glob(os.path.join(work_dir, '*.py'))):
        with open(path) as f:
            text = f.read()
        match = re.search(r'train_cfg\s*=\s*dict\((.*?)\)\n', text, re.S)
        found = re.search(r'max_epochs\s*=\s*(\d+)', match.group(1)) if match else None
        if found:
            return int(found.group(1))
    return None


def _wall(work_dir: str) -> Optional[dict]:
    path = os.path.join(work_dir, 'wall.txt')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        fields = dict(item.split('=', 1) for item in f.read().split() if '=' in item)
    return dict(rc=int(fields['rc']), wall_s=float(fields['wall_s'])) if 'rc' in fields else None


def read_run(path: str) -> dict:
    """One run from its work dir or scalars.json."""
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, '*', 'vis_data', 'scalars.json')))
        if not found:
            fail(f'{path} holds no */vis_data/scalars.json (is it a tools/train.py work dir?)')
        run = read_scalars(found[-1])
        run.update(path=path, max_epochs=_max_epochs(path), wall=_wall(path))
    elif os.path.isfile(path):
        run = read_scalars(path)
        run.update(path=path, max_epochs=None, wall=None)
    else:
        fail(f'no such file or work dir: {path}')
    run['epochs'] = max(run['top1'])
    run['last'] = run['top1'][run['epochs']]
    run['best'] = max(run['top1'].values())
    wall = run['wall']
    # None when neither the dumped config nor wall.txt tell (a bare scalars.json)
    known = [run['epochs'] == run['max_epochs']] if run['max_epochs'] is not None else []
    known += [wall['rc'] == 0] if wall is not None else []
    run['complete'] = all(known) if known else None
    return run


def _log_environment(work_dir: str) -> Optional[dict]:
    """What the newest mmengine log of a work dir records of its machine and versions."""
    logs = sorted(glob.glob(os.path.join(work_dir, '*', '*.log')))
    if not logs:
        return None
    with open(logs[-1], errors='replace') as f:
        text = f.read(200_000)

    def field(name):
        found = re.search(rf'^\s+{re.escape(name)}: (\S+)', text, re.M)
        return found.group(1) if found else None

    torch_version, gpu = field('PyTorch'), re.search(r'^\s+GPU ([\d,]+): (.+)$', text, re.M)
    cuda = re.search(r'\+cu(\d+)(\d)$', torch_version or '')
    found = re.search(r'^\s+- CUDA Runtime (\S+)', text, re.M)
    return dict(machine=(gpu.group(2).strip() if ',' not in gpu.group(1) else
                         f'{len(gpu.group(1).split(","))} x {gpu.group(2).strip()}') if gpu else None,
                versions=dict(python=field('Python'), torch=torch_version,
                              cuda=f'{cuda.group(1)}.{cuda.group(2)}' if cuda else found and found.group(1),
                              mmkat=None, mmkat_commit=None, extension=None, torchvision=field('TorchVision'),
                              mmengine=field('MMEngine')),
                date=_stamp_date(os.path.basename(os.path.dirname(logs[-1]))))


def _stamp_date(stamp: str) -> Optional[str]:
    """mmengine's time-stamp folder name (20261201_200127) as ISO 8601."""
    found = re.fullmatch(r'(\d{4})(\d\d)(\d\d)_(\d\d)(\d\d)(\d\d)', stamp)
    return '{}-{}-{}T{}:{}:{}'.format(*found.groups()) if found else None


def _wall_fields(work_dir: str) -> dict:
    path = os.path.join(work_dir, 'wall.txt')
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return dict(item.split('=', 1) for item in f.read().split() if '=' in item)


def data_file_run(rows: Dict[str, List[dict]], summaries: dict, args, argv) -> dict:
    """The run that --out appends: the table and every run's figures, with command, machine, versions, date."""
    from mmkat.utils.results import command_line
    paths = [r['path'] for runs in rows.values() for r in runs]
    envs = [e for e in (_log_environment(p) for p in paths if os.path.isdir(p)) if e is not None]
    env = envs[0] if envs else dict(machine=None, versions=None, date=None)
    if any(e['versions'] != env['versions'] or e['machine'] != env['machine'] for e in envs):
        print('summarize_cls_runs: the runs\' logs name different machines or versions; recording the first run\'s',
              file=sys.stderr)
    command = args.command
    if command is None:
        found = os.path.join(os.path.dirname(os.path.abspath(paths[0])), 'command.txt')
        if os.path.isfile(found):
            with open(found) as f:
                lines = [line.strip() for line in f if line.strip()]
            command = lines[-1] if lines else None
    dates = sorted(e['date'] for e in envs if e['date'])
    table = {}
    for name, runs in rows.items():
        fields = [_wall_fields(r['path']) if os.path.isdir(r['path']) else {} for r in runs]
        configs = {f.get('config') for f in fields}
        table[name] = dict(
            config=configs.pop() if len(configs) == 1 else None, summary=summaries[name],
            runs=[dict(run=os.path.basename(os.path.normpath(r['path'])),
                       seed=int(f['seed']) if f.get('seed', '').isdigit() else None,
                       top1={str(k): v for k, v in r['top1'].items()}, epochs=r['epochs'], max_epochs=r['max_epochs'],
                       complete=r['complete'], last=r['last'], best=r['best'], wall=r['wall'],
                       median_step_s=r['median_step_s'], median_data_s=r['median_data_s'])
                  for r, f in zip(runs, fields)])
    seeds = sorted({run['seed'] for row in table.values() for run in row['runs'] if run['seed'] is not None})
    return dict(command=command, machine=args.machine or env['machine'], versions=env['versions'],
                date=dates[0] if dates else None, summary_command=command_line(__file__, argv),
                settings=dict(seeds=seeds, epochs=sorted({e for s in summaries.values() for e in s['epochs']})),
                rows=table)


def mean_std(values: List[float]) -> Dict[str, float]:
    return dict(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                min=min(values), max=max(values))


def summarize(runs: List[dict]) -> dict:
    walls = [r['wall']['wall_s'] for r in runs if r['wall']]
    steps = [r['median_step_s'] for r in runs if r['median_step_s'] is not None]
    unknown = any(r['complete'] is None for r in runs)
    return dict(runs=len(runs), complete=None if unknown else sum(r['complete'] for r in runs),
                epochs=sorted({r['epochs'] for r in runs}), last=mean_std([r['last'] for r in runs]),
                best=mean_std([r['best'] for r in runs]), wall_s=statistics.fmean(walls) if walls else None,
                median_step_s=statistics.median(steps) if steps else None)


def per_epoch_table(rows: Dict[str, List[dict]]) -> str:
    """Markdown: the mean top-1 of every row at every epoch (runs' ``top1``: {epoch: value})."""
    epochs = sorted(set().union(*(r['top1'] for runs in rows.values() for r in runs)))
    lines = ['| epoch | ' + ' | '.join(f'{n} top-1' for n in rows) + ' |', '|---' * (len(rows) + 1) + '|']
    for epoch in epochs:
        cells = []
        for runs in rows.values():
            values = [r['top1'][epoch] for r in runs if epoch in r['top1']]
            cells.append(f'{statistics.fmean(values):.2f}' if values else '-')
        lines.append(f'| {epoch} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def summary_table(summaries: Dict[str, dict]) -> str:
    """Markdown: one line per row of :func:`summarize`'s figures."""
    lines = ['| row | runs (complete) | epochs | final top-1 | best top-1 | wall s/run | median s/step |',
             '|---|---|---|---|---|---|---|']
    for name, s in summaries.items():
        wall = f"{s['wall_s']:.0f}" if s['wall_s'] is not None else '-'
        step = f"{s['median_step_s']:.3f}" if s['median_step_s'] is not None else '-'
        epochs = '/'.join(str(e) for e in s['epochs'])
        complete = '?' if s['complete'] is None else s['complete']
        lines.append(f"| {name} | {s['runs']} ({complete}) | {epochs} | {s['last']['mean']:.2f} +/- "
                     f"{s['last']['std']:.2f} | {s['best']['mean']:.2f} +/- {s['best']['std']:.2f} | {wall} | {step} |")
    return '\n'.join(lines)


def expand(spec: str) -> List[str]:
    paths = []
    for part in spec.split(','):
        if not any(c in part for c in '*?['):
            paths.append(part)
            continue
        # a pattern keeps the work dirs and .json files it matches (not the logs beside them)
        matched = [p for p in sorted(glob.glob(part)) if os.path.isdir(p) or p.endswith('.json')]
        if not matched:
            fail(f'{part!r} matches no work dir or .json file')
        paths.extend(matched)
    return paths


def plot(rows: Dict[str, List[dict]], path: str, title: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (full, tail) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in rows.items():
        epochs = sorted(set().union(*(r['top1'] for r in runs)))
        values = [[r['top1'][e] for r in runs if e in r['top1']] for e in epochs]
        mean = [statistics.fmean(v) for v in values]
        for ax in (full, tail):
            line, = ax.plot(epochs, mean, label=f'{name} (n={len(runs)})')
            ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.2,
                            color=line.get_color())
    last = max(max(r['top1']) for runs in rows.values() for r in runs)
    start = max(1, last - max(5, last // 3))
    lows = [r['top1'][e] for runs in rows.values() for r in runs for e in r['top1'] if e >= start]
    tail.set_xlim(start, last)
    tail.set_ylim(min(lows) - 0.2, max(lows) + 0.2)
    full.set_title(title)
    tail.set_title(f'epochs {start}-{last}')
    for ax in (full, tail):
        ax.set_xlabel('epoch')
        ax.set_ylabel('top-1 (%)')
        ax.grid(alpha=0.3)
    full.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('rows', nargs='+', metavar='NAME=RUN[,RUN...]',
                        help='a row: its name and its runs (work dirs or scalars.json files, patterns allowed)')
    parser.add_argument('--out', metavar='FILE', help='data file the table is appended to as one run')
    parser.add_argument('--command', help='with --out: the command that made the runs (default: the command.txt '
                        'of benchmarks/fmnist_seeds.sh beside the work dirs)')
    parser.add_argument('--machine', help='with --out: the machine the runs ran on (default: the GPU of their logs)')
    parser.add_argument('--plot', help='PNG of the per-epoch top-1 curves (refuses to overwrite)')
    parser.add_argument('--title', default='top-1 per epoch (mean over runs, range shaded)', help='plot title')
    parser.add_argument('--per-epoch', action='store_true', help='also print the mean top-1 of every epoch')
    parser.add_argument('--require-complete', action='store_true',
                        help='exit with status 1 when a run did not finish its schedule')
    args = parser.parse_args(argv)
    if args.plot and os.path.exists(args.plot):
        fail(f'{args.plot} exists; not overwriting it (choose another name)')
    if args.out and os.path.exists(args.out):
        from mmkat.utils.results import ResultsFileError, load_results
        try:
            if load_results(args.out)['benchmark'] != BENCHMARK:
                fail(f'{args.out} holds the runs of another benchmark; choose another file')
        except (OSError, ResultsFileError) as e:
            fail(str(e))

    rows = {}
    for item in args.rows:
        name, sep, spec = item.partition('=')
        if not sep or not name or not spec:
            fail(f'expected NAME=RUN[,RUN...], got {item!r}')
        if name in rows:
            fail(f'row name {name!r} given twice')
        rows[name] = [read_run(path) for path in expand(spec)]
    summaries = {name: summarize(runs) for name, runs in rows.items()}

    if args.per_epoch:
        print(per_epoch_table(rows) + '\n')
    print(summary_table(summaries))
    incomplete = [r['path'] for runs in rows.values() for r in runs if r['complete'] is False]
    for path in incomplete:
        print(f'incomplete run (stopped before its last epoch or failed): {path}', file=sys.stderr)

    if args.out:
        from mmkat.utils.results import ResultsFileError, save_results
        try:
            save_results(args.out, data_file_run(rows, summaries, args, sys.argv[1:] if argv is None else argv),
                         BENCHMARK)
        except (OSError, ResultsFileError) as e:
            fail(str(e))
    if args.plot:
        plot(rows, args.plot, args.title)
        print(f'wrote {args.plot}')
    if incomplete and args.require_complete:
        sys.exit(1)


if __name__ == '__main__':
    main()
