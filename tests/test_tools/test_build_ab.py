"""benchmarks/build_ab.py: one benchmark against several builds of mmkat._C."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def build_ab():
    spec = importlib.util.spec_from_file_location('build_ab', os.path.join(ROOT, 'benchmarks', 'build_ab.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_are_parsed_and_bad_ones_refused(build_ab):
    knobs = build_ab.kernel_knobs()
    assert {'MMKAT_LOAD_STAGES', 'MMKAT_FUSED_REDUCE'} <= set(knobs)
    assert build_ab.parse_variant('base=') == dict(name='base', rev=None, knobs={})
    v = build_ab.parse_variant('old@9166487=MMKAT_LOAD_STAGES=0, MMKAT_FUSED_REDUCE=1')
    assert v == dict(name='old', rev='9166487', knobs={'MMKAT_LOAD_STAGES': '0', 'MMKAT_FUSED_REDUCE': '1'})
    assert build_ab.label(v) == 'old: MMKAT_FUSED_REDUCE=1, MMKAT_LOAD_STAGES=0 (commit 9166487)'
    assert build_ab.label(build_ab.parse_variant('base=')) == 'base: default build (working tree)'
    for spec, match in [('base', 'expected NAME'), ('=MMKAT_LOAD_STAGES=0', 'expected NAME'), ('a@=', 'expected NAME'),
                        ('a/b=', 'expected NAME'), ('a=MMKAT_NOPE=1', "unknown build option 'MMKAT_NOPE'"),
                        ('a=MMKAT_LOAD_STAGES=-1', "non-negative integer, got '-1'"),
                        ('a=MMKAT_LOAD_STAGES', "non-negative integer, got ''")]:
        with pytest.raises(build_ab.BuildABError, match=match):
            build_ab.parse_variant(spec)


def test_bad_command_lines_are_refused(build_ab, capsys):
    cases = [(['--variant', 'a=', '--variant', 'a=MMKAT_LOAD_STAGES=0', '--', 'tools/benchmark_op.py'], 'must differ'),
             (['--variant', 'a=', '--', 'tools/benchmark_op.py'], 'at least two'),
             (['--variant', 'a=', '--variant', 'b=', '--', 'tools/train.py'], 'one of tools/benchmark_op.py'),
             (['--variant', 'a=', '--variant', 'b='], 'one of tools/benchmark_op.py'),
             (['--variant', 'a=', '--variant', 'b=', '--', 'tools/benchmark_op.py', '--out', 'x.json'],
              '--out is set by build_ab.py'),
             (['--variant', 'a=', '--variant', 'b=', '--rounds', '0', '--', 'tools/benchmark_op.py'], '--rounds'),
             (['--variant', 'a=X=1', '--variant', 'b=', '--', 'tools/benchmark_op.py'], "unknown build option 'X'")]
    for argv, match in cases:
        with pytest.raises(SystemExit):
            build_ab.parse_args(argv)
        assert match in capsys.readouterr().err


def test_a_directory_it_did_not_make_is_refused(build_ab, tmp_path):
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('a user file')
    with pytest.raises(build_ab.BuildABError, match='was not made by build_ab.py'):
        build_ab.prepare(build_ab.parse_variant('mine='), str(tmp_path))
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'a user file'
    assert not (tmp_path / 'mine.staging').exists()


@pytest.mark.skipif(shutil.which('git') is None or not os.path.isdir(os.path.join(ROOT, '.git')),
                    reason='needs git and a checkout')
def test_two_builds_run_the_op_benchmark_in_turn(build_ab, tmp_path):
    """The working tree and HEAD, built for the CPU, each run tools/benchmark_op.py with its own extension; the runs
    land in one data file labelled by variant; a second call reuses both builds."""
    out = tmp_path / 'op.json'
    argv = ['--variant', 'tree=', '--variant', 'head@HEAD=MMKAT_THREADS=128', '--workdir', str(tmp_path / 'w'),
            '--out', str(out), '--', 'tools/benchmark_op.py', '--device', 'cpu', '--shapes', '2x5x64', '--dtypes',
            'fp32', '--impls', 'mmkat', '--reps', '2', '--warmup', '1']
    env = dict(os.environ, MMKAT_WITH_CUDA='0', MMKAT_LOAD_STAGES='0')  # a CPU build; the environment's knob dropped
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'build_ab.py'), *argv], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stdout.count('build_ab: building') == 2
    runs = json.loads(out.read_text())['runs']
    assert [r['settings']['kernels'] for r in runs] == [
        'tree: default build (working tree)', 'head: MMKAT_THREADS=128 (commit HEAD)'] * 2
    for r, name in zip(runs, ['tree', 'head'] * 2):
        ext = r['versions']['extension']
        assert ext['loaded'] and ext['path'].startswith(str(tmp_path / 'w' / name) + os.sep)
        assert ext['cuda_build'] == ('' if name == 'tree' else 'MMKAT_THREADS=128') or not ext['with_cuda']
        assert [row['impl'] for row in r['rows']] == ['mmkat']
    stamp = json.loads((tmp_path / 'w' / 'head' / 'build_ab.json').read_text())
    assert stamp['rev'] == 'HEAD' and stamp['knobs'] == {'MMKAT_THREADS': '128'}
    again = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'build_ab.py'), *argv[:6], '--build-only'],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and 'build_ab: building' not in again.stdout, again.stdout + again.stderr
