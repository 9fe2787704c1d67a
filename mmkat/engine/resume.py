"""Which checkpoint a resumed run continues from, when the user names none (``tools/train.py --resume``).

mmengine's own choice reads ``<work_dir>/last_checkpoint`` and fails on an empty file, a truncated checkpoint or
a work dir that was moved. :func:`find_resume_checkpoint` reads what :class:`mmkat.engine.KATCheckpointHook`
writes there (a path relative to the work dir) and also older absolute entries, and falls back to the work
dir's ``epoch_*.pth`` / ``iter_*.pth`` files, skipping any that were not written to the end.
"""
import glob
import os.path as osp
import zipfile
from typing import List, Optional, Tuple

import torch

__all__ = ['checkpoint_is_complete', 'find_resume_checkpoint']


def checkpoint_is_complete(path: str) -> bool:
    """A cheap check that a torch checkpoint file was written to the end: torch's zip format keeps its
    directory at the end of the file, which a truncated file lacks. (A pre-zip file is loaded instead.)"""
    try:
        if osp.getsize(path) == 0:
            return False
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.endswith('/data.pkl') or n == 'data.pkl' for n in z.namelist())
        torch.load(path, map_location='cpu', weights_only=True)
        return True
    except Exception:
        return False


def _step_of(name: str) -> int:
    digits = ''.join(c if c.isdigit() else ' ' for c in name).split()
    return int(digits[-1]) if digits else -1


def find_resume_checkpoint(work_dir: str) -> Tuple[Optional[str], List[str], bool]:
    """The checkpoint a resume in ``work_dir`` continues from, and notes on what was passed over.

    ``last_checkpoint`` first (a relative entry is relative to the work dir; an absolute one that is gone,
    or lies outside the work dir while a file of that name is inside it, is looked for in the work dir),
    then the work dir's ``epoch_*.pth`` / ``iter_*.pth`` from the highest step down. Files that were not
    written to the end are skipped. Returns (path or None, notes, found_any_checkpoint).
    """
    notes, tried = [], set()
    marker = osp.join(work_dir, 'last_checkpoint')
    candidates = []
    if osp.isfile(marker):
        with open(marker) as f:
            entry = f.read().strip()
        if not entry:
            notes.append(f'{marker} is empty')
        else:
            path = entry if osp.isabs(entry) or '://' in entry else osp.join(work_dir, entry)
            local = osp.join(work_dir, osp.basename(entry))
            outside = osp.isabs(entry) and osp.dirname(osp.abspath(entry)) != osp.abspath(work_dir)
            if '://' not in entry and (not osp.isfile(path) or outside) and osp.isfile(local):
                notes.append(f'last_checkpoint names {entry}; using the file of that name in the work dir, {local}')
                path = local
            candidates.append(path)
    pattern = [p for p in glob.glob(osp.join(glob.escape(work_dir), '*.pth'))
               if osp.basename(p).startswith(('epoch_', 'iter_'))]
    candidates += sorted(pattern, key=lambda p: _step_of(osp.basename(p)), reverse=True)
    found_any = bool(pattern) or bool(candidates)
    for path in candidates:
        if path in tried:
            continue
        tried.add(path)
        if '://' in path:
            return path, notes, True
        if not osp.isfile(path):
            notes.append(f'{path} (named by last_checkpoint) does not exist')
            continue
        if not checkpoint_is_complete(path):
            notes.append(f'{path} is incomplete (written only in part), skipped')
            continue
        return path, notes, True
    return None, notes, found_any
