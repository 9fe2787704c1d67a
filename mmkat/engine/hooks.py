"""KATCheckpointHook: mmengine's CheckpointHook, without its ways of losing checkpoints.

mmengine 0.10.7's hook (1) deletes the oldest kept checkpoint BEFORE it writes the new one, so a kill
while saving with ``max_keep_ckpts=1`` leaves none; (2) writes the checkpoint and ``last_checkpoint`` in
place, so a kill can leave a truncated ``.pth`` or an empty ``last_checkpoint``; (3) on resume, deletes
every checkpoint beyond the config's ``max_keep_ckpts`` before training starts (also when the resume then
fails); (4) stores an absolute path in ``last_checkpoint``, so a moved work dir cannot resume and a copied
one resumes from the original folder. This hook, which ``tools/train.py`` puts in place of a config's
``CheckpointHook``:

* writes each checkpoint to a temporary name in the same folder and renames it when complete;
* then writes ``last_checkpoint`` the same way, holding the checkpoint's path relative to the work dir
  (when it lies inside it);
* removes an old checkpoint only after the new one is complete, and never at resume time (the ones a
  smaller ``max_keep_ckpts`` would drop are kept, and the log says so);
* when a save fails with an OSError (a full disk, a quota), removes the partial file it was writing, so
  that it does not keep the disk full, and raises :class:`CheckpointSaveError`, whose message names the
  last complete checkpoint to resume from;
* stores the random number generators' states (python, numpy, torch CPU and CUDA, of every rank) in each
  checkpoint and restores them on resume, so an interrupted and resumed run takes the same random draws
  (drop path, augmentation in the main process) as an uninterrupted one. For that, validation leaves the
  generators as it found them (it runs after the checkpoint is written, and a resumed run does not repeat
  it); training's random draws then do not depend on ``val_interval`` either.

Remote out_dirs (``s3://`` ...) keep mmengine's behaviour. Which checkpoint ``tools/train.py --resume`` continues
from is found by :mod:`mmkat.engine.resume`.
"""
import os
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS


def _rng_states() -> dict:
    states = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(state: dict) -> None:
    version, internal, gauss = state['python']  # a loaded checkpoint may hold lists where tuples were
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (an OSError such as a full disk). The message says which, why, and
    which checkpoint is the last complete one; the partial file has been removed."""


def _remove_quietly(path: str):
    """Remove ``path`` if it is there: True when removed, None when it was not there, False when it could not be."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    return True


def _fsync_file(path: str) -> None:
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f'{path}.partial'
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def last_checkpoint_entry(checkpoint: str, work_dir: str) -> str:
    """What ``last_checkpoint`` holds: the path relative to the work dir when inside it, else as given."""
    if '://' in checkpoint:
        return checkpoint
    rel = osp.relpath(osp.abspath(checkpoint), osp.abspath(work_dir))
    return checkpoint if rel.startswith(os.pardir) else rel


