"""Build and install mmkat.

    pip install --no-build-isolation -e .        (what tools/setup_env.sh runs)

``--no-build-isolation`` matters: mmkat._C must be compiled against the torch that will import it (a
build in an isolated environment pulls another torch and fails later with undefined symbols).

mmkat._C holds the C++ CPU kernels always and the CUDA kernels when a CUDA toolkit is found; no visible
GPU is needed. Knobs:
    MMKAT_WITH_CUDA=0/1     force the CUDA kernels off/on (on fails loudly when no toolkit is usable)
    CUDA_HOME               the CUDA toolkit root (found automatically otherwise, see _find_cuda_home)
    TORCH_CUDA_ARCH_LIST    architectures, e.g. "9.0" or "8.0;9.0+PTX"; without it, the visible GPUs', or
                            DEFAULT_ARCHS when no GPU is visible
    MAX_JOBS                parallel compile jobs (ninja)
    MMKAT_CUDA_UNROLL, MMKAT_VEC_BYTES, MMKAT_MIN_BLOCKS, MMKAT_THREADS, MMKAT_BLOCKS_PER_SM, MMKAT_LOAD_STAGES,
                            MMKAT_FUSED_REDUCE
                            integer build options of the CUDA kernels for experiments (docs/op.md, "Speed");
                            unset: the defaults. The library names the ones set (extension_info()['cuda_build']).
"""
import glob
import os
import re
import shutil
import sys
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Compiled when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset: Ampere, Ada, Hopper machine code and
# Hopper PTX (which the driver compiles for newer GPUs).
DEFAULT_ARCHS = '8.0;8.6;8.9;9.0+PTX'


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, 'bin', 'nvcc')) and os.path.isfile(
        os.path.join(path, 'include', 'cuda_runtime.h'))


def _find_cuda_home():
    """Return a CUDA toolkit root (bin/nvcc and include/cuda_runtime.h), or None.

    torch guesses CUDA_HOME from the nvcc on PATH; where that nvcc is a wrapper script (as on machines
    with /usr/local/bin/nvcc -> exec /usr/local/cuda-X/bin/nvcc) the guess is wrong and linking fails,
    so look through wrappers and the usual install locations.
    """
    for var in ('CUDA_HOME', 'CUDA_PATH'):
        if os.environ.get(var):
            if _is_toolkit(os.environ[var]):
                return os.environ[var]
            print(f'mmkat setup: {var}={os.environ[var]} is not a CUDA toolkit root (no bin/nvcc and '
                  'include/cuda_runtime.h); looking elsewhere', file=sys.stderr)
    candidates = []
    nvcc = shutil.which('nvcc')
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:
            with open(real, 'rb') as f:
                head = f.read(4096)
            if head.startswith(b'#!'):  # a wrapper script: follow the nvcc it runs
                for m in re.finditer(rb'(/[^\s"\']+)/bin/nvcc', head):
                    candidates.append(m.group(1).decode())
        except OSError:
            pass
    candidates.append('/usr/local/cuda')
    candidates += sorted(glob.glob('/usr/local/cuda-*'), reverse=True)
    for path in candidates:
        if _is_toolkit(path):
            return path
    return None


def _want_cuda(cuda_home, torch):
    flag = os.environ.get('MMKAT_WITH_CUDA', '').strip()
    if flag not in ('', '0', '1'):
        raise SystemExit(f'mmkat setup: MMKAT_WITH_CUDA must be 0 or 1, got {flag!r}')
    if flag == '0':
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f'torch {torch.__version__} is a CPU-only build')
    if cuda_home is None:
        problems.append('no CUDA toolkit found (set CUDA_HOME to its root)')
    if problems:
        if flag == '1':
            raise SystemExit('mmkat setup: MMKAT_WITH_CUDA=1 but ' + '; '.join(problems))
        print('mmkat setup: building the CPU kernels only: ' + '; '.join(problems), file=sys.stderr)
        return False
    return True


