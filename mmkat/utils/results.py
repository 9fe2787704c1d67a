"""Benchmark results: one JSON data file per benchmark and machine, to which every run is appended.

A data file (``benchmarks/results/<benchmark>_<machine>.json``) holds::

    {"benchmark": "<the tool and what it measures>",
     "runs": [RUN, RUN, ...]}

and every RUN holds what the tool measured (``rows``, ``settings``, ...) and where it comes from:

``command``
    the command line that made it (``python tools/benchmark.py ...``);
``machine``
    the GPU's name (``NVIDIA H200``; ``2 x NVIDIA H200`` for a run on two), or the CPU's model and core count;
``versions``
    ``python``, ``torch``, ``cuda`` (the CUDA version torch was built with), ``mmkat``, ``mmkat_commit`` (the
    checkout's commit, ``-dirty`` when it had uncommitted changes) and ``extension`` (``mmkat.ops.extension_info()``);
``date``
    when the run started (ISO 8601).

A field that was not recorded is ``null``.

:func:`save_results` appends a run to its file and creates the file on the first run: an earlier run is never
replaced, and no second, time-stamped file is written beside it. A file that is not a data file of this kind,
or one of another benchmark or of another machine, is refused (:class:`ResultsFileError`): such runs go to a
file of their own. ``benchmarks/make_tables.py`` makes the tables of ``benchmarks/README.md`` from the data
files.
"""
import datetime
import json
import os
import platform
import shlex
import subprocess
from typing import Optional, Sequence

RUN_FIELDS = ('command', 'machine', 'versions', 'date')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ResultsFileError(ValueError):
    """A results file that a run cannot be appended to, or that is not a data file."""


def cpu_name() -> str:
    """The CPU's model name and core count, e.g. ``AMD EPYC, 2 cores``."""
    model = None
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), None)
    except OSError:
        pass
    return f'{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores'


def machine_name(device=None, gpus: int = 1) -> str:
    """The GPU's name for a CUDA ``device`` (``'2 x NAME'`` for ``gpus=2``), else :func:`cpu_name`."""
    import torch
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        return f'{gpus} x {name}' if gpus > 1 else name
    return cpu_name()


def _git_commit() -> Optional[str]:
    """The commit of the checkout mmkat is imported from (``-dirty`` with uncommitted changes); None outside
    a git checkout."""
    if not os.path.exists(os.path.join(ROOT, '.git')):
        return None
    try:
        commit = subprocess.run(['git', '-C', ROOT, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        changed = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--untracked-files=no'],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f'{commit}-dirty' if changed else commit or None


def versions() -> dict:
    """python, torch, torch's CUDA, mmkat, the checkout's commit and mmkat._C's build (None where unknown)."""
    import torch
    found = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda, mmkat=None,
                 mmkat_commit=_git_commit(), extension=None)
    try:
        from mmkat.version import __version__
        found['mmkat'] = __version__
        from mmkat.ops import extension_info
        found['extension'] = extension_info()
    except ImportError:
        pass
    return found


def command_line(script: str, argv: Sequence[str]) -> str:
    """``python SCRIPT ARGS`` with SCRIPT relative to the repository (``tools/benchmark.py``)."""
    path = os.path.abspath(script)
    if path.startswith(ROOT + os.sep):
        path = os.path.relpath(path, ROOT)
    return shlex.join(['python', path, *argv])


def now() -> str:
    """The local time, ISO 8601 to the second: a run's ``date``."""
    return datetime.datetime.now().isoformat(timespec='seconds')


def new_run(command: str, device=None, gpus: int = 1, date: Optional[str] = None, **fields) -> dict:
    """A run record: ``command``, the machine of ``device``, the versions and ``date`` (when the run started;
    default: now), then ``fields``."""
    run = dict(command=command, machine=machine_name(device, gpus), versions=versions(), date=date or now())
    run.update(fields)
    return run


def load_results(path: str) -> dict:
    """Read a data file; :class:`ResultsFileError` when it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except ValueError as e:
        raise ResultsFileError(f'{path} is not JSON ({e})') from None
    runs = data.get('runs') if isinstance(data, dict) else None
    if not isinstance(runs, list) or not isinstance(data.get('benchmark'), str):
        raise ResultsFileError(f'{path} is not a results data file (expected {{"benchmark": ..., "runs": [...]}})')
    for i, run in enumerate(runs):
        missing = [k for k in RUN_FIELDS if not isinstance(run, dict) or k not in run]
        if missing:
            raise ResultsFileError(f'{path}: run {i} lacks {missing}')
    return data


def check_results_file(path: str, benchmark: str, machine: str) -> dict:
    """The data file at ``path`` (an empty one if there is none) when a run of ``benchmark`` made on
    ``machine`` may be appended to it, else :class:`ResultsFileError`. Tools call it before they measure."""
    if not os.path.exists(path):
        return dict(benchmark=benchmark, runs=[])
    data = load_results(path)
    if data['benchmark'] != benchmark:
        raise ResultsFileError(f'{path} holds the runs of another benchmark ({data["benchmark"]!r}); '
                               f'write this one ({benchmark!r}) to another file')
    machines = {r['machine'] for r in data['runs']}
    if machines and machine not in machines:
        raise ResultsFileError(f'{path} holds runs made on {sorted(machines)}, this one runs on {machine!r}: '
                               'write it to a file of its own')
    return data


def save_results(path: str, run: dict, benchmark: str) -> str:
    """Append ``run`` (made by :func:`new_run`) to the data file ``path`` of ``benchmark``, creating the file
    when there is none; refuse (:class:`ResultsFileError`) a file that is not a data file, or one of another
    benchmark or machine. Returns ``path``."""
    missing = [k for k in RUN_FIELDS if k not in run]
    if missing:
        raise ValueError(f'save_results: the run lacks {missing} (make it with new_run)')
    data = check_results_file(path, benchmark, run['machine'])
    data['runs'].append(run)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f'{path}.partial'
    with open(partial, 'w') as f:
        json.dump(data, f, indent=1, default=str)
        f.write('\n')
    os.replace(partial, path)
    print(f'{path}: run {len(data["runs"])} appended')
    return path