@HOOKS.register_module()
class KATCheckpointHook(CheckpointHook):
    """A CheckpointHook whose saves are atomic and which never deletes at resume (see the module doc)."""

    def _local(self) -> bool:
        return '://' not in str(self.out_dir)

    def before_train(self, runner) -> None:
        hub = runner.message_hub
        if self.max_keep_ckpts > 0 and 'keep_ckpt_ids' in hub.runtime_info:
            kept = list(hub.get_info('keep_ckpt_ids'))
            if len(kept) > self.max_keep_ckpts:
                older = kept[:-self.max_keep_ckpts]
                hub.update_info('keep_ckpt_ids', kept[-self.max_keep_ckpts:])
                runner.logger.info(
                    f'KATCheckpointHook: the resumed run kept {len(kept)} checkpoints and this config keeps '
                    f'{self.max_keep_ckpts}; the older ones ({", ".join(self.filename_tmpl.format(s) for s in older)})'
                    ' are left in place, not deleted')
        super().before_train(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # Runner.save_checkpoint runs on rank 0 only: every rank's states were gathered before it was called
        # (a best_*.pth checkpoint, saved outside that path, holds rank 0's).
        gathered, self._gathered_rng = getattr(self, '_gathered_rng', None), None
        checkpoint['rng_states'] = gathered or [_rng_states()]

    def before_val_epoch(self, runner) -> None:
        self._rng_before_val = _rng_states()

    def after_val_epoch(self, runner, metrics=None) -> None:
        state = getattr(self, '_rng_before_val', None)
        if state is not None:
            _set_rng_states(state)
            self._rng_before_val = None
        if self.save_best is not None:  # CheckpointHook's best_*.pth (save_best), as mmengine does it
            super().after_val_epoch(runner, metrics or {})

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.dist import get_rank
        states = checkpoint.get('rng_states')
        rank = get_rank()
        if not states or rank >= len(states):
            runner.logger.info('KATCheckpointHook: the checkpoint holds no random generator states for this rank; '
                               'the resumed run draws other random numbers than an uninterrupted one would')
            return
        _set_rng_states(states[rank])
        runner.logger.info(f'KATCheckpointHook: random generator states of rank {rank} restored')

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        drop = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                drop = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        final = osp.join(self.out_dir, filename)
        self.last_ckpt = final
        runner.message_hub.update_info('last_ckpt', final)
        partial = f'.{filename}.partial'
        from mmengine.dist import all_gather_object, get_world_size
        states = _rng_states()  # collective: every rank calls this method
        self._gathered_rng = all_gather_object(states) if get_world_size() > 1 else [states]
        partial_path = osp.join(self.out_dir, partial)
        marker = osp.join(runner.work_dir, 'last_checkpoint')
        previous = _last_complete(runner.work_dir) if is_main_process() else None  # before this save
        written = False
        try:
            runner.save_checkpoint(self.out_dir, partial, self.file_client_args, save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
            if not is_main_process():
                return
            _fsync_file(partial_path)  # where a full disk shows only when the data reaches it
            os.replace(partial_path, final)
            written = True
            _atomic_write_text(marker, last_checkpoint_entry(final, runner.work_dir))
        except BaseException as e:
            removed = _remove_quietly(partial_path) if is_main_process() else None
            if not isinstance(e, OSError) or not is_main_process():
                raise
            raise CheckpointSaveError(_save_failure_message(final, partial_path, marker, e, removed, written,
                                                            previous)) from e
        if drop is not None and drop != step:
            old = osp.join(self.out_dir, self.filename_tmpl.format(drop))
            if osp.isfile(old):
                os.remove(old)


def _last_complete(work_dir: str):
    """The checkpoint ``<work_dir>/last_checkpoint`` names (a relative entry made absolute), if it is a file."""
    try:
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            entry = f.read().strip()
    except OSError:
        return None
    if not entry or '://' in entry:
        return entry or None
    path = entry if osp.isabs(entry) else osp.join(work_dir, entry)
    return path if osp.isfile(path) else None


def _save_failure_message(final, partial_path, marker, error, removed, written, previous) -> str:
    reason = error.strerror or str(error) or type(error).__name__
    if written:  # the checkpoint is complete; only last_checkpoint could not be updated
        return (f'the checkpoint {final} was written, but {marker} could not be updated ({reason}); {final} is '
                f'the last complete checkpoint: once there is space again, continue with --resume {final}')
    cleanup = {True: f'; the partial file {partial_path} was removed',
               False: f'; the partial file {partial_path} could not be removed, delete it by hand',
               None: ''}[removed]
    if previous:
        last = f'the last complete checkpoint is {previous}: once there is space again, continue from it with --resume'
    else:
        last = 'there is no complete checkpoint of this run yet'
    return f'could not write the checkpoint {final} ({reason}){cleanup}; {last}'
