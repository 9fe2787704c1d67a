"""tools/benchmark.py on the CPU: every model, mode and output file, on sizes that run in seconds."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tools'))
import benchmark  # noqa: E402


def test_models_modes_json_and_chart(tmp_path):
    out, chart = tmp_path / 'speed.json', tmp_path / 'speed.png'
    argv = ['--device', 'cpu', '--archs', 'tiny', '--modes', 'train', 'infer', '--compile', 'eager',
            '--batch-size', '2', '--img-size', '32', '--steps', '1', '--repeats', '2', '--warmup', '1',
            '--out', str(out), '--chart', str(chart)]
    rows = benchmark.main(argv)
    assert {(r['model'], r['mode']) for r in rows} == {(m, mode) for m in ('vit', 'kat', 'timm-vit')
                                                       for mode in ('train', 'infer')}
    for r in rows:
        assert r['images_per_s'] > 0 and len(r['ms_per_step_all']) == 2
    params = {r['model']: r['params'] for r in rows}
    assert params['vit'] == params['timm-vit'] < params['kat']  # the twin is timm's ViT, KAT adds 38 per rational
    assert params['kat'] - params['vit'] == 12 * 2 * 38
    saved = json.loads(out.read_text())
    assert len(saved['rows']) == 6 and saved['meta']['batch_size'] == 2
    assert chart.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    benchmark.main(argv)  # a second run keeps the first file
    assert json.loads(out.read_text()) == saved
    assert len(list(tmp_path.glob('speed_*.json'))) == 1


def test_host_mode(tmp_path):
    out = tmp_path / 'host.json'
    result = benchmark.main(
        ['--host', '--device', 'cpu', '--steps', '2', '--repeats', '2', '--warmup', '1', '--out', str(out)])
    assert result['kat_over_vit'] > 0
    assert {'GELU forward+backward', 'GroupRational forward+backward'} <= set(result['call_us'])
    assert json.loads(out.read_text())['host']['step_ms'].keys() == {'vit', 'kat'}


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        benchmark.main(['--device', 'cpu', '--steps', '0'])
    with pytest.raises(SystemExit):
        benchmark.main(['--device', 'cpu', '--compile', 'reduce-overhead'])
