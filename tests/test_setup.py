"""setup.py's build decisions: finding the CUDA toolkit behind a wrapper, MMKAT_WITH_CUDA, the C++ runtime, the
kernels' build options (and that the MMKAT_LOAD_STAGES builds compile)."""
import importlib.util
import os
import re
import subprocess
import sys
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


def fake_driver(tmp_path, name, files):
    """A compiler driver that answers -print-file-name=NAME with files[NAME], or the bare name (not found),
    as GCC does."""
    lines = ['#!/bin/sh', 'case "$1" in']
    for lib, path in files.items():
        lines.append(f'  -print-file-name={lib}) echo {path} ;;')
    lines += ['  -print-file-name=*) echo "${1#-print-file-name=}" ;;', '  *) exit 1 ;;', 'esac']
    driver = tmp_path / name
    driver.write_text('\n'.join(lines) + '\n')
    driver.chmod(0o755)
    return str(driver)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the libstdc++ probe runs on Linux only')
def test_libstdcxx_link_args(setup_module, tmp_path, capsys):
    static = touch(tmp_path / 'gcc' / 'libstdc++.a')
    shared = touch(tmp_path / 'gcc' / 'libstdc++.so')
    system = touch(tmp_path / 'system' / 'libstdc++.so.6')
    usual = fake_driver(tmp_path, 'usual-g++', {'libstdc++.so': shared, 'libstdc++.a': static})
    assert setup_module._libstdcxx_link_args([usual]) == []
    # a GCC installed apart: only the archive in its own folders, the system's shared runtime found by soname
    apart = fake_driver(tmp_path, 'opt-g++', {'libstdc++.a': static, 'libstdc++.so.6': system})
    assert setup_module._libstdcxx_link_args([usual, apart, apart]) == [system]
    assert 'linking ' + system in capsys.readouterr().err
    # not a GCC-style driver (no archive to fall back on), or one that cannot be run: left alone
    assert setup_module._libstdcxx_link_args([fake_driver(tmp_path, 'other-cc', {}), str(tmp_path / 'none')]) == []
    # only the static runtime: the build stops with the driver named
    alone = fake_driver(tmp_path, 'static-g++', {'libstdc++.a': static})
    with pytest.raises(SystemExit, match=re.escape('static-g++ finds libstdc++.a but no shared libstdc++')):
        setup_module._libstdcxx_link_args([alone])


def test_libstdcxx_probe_is_linux_only(setup_module, tmp_path, monkeypatch):
    alone = fake_driver(tmp_path, 'static-g++', {'libstdc++.a': touch(tmp_path / 'libstdc++.a')})
    monkeypatch.setattr(setup_module.sys, 'platform', 'darwin')
    assert setup_module._libstdcxx_link_args([alone]) == []


def test_link_drivers_follow_the_environment(setup_module, monkeypatch):
    """tools/setup_env.sh probes these for mmcv's build: CXX, LDSHARED, CC, first word each."""
    monkeypatch.setenv('CXX', '/opt/gcc/bin/g++ -m64')
    monkeypatch.setenv('LDSHARED', '/opt/gcc/bin/gcc -shared')
    monkeypatch.setenv('CC', 'cc')
    assert setup_module._link_drivers() == ['/opt/gcc/bin/g++', '/opt/gcc/bin/gcc', 'cc']


def test_kernel_build_options_are_read_checked_and_named(setup_module):
    assert setup_module._kernel_knobs({}) == []
    env = {'MMKAT_LOAD_STAGES': '3', 'MMKAT_BLOCKS_PER_SM': ' 4 ', 'MMKAT_THREADS': '', 'OTHER': '1'}
    assert setup_module._kernel_knobs(env) == ['MMKAT_BLOCKS_PER_SM=4', 'MMKAT_LOAD_STAGES=3']
    for bad in ('-1', '2.5', 'three'):
        with pytest.raises(SystemExit, match=f"MMKAT_LOAD_STAGES must be a non-negative integer, got '{bad}'"):
            setup_module._kernel_knobs({'MMKAT_LOAD_STAGES': bad})


def test_extension_names_its_cuda_build_options(setup_module):
    """extension_info()['cuda_build']: '' for the default kernels, else the build options that were set."""
    from mmkat.ops import extension_info
    info = extension_info()
    if not info['loaded']:
        pytest.skip('mmkat._C is not built')
    build = info['cuda_build']
    assert isinstance(build, str)
    for entry in filter(None, build.split(',')):
        name, _, value = entry.partition('=')
        assert name in setup_module.KERNEL_KNOBS and value.isdigit(), build
    if not info['with_cuda']:
        assert build == ''


@pytest.mark.parametrize('stages,fused', [('3', '0'), ('3', '1'), ('0', '0')])
def test_load_stages_builds_compile(setup_module, tmp_path, stages, fused):
    """The default build (MMKAT_LOAD_STAGES=3: the "ahead" kernels on the vectorized paths; the coefficient gradients
    summed by the separate reduce_kernel), the same with MMKAT_FUSED_REDUCE=1 (summed by the backward's last blocks)
    and the plain kernels only compile for sm_90 and hold the kernels they should (read from the object's machine
    code)."""
    import sysconfig

    from torch.utils import cpp_extension
    cuda_home = setup_module.CUDA_HOME
    nvcc = os.path.join(cuda_home or '', 'bin', 'nvcc')
    if not cuda_home or not os.access(nvcc, os.X_OK):
        pytest.skip('no CUDA toolkit')
    tool_path = os.path.join(ROOT, 'tools', 'sass_per_element.py')
    spec = importlib.util.spec_from_file_location('sass_per_element', tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        tool.find_cuobjdump()
    except SystemExit:
        pytest.skip('no cuobjdump (CUDA toolkit or triton) on this machine')
    includes = cpp_extension.include_paths() + [os.path.join(cuda_home, 'include'), sysconfig.get_paths()['include']]
    obj = str(tmp_path / 'ahead.o')
    source = os.path.join(ROOT, 'csrc', 'group_rational_cuda.cu')
    cmd = [nvcc, '-c', source, '-o', obj, *cpp_extension.COMMON_NVCC_FLAGS, '-O3', '-std=c++20',
           '-gencode=arch=compute_90,code=sm_90', '-DTORCH_API_INCLUDE_EXTENSION_H', '-DTORCH_EXTENSION_NAME=_C',
           f'-DMMKAT_LOAD_STAGES={stages}', f'-DMMKAT_FUSED_REDUCE={fused}', '--compiler-options', '-fPIC']
    cmd += [f'-I{path}' for path in includes]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    kernels = tool.disassemble(obj, '90')
    found = {(r['kernel'], r['dtype'], r['vec']) for r in tool.analyse(kernels, 1)}
    separate_reduce = any('13reduce_kernel' in name for name in kernels)  # (not bias_reduce_kernel)
    assert separate_reduce == (fused == '0')
    ahead = {(kernel, dtype, vec) for kernel in ('forward_ahead', 'backward_ahead')
             for dtype, vec in (('bf16', 8), ('fp16', 8), ('fp32', 4), ('fp64', 2))}
    if stages == '0':
        assert not any(kernel.endswith('_ahead') for kernel, _, _ in found)
    else:
        assert ahead <= found
    # the plain kernels stay: the scalar path, tensors past 32-bit vector offsets, the bias ops
    assert {('backward', 'bf16', 1), ('backward', 'bf16', 8), ('backward_bias', 'bf16', 8)} <= found
