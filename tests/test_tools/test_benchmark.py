"""tools/benchmark.py on the CPU (every model, mode and output, on sizes that run in seconds); the data files of
mmkat/utils/results.py; tools/summarize_cls_runs.py --out; and benchmarks/README.md's tables against the data
files they are made from (benchmarks/make_tables.py)."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import benchmark  # noqa: E402
import make_tables  # noqa: E402
import summarize_cls_runs  # noqa: E402

from mmkat.utils.results import ResultsFileError, cpu_name, load_results, new_run, save_results  # noqa: E402

SPEED_ARGS = ['--device', 'cpu', '--archs', 'tiny', '--modes', 'train', 'infer', '--compile', 'eager',
              '--batch-size', '2', '--img-size', '32', '--steps', '1', '--repeats', '2', '--warmup', '1']


def test_models_modes_data_file_and_chart(tmp_path, capsys):
    out, chart = tmp_path / 'speed.json', tmp_path / 'speed.png'
    rows = benchmark.main(SPEED_ARGS + ['--out', str(out), '--chart', str(chart)])
    assert {(r['model'], r['mode']) for r in rows} == {(m, mode) for m in ('vit', 'kat', 'timm-vit')
                                                       for mode in ('train', 'infer')}
    for r in rows:
        assert r['images_per_s'] > 0 and len(r['ms_per_step_all']) == 2
    params = {r['model']: r['params'] for r in rows}
    assert params['vit'] == params['timm-vit'] < params['kat']  # the twin is timm's ViT, KAT adds 38 per rational
    assert params['kat'] - params['vit'] == 12 * 2 * 38
    assert chart.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    first = load_results(str(out))
    assert first['benchmark'] == benchmark.SPEED_BENCHMARK and len(first['runs']) == 1
    run = first['runs'][0]
    assert run['command'] == 'python tools/benchmark.py ' + ' '.join(SPEED_ARGS + ['--out', str(out), '--chart',
                                                                                    str(chart)])
    assert run['machine'] == cpu_name() and run['versions']['torch'] and run['date']
    assert run['settings']['batch_size'] == 2 and len(run['rows']) == 6

    assert 'kernels' not in run['settings']
    benchmark.main(SPEED_ARGS + ['--models', 'vit', 'kat', '--out', str(out), '--build-label', 'b: default build'])
    saved = load_results(str(out))  # appended, the first run kept
    assert saved['runs'][0] == run and len(saved['runs'][1]['rows']) == 4
    assert saved['runs'][1]['settings']['kernels'] == 'b: default build'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['speed.json', 'speed.png']  # no second file

    capsys.readouterr()
    again = tmp_path / 'again.png'
    shown = benchmark.main(['--from-json', str(out), '--chart', str(again)])
    assert len(shown) == 10 and {r['run'] for r in shown} == {0, 1} and again.read_bytes()[:4] == b'\x89PNG'
    table = capsys.readouterr().out
    assert table.count('| tiny | train | eager | KAT (mmkat) |') == 2
    # a ratio is taken within its own run: the second run's KAT over the second run's ViT
    kat2, vit2 = (next(r for r in shown if r['run'] == 1 and r['mode'] == 'train' and r['model'] == m)
                  for m in ('kat', 'vit'))
    assert benchmark.ratio(shown, kat2) == pytest.approx(kat2['images_per_s'] / vit2['images_per_s'])


def test_host_mode_and_files_of_another_benchmark_are_refused(tmp_path):
    out = tmp_path / 'host.json'
    result = benchmark.main(
        ['--host', '--device', 'cpu', '--steps', '2', '--repeats', '2', '--warmup', '1', '--out', str(out)])
    assert result['kat_over_vit'] > 0
    assert {'GELU forward+backward', 'GroupRational forward+backward', 'KAN forward+backward',
            'MLP forward+backward'} <= set(result['call_us'])
    saved = load_results(str(out))
    assert saved['benchmark'] == benchmark.HOST_BENCHMARK
    assert saved['runs'][0]['host']['step_ms'].keys() == {'vit', 'kat'}
    with pytest.raises(SystemExit):  # a speed run is not appended to the host file (refused before measuring)
        benchmark.main(SPEED_ARGS + ['--out', str(out)])
    with pytest.raises(SystemExit):  # --from-json reads speed runs only
        benchmark.main(['--from-json', str(out)])
    assert load_results(str(out)) == saved


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        benchmark.main(['--device', 'cpu', '--steps', '0'])
    with pytest.raises(SystemExit):
        benchmark.main(['--device', 'cpu', '--compile', 'reduce-overhead'])


def test_results_files_append_and_refuse(tmp_path):
    path = str(tmp_path / 'r.json')
    run = new_run('python x.py', 'cpu', rows=[1])
    assert set(run) >= {'command', 'machine', 'versions', 'date'} and run['versions']['mmkat']
    save_results(path, run, 'bench')
    save_results(path, dict(run, rows=[2]), 'bench')
    assert [r['rows'] for r in load_results(path)['runs']] == [[1], [2]]
    with pytest.raises(ResultsFileError, match='another benchmark'):
        save_results(path, run, 'other bench')
    with pytest.raises(ResultsFileError, match='file of its own'):
        save_results(path, dict(run, machine='NVIDIA H200'), 'bench')
    with pytest.raises(ValueError, match='lacks'):
        save_results(path, dict(rows=[3]), 'bench')
    assert len(load_results(path)['runs']) == 2
    (tmp_path / 'plain.json').write_text('{"rows": []}')
    with pytest.raises(ResultsFileError, match='not a results data file'):
        save_results(str(tmp_path / 'plain.json'), run, 'bench')
    (tmp_path / 'text.json').write_text('not json')
    with pytest.raises(ResultsFileError, match='not JSON'):
        load_results(str(tmp_path / 'text.json'))
    assert (tmp_path / 'plain.json').read_text() == '{"rows": []}'


def fake_run(folder, seed, top1, gpu='NVIDIA H200'):
    """A work dir as tools/train.py and benchmarks/fmnist_seeds.sh leave it."""
    stamp = folder / f'2026120{1 + seed}_120000'
    (stamp / 'vis_data').mkdir(parents=True)
    lines = [dict(loss=1.0, time=0.5, data_time=0.01, step=1)]
    lines += [{'accuracy/top1': v, 'step': e} for e, v in enumerate(top1, 1)]
    (stamp / 'vis_data' / 'scalars.json').write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
    (stamp / f'{stamp.name}.log').write_text(
        'System environment:\n    Python: 3.12.3 (main)\n    GPU 0: ' + gpu + '\n    PyTorch: 2.11.0+cu130\n'
        '  - CUDA Runtime 13.0\n    TorchVision: 0.26.0+cu130\n    MMEngine: 0.10.7\n')
    (folder / 'wall.txt').write_text(f'rc=0 wall_s={100 + seed} config=configs/x.py seed={seed}\n')


def test_summarize_cls_runs_appends_a_run_with_command_machine_and_versions(tmp_path, capsys):
    runs = tmp_path / 'runs'
    for seed, top1 in enumerate(([50.0, 60.0], [62.0, 58.0])):
        fake_run(runs / f'kat_seed{seed}', seed, top1)
    (runs / 'command.txt').write_text('SEEDS="0 1" bash benchmarks/fmnist_seeds.sh runs configs/x.py\n')
    out = tmp_path / 'fmnist.json'
    summarize_cls_runs.main([f'KAT={runs}/kat_seed*', '--out', str(out)])
    summarize_cls_runs.main([f'KAT={runs}/kat_seed*', '--out', str(out), '--command', 'by hand'])
    data = load_results(str(out))
    assert data['benchmark'] == summarize_cls_runs.BENCHMARK and len(data['runs']) == 2
    run = data['runs'][0]
    assert run['command'] == 'SEEDS="0 1" bash benchmarks/fmnist_seeds.sh runs configs/x.py'
    assert data['runs'][1]['command'] == 'by hand'
    assert run['machine'] == 'NVIDIA H200' and run['date'] == '2026-12-01T12:00:00'
    assert run['versions']['torch'] == '2.11.0+cu130' and run['versions']['cuda'] == '13.0'
    assert run['versions']['mmengine'] == '0.10.7' and run['versions']['mmkat_commit'] is None
    row = run['rows']['KAT']
    assert row['config'] == 'configs/x.py' and [r['seed'] for r in row['runs']] == [0, 1]
    assert row['summary']['last']['mean'] == pytest.approx(59.0) and row['summary']['best']['mean'] == 61.0
    assert row['runs'][0]['top1'] == {'1': 50.0, '2': 60.0}
    assert '| KAT | 2 (2) | 2 | 59.00 +/- 1.41 | 61.00 +/- 1.41 | 100 |' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='file of its own'):  # another machine's runs go to another file
        summarize_cls_runs.main([f'KAT={runs}/kat_seed*', '--out', str(out), '--machine', 'AMD EPYC, 2 cores'])


def test_the_readme_tables_are_made_from_the_data_files():
    with open(make_tables.README) as f:
        text = f.read()
    assert make_tables.render(text) == text, 'run python benchmarks/make_tables.py'
    for name in make_tables.TABLES:
        assert f'<!-- table:{name} -->' in text
    for name in os.listdir(make_tables.RESULTS):  # every data file has what a run must record
        if name.endswith('.json'):
            for run in load_results(os.path.join(make_tables.RESULTS, name))['runs']:
                assert {'command', 'machine', 'versions', 'date'} <= set(run), name
    with pytest.raises(ValueError, match='no table named'):
        make_tables.render(text + '<!-- table:nothing -->\n<!-- /table -->\n')
