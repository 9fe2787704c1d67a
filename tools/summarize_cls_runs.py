"""Table of classification runs from their mmengine logs (vis_data/scalars.json): top-1 per epoch side by side,
then epochs done, best and last top-1, median step time. Prints Markdown and writes JSON.

    python tools/summarize_cls_runs.py KAT-T=run/kat_scalars.json ViT-T=run/vit_scalars.json --out table.json
"""
import argparse
import json
import os
import statistics
import sys


def read_run(path: str) -> dict:
    if not os.path.isfile(path):
        sys.exit(f'summarize_cls_runs: no such file: {path} (expected an mmengine vis_data/scalars.json)')
    top1, step_times, data_times = {}, [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            entry = json.loads(line)
            if 'accuracy/top1' in entry:
                top1[int(entry['step'])] = float(entry['accuracy/top1'])
            elif 'time' in entry and 'loss' in entry:
                step_times.append(float(entry['time']))
                data_times.append(float(entry.get('data_time', 0.0)))
    if not top1:
        sys.exit(f'summarize_cls_runs: {path} holds no accuracy/top1 entries (did the run validate?)')
    return dict(top1=top1, epochs=max(top1), best=max(top1.values()), last=top1[max(top1)],
                median_step_s=statistics.median(step_times) if step_times else None,
                median_data_s=statistics.median(data_times) if data_times else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('runs', nargs='+', metavar='NAME=SCALARS_JSON')
    parser.add_argument('--out', help='JSON output (an existing file is kept; refuses to overwrite)')
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition('=')
        if not sep or not name or not path:
            sys.exit(f'summarize_cls_runs: expected NAME=PATH, got {item!r}')
        runs[name] = read_run(path)

    names = list(runs)
    epochs = sorted(set().union(*(r['top1'] for r in runs.values())))
    print('| epoch | ' + ' | '.join(f'{n} top-1' for n in names) + ' |')
    print('|---' * (len(names) + 1) + '|')
    for epoch in epochs:
        cells = [f"{runs[n]['top1'][epoch]:.2f}" if epoch in runs[n]['top1'] else '-' for n in names]
        print(f'| {epoch} | ' + ' | '.join(cells) + ' |')
    print('\n| run | epochs validated | best top-1 | last top-1 | median s/step | median data s/step |')
    print('|---|---|---|---|---|---|')
    for name, run in runs.items():
        step = f"{run['median_step_s']:.3f}" if run['median_step_s'] is not None else '-'
        data = f"{run['median_data_s']:.3f}" if run['median_data_s'] is not None else '-'
        print(f"| {name} | {run['epochs']} | {run['best']:.2f} | {run['last']:.2f} | {step} | {data} |")
    if args.out:
        if os.path.exists(args.out):
            sys.exit(f'summarize_cls_runs: {args.out} exists; not overwriting it (choose another --out)')
        with open(args.out, 'w') as f:
            json.dump({n: dict(r, top1={str(k): v for k, v in r['top1'].items()}) for n, r in runs.items()}, f,
                      indent=1)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