def _print_file_name(driver, name):
    """The path the compiler driver would link for library file ``name``, or None where it has none (GCC and
    clang print the bare name back) or cannot be asked."""
    import subprocess
    try:
        out = subprocess.run([driver, f'-print-file-name={name}'], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def _libstdcxx_link_args(drivers):
    """Extra link arguments that keep mmkat._C on the shared libstdc++, the C++ runtime torch uses.

    A compiler whose library folders hold libstdc++.a but no libstdc++.so (a GCC installed apart from the
    system's, e.g. under /opt, with the system's libstdc++.so.6 outside its search path) links a private copy
    of the C++ runtime into the extension. That copy formats numbers through locale data that the process's
    own libstdc++ set up, so a failed input check whose message holds a number ends the process with a
    segmentation fault, or raises a message cut off where the number should be. Such a compiler is given the
    shared libstdc++.so.6 it can find (the linker then takes nothing from the archive); a build that would link
    only the static runtime stops.
    """
    if not sys.platform.startswith('linux'):
        return []
    args = []
    for driver in dict.fromkeys(d for d in drivers if d):
        if _print_file_name(driver, 'libstdc++.so') or not _print_file_name(driver, 'libstdc++.a'):
            continue  # links the shared runtime, or is not a GCC-style driver with a static one to fall back on
        shared = _print_file_name(driver, 'libstdc++.so.6')
        if shared is None:
            raise SystemExit(f'mmkat setup: the C++ compiler {driver} finds libstdc++.a but no shared libstdc++ '
                             '(libstdc++.so or libstdc++.so.6); an extension linked with the static C++ runtime '
                             'crashes inside torch. Set CXX to a compiler that links libstdc++.so (e.g. the '
                             "system's g++), or install the libstdc++ development package for this one.")
        print(f'mmkat setup: {driver} has no libstdc++.so in its search path; linking {shared} instead of its '
              'static libstdc++.a', file=sys.stderr)
        if shared not in args:
            args.append(shared)
    return args


def _link_drivers():
    """The compiler drivers a setuptools build of an extension links with here (CXX, LDSHARED, CC from the
    environment, else Python's build configuration), for builds this file does not run: tools/setup_env.sh
    passes ``_libstdcxx_link_args(_link_drivers())`` to mmcv's through LDFLAGS."""
    import shlex
    import sysconfig
    commands = [os.environ.get(var) or sysconfig.get_config_var(var) for var in ('CXX', 'LDSHARED', 'CC')]
    return [shlex.split(c)[0] for c in commands if c and c.strip()]


# Must happen before torch.utils.cpp_extension is imported anywhere: it reads CUDA_HOME at import time.
CUDA_HOME = _find_cuda_home()
if CUDA_HOME is not None:
    os.environ['CUDA_HOME'] = CUDA_HOME


KERNEL_KNOBS = ('MMKAT_CUDA_UNROLL', 'MMKAT_VEC_BYTES', 'MMKAT_MIN_BLOCKS', 'MMKAT_THREADS', 'MMKAT_BLOCKS_PER_SM',
                'MMKAT_LOAD_STAGES', 'MMKAT_FUSED_REDUCE')


def _kernel_knobs(environ=None):
    """The CUDA kernels' build options set in the environment, as ['NAME=VALUE', ...] in KERNEL_KNOBS order."""
    environ = os.environ if environ is None else environ
    found = []
    for knob in KERNEL_KNOBS:
        value = environ.get(knob, '').strip()
        if not value:
            continue
        if not re.fullmatch(r'[0-9]+', value):
            raise SystemExit(f'mmkat setup: {knob} must be a non-negative integer, got {value!r}')
        found.append(f'{knob}={int(value)}')
    return found


def get_extensions():
    cuda_home = CUDA_HOME
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = _want_cuda(cuda_home, torch)
    torch_version = torch.__version__.split('+')[0]
    sources = ['csrc/group_rational.cpp', 'csrc/group_rational_autograd.cpp', 'csrc/group_rational_cpu.cpp']
    cxx = ['-O3', '-fopenmp', f'-DMMKAT_TORCH_VERSION="{torch_version}"']
    if not with_cuda:
        return [CppExtension('mmkat._C', sources, extra_compile_args={'cxx': cxx}, extra_link_args=['-fopenmp'])]

    if not os.environ.get('TORCH_CUDA_ARCH_LIST') and not torch.cuda.is_available():
        # torch probes the visible GPUs for their architecture and fails when there are none.
        os.environ['TORCH_CUDA_ARCH_LIST'] = DEFAULT_ARCHS
    archs = os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPUs')
    print(f'mmkat setup: building CPU + CUDA kernels with CUDA_HOME={cuda_home}, archs: {archs}', file=sys.stderr)
    cxx += ['-DMMKAT_WITH_CUDA', f'-DMMKAT_CUDA_ARCHS="{archs}"']
    nvcc = ['-O3', '--expt-relaxed-constexpr', '-lineinfo']
    # Build options for kernel experiments (tools/benchmark_op.py compares builds); unset, the tuned defaults.
    knobs = _kernel_knobs()
    nvcc += [f'-D{knob}' for knob in knobs]
    cxx.append(f'-DMMKAT_CUDA_BUILD="{",".join(knobs)}"')
    if knobs:
        print(f'mmkat setup: CUDA kernel build options {" ".join(knobs)}', file=sys.stderr)
    if os.environ.get('MMKAT_PTXAS_VERBOSE') == '1':
        nvcc.append('-Xptxas=-v')
    return [
        CUDAExtension(
            'mmkat._C',
            sources + ['csrc/group_rational_cuda.cu'],
            extra_compile_args={'cxx': cxx, 'nvcc': nvcc},
            extra_link_args=['-fopenmp'])
    ]


def read_version():
    scope = {}
    with open(os.path.join(ROOT, 'mmkat', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def main():
    from torch.utils.cpp_extension import BuildExtension

    class BuildMMKat(BuildExtension):
        def build_extensions(self):
            # the drivers that may link: the C++ compiler and the shared-object linker setuptools set up
            drivers = [getattr(self.compiler, attr, None) for attr in ('compiler_cxx', 'linker_so_cxx', 'linker_so')]
            extra = _libstdcxx_link_args([d[0] for d in drivers if d])
            for ext in self.extensions:
                ext.extra_link_args = list(ext.extra_link_args or []) + extra
            super().build_extensions()

    setup(
        name='mmkat',
        version=read_version(),
        description='Kolmogorov-Arnold Transformer (KAT) backbones for OpenMMLab, with a fast group-rational op',
        long_description=open(os.path.join(ROOT, 'README.md')).read(),
        long_description_content_type='text/markdown',
        license='Apache-2.0',
        python_requires='>=3.10',
        packages=find_packages(include=['mmkat', 'mmkat.*']),
        package_data={'mmkat': ['ops/*.json']},
        ext_modules=get_extensions(),
        cmdclass={'build_ext': BuildMMKat.with_options(use_ninja=True)},
        install_requires=['torch>=2.4', 'mmengine>=0.10.0', 'safetensors>=0.4', 'huggingface_hub>=0.23'],
        zip_safe=False,
    )


if __name__ == '__main__':
    main()
