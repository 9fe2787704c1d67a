"""setup.py's build decisions: finding the CUDA toolkit behind a wrapper, MMKAT_WITH_CUDA."""
import importlib.util
import os
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup_module(monkeypatch):
    # Importing setup.py sets CUDA_HOME in os.environ: keep the test's environment as it was.
    monkeypatch.setenv('CUDA_HOME', os.environ.get('CUDA_HOME', ''))
    spec = importlib.util.spec_from_file_location('mmkat_setup', os.path.join(ROOT, 'setup.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() only runs under __main__
    return module


def make_toolkit(root):
    os.makedirs(os.path.join(root, 'bin'))
    os.makedirs(os.path.join(root, 'include'))
    open(os.path.join(root, 'bin', 'nvcc'), 'w').close()
    open(os.path.join(root, 'include', 'cuda_runtime.h'), 'w').close()
    return str(root)


def test_toolkit_found_through_a_wrapper_script(setup_module, tmp_path, monkeypatch):
    toolkit = make_toolkit(tmp_path / 'cuda-99.0')
    wrapper_dir = tmp_path / 'wrapper' / 'bin'
    wrapper_dir.mkdir(parents=True)
    wrapper = wrapper_dir / 'nvcc'
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv('CUDA_HOME', raising=False)
    monkeypatch.delenv('CUDA_PATH', raising=False)
    monkeypatch.setenv('PATH', str(wrapper_dir))
    # the wrapper's own folder is not a toolkit (no include/cuda_runtime.h); the path it execs is
    assert setup_module._find_cuda_home() == toolkit


def test_explicit_cuda_home_wins_and_a_bad_one_is_reported(setup_module, tmp_path, monkeypatch, capsys):
    toolkit = make_toolkit(tmp_path / 'cuda')
    monkeypatch.setenv('CUDA_HOME', toolkit)
    assert setup_module._find_cuda_home() == toolkit
    monkeypatch.setenv('CUDA_HOME', str(tmp_path / 'nothing-here'))
    setup_module._find_cuda_home()
    assert 'is not a CUDA toolkit root' in capsys.readouterr().err


@pytest.mark.parametrize('flag,cuda_torch,toolkit,expected', [
    ('', True, True, True),
    ('', True, False, False),
    ('', False, True, False),
    ('0', True, True, False),
    ('1', True, True, True),
])
def test_mmkat_with_cuda(setup_module, monkeypatch, flag, cuda_torch, toolkit, expected):
    monkeypatch.setenv('MMKAT_WITH_CUDA', flag)
    fake_torch = types.SimpleNamespace(version=types.SimpleNamespace(cuda='13.0' if cuda_torch else None),
                                       __version__='2.14.1')
    assert setup_module._want_cuda('/opt/cuda' if toolkit else None, fake_torch) is expected


@pytest.mark.parametrize('flag,cuda_torch,toolkit,message', [
    ('1', True, False, 'no CUDA toolkit found'),
    ('1', False, True, 'CPU-only build'),
    ('yes', True, True, 'must be 0 or 1'),
])
def test_mmkat_with_cuda_fails_loudly(setup_module, monkeypatch, flag, cuda_torch, toolkit, message):
    monkeypatch.setenv('MMKAT_WITH_CUDA', flag)
    fake_torch = types.SimpleNamespace(version=types.SimpleNamespace(cuda='13.0' if cuda_torch else None),
                                       __version__='2.14.1')
    with pytest.raises(SystemExit, match=message):
        setup_module._want_cuda('/opt/cuda' if toolkit else None, fake_torch)
