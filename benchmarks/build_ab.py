"""One benchmark against several builds of mmkat._C, in alternating rounds on one machine.

    python benchmarks/build_ab.py --variant separate= --variant fused=MMKAT_FUSED_REDUCE=1 \\
        --out benchmarks/results/fused_reduce_h100.json -- \\
        tools/benchmark_op.py --shapes 128x197x1536 128x197x384 --dtypes bf16 --impls mmkat
    python benchmarks/build_ab.py --variant before@9166487= --variant after= --rounds 2 \\
        -- tools/benchmark.py --archs small --models vit kat --modes train

Each ``--variant NAME[@REV]=[KNOB=VALUE,...]`` is a copy of the package and its sources (setup.py,
pyproject.toml, README.md, csrc/, mmkat/), taken from the working tree or, with ``@REV``, from that commit
(``git archive``), under ``--workdir``/NAME, and built in place (``setup.py build_ext --inplace``) with the
kernel build options given (setup.py's ``KERNEL_KNOBS``; the environment's own are dropped, so ``NAME=`` is the
default build). Builds run in parallel and a variant is rebuilt only when its sources, options or build
environment changed (``build_ab.json`` in its directory records them); a directory the script did not make is
refused, never overwritten.

The benchmark (``tools/benchmark_op.py`` or ``tools/benchmark.py`` of the working tree, with the arguments after
``--``) then runs once per round and variant, the variants in turn, each time with the variant's package first
on PYTHONPATH, ``--build-label`` naming the variant (recorded as the run's ``settings.kernels``) and, with
``--out FILE``, every run appended to FILE. Never time anything while a build runs: the rounds start after all
builds are done.
"""
import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ('setup.py', 'pyproject.toml', 'README.md', 'csrc', 'mmkat')
TOOLS = ('tools/benchmark_op.py', 'tools/benchmark.py')
STAMP = 'build_ab.json'
BUILD_ENV = ('TORCH_CUDA_ARCH_LIST', 'MMKAT_WITH_CUDA', 'CUDA_HOME', 'CXX', 'CC')
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


class BuildABError(Exception):
    """A bad option, a failed build or a refused directory; the message says which."""


def kernel_knobs() -> tuple:
    """setup.py's KERNEL_KNOBS, read from its text (importing setup.py would set CUDA_HOME and import torch)."""
    with open(os.path.join(ROOT, 'setup.py')) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'KERNEL_KNOBS' for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise BuildABError('build_ab: setup.py defines no KERNEL_KNOBS')


def parse_variant(spec: str, knobs=None) -> dict:
    """``NAME[@REV]=[KNOB=VALUE,...]`` -> dict(name, rev (None: the working tree), knobs {KNOB: 'VALUE'})."""
    knobs = kernel_knobs() if knobs is None else knobs
    head, sep, options = spec.partition('=')
    name, _, rev = head.partition('@')
    if not sep or not _NAME.fullmatch(name) or (rev == '' and '@' in head):
        raise BuildABError(f"build_ab: --variant {spec!r}: expected NAME[@REV]=[KNOB=VALUE,...] (NAME of letters, "
                           "digits, '_', '.', '-'; 'NAME=' is the default build of the working tree)")
    found = {}
    for item in filter(None, (o.strip() for o in options.split(','))):
        knob, eq, value = item.partition('=')
        if knob not in knobs:
            raise BuildABError(f'build_ab: --variant {spec!r}: unknown build option {knob!r}; '
                               f'known: {", ".join(knobs)}')
        if not eq or not re.fullmatch(r'[0-9]+', value):
            raise BuildABError(f'build_ab: --variant {spec!r}: {knob} needs a non-negative integer, got {value!r}')
        found[knob] = value
    return dict(name=name, rev=rev or None, knobs=found)


def label(variant: dict) -> str:
    """What the run records as settings.kernels, e.g. 'fused: MMKAT_FUSED_REDUCE=1 (working tree)'."""
    options = ', '.join(f'{k}={v}' for k, v in sorted(variant['knobs'].items())) or 'default build'
    tree = f"commit {variant['rev']}" if variant['rev'] else 'working tree'
    return f"{variant['name']}: {options} ({tree})"


def _copy_sources(dest: str, rev=None) -> None:
    if rev is None:
        for item in SOURCES:
            src = os.path.join(ROOT, item)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(dest, item), symlinks=True,
                                ignore=shutil.ignore_patterns('__pycache__', '*.so', '*.pyd', '*.o', 'build'))
            else:
                shutil.copy2(src, os.path.join(dest, item))
        return
    out = subprocess.run(['git', '-C', ROOT, 'archive', '--format=tar', rev, *SOURCES], capture_output=True)
    if out.returncode != 0:
        raise BuildABError(f'build_ab: git archive {rev} failed: {out.stderr.decode(errors="replace").strip()[:400]}')
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(dest, filter='data')


def _digest(tree: str) -> str:
    h = hashlib.sha256()
    for base, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            if name == STAMP or name.endswith(('.so', '.pyd', '.log')) or '__pycache__' in path:
                continue
            h.update(os.path.relpath(path, tree).encode() + b'\0')
            if os.path.islink(path):  # (mmkat/.mim's links to the repository's folders)
                h.update(b'link:' + os.readlink(path).encode())
                continue
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def _built(path: str) -> bool:
    package = os.path.join(path, 'mmkat')
    return os.path.isdir(package) and any(n.startswith('_C') and n.endswith(('.so', '.pyd'))
                                          for n in os.listdir(package))


def prepare(variant: dict, workdir: str) -> dict:
    """Make (or keep) the variant's tree under workdir; returns dict(path, stamp, rebuild)."""
    path = os.path.join(workdir, variant['name'])
    staging = f'{path}.staging'
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    _copy_sources(staging, variant['rev'])
    stamp = dict(rev=variant['rev'], knobs=variant['knobs'], digest=_digest(staging), python=sys.executable,
                 env={k: os.environ.get(k) for k in BUILD_ENV})
    if os.path.exists(path):
        try:
            with open(os.path.join(path, STAMP)) as f:
                old = json.load(f)
        except (OSError, ValueError):
            shutil.rmtree(staging)
            raise BuildABError(f'build_ab: {path} exists and was not made by build_ab.py (no readable {STAMP}); '
                               'move it or choose another --workdir') from None
        if old == stamp and _built(path):
            shutil.rmtree(staging)
            return dict(path=path, stamp=stamp, rebuild=False)
        shutil.rmtree(path)
    os.rename(staging, path)
    return dict(path=path, stamp=stamp, rebuild=True)


def build_all(variants, prepared, jobs=None) -> None:
    """Build every variant that needs it, in parallel; BuildABError with the log's tail when one fails."""
    todo = [(v, p) for v, p in zip(variants, prepared) if p['rebuild']]
    if not todo:
        return
    jobs = jobs or os.environ.get('MAX_JOBS') or str(max(1, (os.cpu_count() or 1) // len(todo)))
    knobs = kernel_knobs()
    env = {k: v for k, v in os.environ.items() if k not in knobs}
    procs = []
    for v, p in todo:
        log = open(os.path.join(p['path'], 'build.log'), 'w')
        print(f"build_ab: building {label(v)} in {p['path']}", flush=True)
        proc = subprocess.Popen([sys.executable, 'setup.py', 'build_ext', '--inplace'], cwd=p['path'], stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env, **v['knobs'], MAX_JOBS=str(jobs)))
        procs.append((v, p, proc, log))
    failed = []
    for v, p, proc, log in procs:
        proc.wait()
        log.close()
        if proc.returncode != 0 or not _built(p['path']):
            with open(log.name) as f:
                failed.append(f"{v['name']} ({log.name}):\n" + ''.join(f.readlines()[-20:]))
        else:
            with open(os.path.join(p['path'], STAMP), 'w') as f:
                json.dump(p['stamp'], f, indent=1)
    if failed:
        raise BuildABError('build_ab: the build failed for ' + '\n'.join(failed))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--variant', action='append', required=True, metavar='NAME[@REV]=[KNOB=VALUE,...]',
                        help='a build of mmkat._C (repeat: at least two)')
    parser.add_argument('--rounds', type=int, default=2, help='times every variant runs the benchmark, in turn')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'work_dirs', 'build_ab'),
                        help='where the variants are built (default work_dirs/build_ab)')
    parser.add_argument('--out', metavar='FILE', help="data file every run is appended to (the tool's --out)")
    parser.add_argument('--build-only', action='store_true', help='build the variants and stop')
    parser.add_argument('benchmark', nargs=argparse.REMAINDER,
                        help=f'after --: {" or ".join(TOOLS)} and its arguments (not --out or --build-label)')
    args = parser.parse_args(argv)
    command = args.benchmark[1:] if args.benchmark[:1] == ['--'] else args.benchmark
    if not args.build_only:
        if not command or command[0] not in TOOLS:
            parser.error(f'the benchmark to run follows --: one of {", ".join(TOOLS)}, got {command[:1] or "nothing"}')
        for arg in command[1:]:
            if arg.split('=')[0] in ('--out', '--build-label'):
                parser.error(f'{arg.split("=")[0]} is set by build_ab.py (use its own --out)')
    if args.rounds < 1:
        parser.error(f'--rounds must be >= 1, got {args.rounds}')
    try:
        variants = [parse_variant(spec) for spec in args.variant]
    except BuildABError as e:
        parser.error(str(e))
    names = [v['name'] for v in variants]
    if len(set(names)) != len(names):
        parser.error(f'variant names must differ, got {names}')
    if len(variants) < 2 and not args.build_only:
        parser.error('compare at least two --variant')
    return args, variants, command


def main(argv=None) -> int:
    args, variants, command = parse_args(argv)
    out = os.path.abspath(args.out) if args.out else None
    try:
        os.makedirs(args.workdir, exist_ok=True)
        prepared = [prepare(v, args.workdir) for v in variants]
        t0 = time.perf_counter()
        build_all(variants, prepared)
        print(f'build_ab: variants ready ({time.perf_counter() - t0:.0f} s)', flush=True)
    except BuildABError as e:
        print(e, file=sys.stderr)
        return 1
    if args.build_only:
        return 0
    tool = os.path.join(ROOT, command[0])
    for round_ in range(1, args.rounds + 1):
        for v, p in zip(variants, prepared):
            cmd = [sys.executable, tool, *command[1:], '--build-label', label(v)] + (['--out', out] if out else [])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [p['path'], os.environ.get('PYTHONPATH')])))
            print(f'build_ab: round {round_}/{args.rounds}, {label(v)}', flush=True)
            rc = subprocess.run(cmd, cwd=p['path'], env=env).returncode
            if rc != 0:
                print(f'build_ab: {command[0]} failed (exit {rc}) for {label(v)}', file=sys.stderr)
                return rc
    return 0


if __name__ == '__main__':
    sys.exit(main())
