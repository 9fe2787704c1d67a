"""Train a model from any mmengine config (mmpretrain classification, mmdet detection, mmseg segmentation).

Examples::

    python tools/train.py CONFIG                        # work dir: ./work_dirs/<config file name>
    python tools/train.py CONFIG --resume               # continue from the work dir's latest checkpoint
    python tools/train.py CONFIG --resume CKPT          # continue from CKPT
    python tools/train.py CONFIG --amp --cfg-options train_dataloader.batch_size=64
    bash tools/dist_train.sh CONFIG 8                   # 8 GPUs on this machine (torchrun)

A work dir that already holds checkpoints is never trained into from scratch by accident: pass --resume to
continue the run in it or --overwrite to start again (or choose another --work-dir).
"""
import argparse
import glob
import os
import os.path as osp
import socket
import sys

import mmkat  # noqa: F401  (registers mmkat's modules, checkpoint allowlist and weights references)

PROG = 'tools/train.py'


def fail(message):
    """Stop with a one-line error on stderr and exit status 1."""
    sys.exit(f'{PROG}: error: {message}')


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Train a model from an mmengine config (mmpretrain, mmdet, mmseg or plain mmengine).')
    parser.add_argument('config', help='config file (.py)')
    parser.add_argument(
        '--work-dir',
        help="folder for logs and checkpoints (default: the config's work_dir, else "
        './work_dirs/<config file name without .py>)')
    parser.add_argument(
        '--resume', nargs='?', const='auto', metavar='CKPT',
        help='continue training: with no value, from the newest complete checkpoint in the work dir (the one '
        'its last_checkpoint file names, else the highest epoch_/iter_ file; refused when there is none); '
        'with a path, from that checkpoint (model, optimizer, schedulers, epoch/iteration and logs)')
    parser.add_argument(
        '--overwrite', action='store_true',
        help='train from scratch in a work dir that already holds checkpoints. mmengine writes new '
        'time-stamped log folders next to the old ones, but checkpoints of the same name (epoch_N.pth, '
        'iter_N.pth, best_*.pth, last_checkpoint) are replaced as the new run saves them')
    parser.add_argument(
        '--amp', action='store_true',
        help="automatic mixed precision: turn the config's OptimWrapper into an AmpOptimWrapper with "
        "loss_scale='dynamic' (needs a GPU; mmengine refuses AMP on the CPU)")
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help="enable the config's auto_scale_lr: scale the learning rate by the actual total batch size "
        'over auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. train_cfg.max_epochs=3 optim_wrapper.optimizer.lr=1e-3; '
        'lists as key="[a,b]" or key=a,b, nested as key="[(a,b),(c,d)]", quoted and without spaces. '
        'Applied before the flags above')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher (tools/dist_train.sh and tools/slurm_train.sh set it)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank (older releases)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _is_remote(path):
    return '://' in str(path)


def _switch_to_amp(cfg):
    optim_wrapper = cfg.get('optim_wrapper')
    if not optim_wrapper:
        fail("--amp switches the config's optim_wrapper to an AmpOptimWrapper, but the config has no "
             'optim_wrapper')
    wrapper_type = optim_wrapper.get('type', 'OptimWrapper')
    name = wrapper_type if isinstance(wrapper_type, str) else getattr(wrapper_type, '__name__', '')
    name = name.split('.')[-1]  # 'mmengine.OptimWrapper' -> 'OptimWrapper'
    if name == 'AmpOptimWrapper':
        fail("the config's optim_wrapper already is an AmpOptimWrapper: drop --amp")
    if name != 'OptimWrapper' or 'optimizer' not in optim_wrapper:
        what = f'type {name or wrapper_type!r}' if 'optimizer' in optim_wrapper else 'several optimizers'
        fail("--amp only converts a plain OptimWrapper with one optimizer; the config's optim_wrapper has "
             f'{what}: set up mixed precision in the config instead')
    optim_wrapper.type = 'AmpOptimWrapper'
    optim_wrapper.setdefault('loss_scale', 'dynamic')


def merge_args(cfg, args):
    """Apply the command line to the loaded config ``cfg`` (in place) and return it.

    ``--cfg-options`` is merged first, as if the config file said so; the flags are applied on top.
    """
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    cfg.launcher = args.launcher

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif not cfg.get('work_dir'):
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        _switch_to_amp(cfg)

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr')
        if not auto_scale_lr:
            fail('--auto-scale-lr needs an auto_scale_lr entry in the config, e.g. '
                 'auto_scale_lr = dict(base_batch_size=256); this config has none')
        if 'base_batch_size' not in auto_scale_lr:
            fail("--auto-scale-lr: the config's auto_scale_lr has no base_batch_size (the total batch size "
                 'its learning rate was set for)')
        auto_scale_lr.enable = True

    if args.resume is not None and args.overwrite:
        fail('--resume continues the run in the work dir and --overwrite starts a new one: pass only one')
    if args.overwrite:
        cfg.resume = False  # start again, even where the config says resume=True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not _is_remote(args.resume) and not osp.isfile(args.resume):
            fail(f'--resume: checkpoint not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def checkpoint_dirs(cfg):
    """The local folders the run saves checkpoints into: the work dir, and the CheckpointHook's out_dir."""
    work_dir = cfg.work_dir
    dirs = [work_dir]
    hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    out_dir = hook.get('out_dir')
    if out_dir and not _is_remote(out_dir):
        # CheckpointHook saves into <out_dir>/<work dir's last component>
        dirs.append(osp.join(out_dir, osp.basename(work_dir.rstrip(osp.sep))))
    return dirs


def existing_checkpoints(cfg):
    hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    extensions = {'.pth', osp.splitext(hook.get('filename_tmpl') or '')[1]} - {''}
    found = []
    for folder in checkpoint_dirs(cfg):
        if _is_remote(folder) or not osp.isdir(folder):
            continue
        for ext in sorted(extensions):
            found.extend(sorted(glob.glob(osp.join(glob.escape(folder), '*' + ext))))
    return found


def guard_work_dir(cfg, args):
    """Refuse to start a new run over checkpoints that are already there, unless told to."""
    if cfg.get('resume'):  # --resume, or resume=True in the config: the run continues, nothing is lost
        return
    found = existing_checkpoints(cfg)
    if not found:
        return
    names = ', '.join(osp.basename(f) for f in found[:5]) + (', ...' if len(found) > 5 else '')
    folder = osp.dirname(found[0])
    if osp.abspath(folder) == osp.abspath(cfg.work_dir):
        where = f'the work dir {folder}'
    else:
        where = f"the CheckpointHook's folder {folder}"
    if args.overwrite:
        print(f'{PROG}: --overwrite: starting a new run in {where}, which holds {len(found)} checkpoint(s) '
              f'({names}); those with the names of the new checkpoints will be replaced', file=sys.stderr)
        return
    fail(f'{where} already holds {len(found)} checkpoint(s) ({names}). Pass --resume to continue that '
         'run from its latest checkpoint, --overwrite to start again (checkpoints of the same name get '
         'replaced), or another --work-dir.')


_WORK_DIR_LOCK = None  # the open lock file, held for the life of the process


def _launch_rank() -> int:
    for name in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'):
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    return 0


def lock_work_dir(cfg):
    """Refuse to train in a work dir where another tools/train.py run is training (their checkpoints and logs
    would overwrite each other). The first process of a launch holds an exclusive lock on
    ``<work dir>/.train.lock`` until it exits; the file itself is left in place and is harmless."""
    global _WORK_DIR_LOCK
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return None
    if _is_remote(cfg.work_dir) or _launch_rank() != 0:
        return None
    os.makedirs(cfg.work_dir, exist_ok=True)
    path = osp.join(cfg.work_dir, '.train.lock')
    handle = open(path, 'a+')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or 'another process'
        handle.close()
        fail(f'another tools/train.py run ({holder}) is training in the work dir {cfg.work_dir}; two runs there '
             'would overwrite each other\'s checkpoints and logs. Wait for it to end, or pass another --work-dir.')
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    handle.flush()
    _WORK_DIR_LOCK = handle
    return handle


def resolve_resume(cfg, args):
    """Resuming without a named checkpoint: pick the newest complete one in the work dir ourselves, so that
    an empty last_checkpoint, a truncated latest file or a moved work dir do not crash or restart the run."""
    if not cfg.get('resume') or cfg.get('load_from') or _is_remote(cfg.work_dir):
        return
    from mmkat.engine.resume import find_resume_checkpoint
    path, notes, found_any = find_resume_checkpoint(cfg.work_dir)
    for note in notes:
        print(f'{PROG}: resume: {note}', file=sys.stderr)
    if path is not None:
        print(f'{PROG}: resume: continuing from {path}', file=sys.stderr)
        cfg.load_from = path
        return
    if found_any:
        fail(f'--resume: the work dir {cfg.work_dir} holds checkpoints, but none is complete; name one with '
             '--resume CKPT, or pass --overwrite to start again')
    if args.resume == 'auto':
        fail(f'--resume: there is no checkpoint to resume from in {cfg.work_dir}; drop --resume to start a new '
             'run there')
    cfg.resume = False  # the config's resume=True with nothing there yet: a fresh start, nothing to lose


def _reason(error: BaseException) -> str:
    """``Type: the informative line`` of a failed load (torch's weights-only refusal names the refused global
    a few lines down; its first lines are advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if 'GLOBAL' in line or 'Unsupported global' in line]
    line = (named or lines or [''])[0]
    if len(line) > 160 and '. ' in line:
        line = line[:line.index('. ') + 1]  # torch's long 'failed finding central directory. This is ...'
    return f'{type(error).__name__}: {line}' if line else type(error).__name__


def _load_local_checkpoint(path):
    """torch.load ``path`` as mmengine will (torch's default weights_only, with the allowlist ``import mmkat``
    registered), memory-mapped where the file is in torch's zip format, so a large checkpoint costs little."""
    import zipfile

    import torch
    return torch.load(path, map_location='cpu', mmap=zipfile.is_zipfile(path))


def pretrained_references(node, path='model'):
    """(config path, init_cfg) of every ``Pretrained`` init_cfg of a KAT module in the model config."""
    found = []
    if isinstance(node, dict):
        init_cfg = node.get('init_cfg')
        if node.get('type') in ('KAT', 'mmkat.KAT') and isinstance(init_cfg, dict) and \
                init_cfg.get('type') == 'Pretrained' and init_cfg.get('checkpoint'):
            found.append((f'{path}.init_cfg.checkpoint', init_cfg))
        for key, value in node.items():
            found += pretrained_references(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += pretrained_references(value, f'{path}.{i}')
    return found


def check_pretrained(cfg):
    """Fetch and read the weights a KAT backbone starts from (``init_cfg=dict(type='Pretrained', ...)``) before
    anything is built or written: a failed download, a digest mismatch or a file that cannot be read stops the
    tool with one line naming the option, instead of a traceback once training has set up. The downloaded
    file stays in the cache, where the model then reads it."""
    from mmkat.hub import WeightsError, read_weights
    for where, init_cfg in pretrained_references(cfg.get('model')):
        try:
            read_weights(init_cfg['checkpoint'], check_digest=init_cfg.get('check_digest', True))
        except (WeightsError, FileNotFoundError, RuntimeError) as e:
            fail(f'{where}: {e}')


def check_checkpoint(cfg):
    """Read the checkpoint the run will load (``--resume``'s, or the config's ``load_from``) before anything is
    built or written, so that one that cannot be read stops the tool with one line naming it. Returns the
    checkpoint's ``meta`` dict when it has one, else None."""
    ref = cfg.get('load_from')
    if not ref or not isinstance(ref, str):
        return None
    what = '--resume' if cfg.get('resume') else 'load_from'
    import pickle

    from mmkat.hub import WeightsError, handled_by_mmkat
    if handled_by_mmkat(ref) or ref.startswith(('http://', 'https://')):
        # a weights name, hf_hub:, .safetensors or URL: fetched (once, into the cache the run then reads) and
        # digest-checked by mmkat.hub, or by mmengine's loader for other URLs
        from mmkat.engine.checkpoint_fit import read_as_mmengine
        try:
            read_as_mmengine(ref)
        except (ValueError, WeightsError) as e:
            fail(f'{what}: {e}')
        except (pickle.UnpicklingError, EOFError) as e:
            fail(f'{what}: {ref}: could not be read as a checkpoint ({_reason(e)})')
        return None
    if '://' in ref:  # another remote storage: read by mmengine's file backends when the run starts
        return None
    if not osp.isfile(ref):
        fail(f'{what}: checkpoint not found: {ref}')
    try:
        checkpoint = _load_local_checkpoint(ref)
    except pickle.UnpicklingError as e:  # refused by weights_only, or a broken pickle
        fail(f'{ref}: could not be read as a checkpoint ({_reason(e)})')
    except Exception as e:  # any other failure to read it: truncated, not a torch file
        import zipfile
        what_it_is = '' if zipfile.is_zipfile(ref) else 'not a file torch.save wrote, or only part of one: '
        fail(f'{ref}: could not be read as a checkpoint ({what_it_is}{_reason(e)})')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if cfg.get('resume') and not (isinstance(meta, dict) and 'epoch' in meta and 'iter' in meta):
        fail(f'{ref}: --resume needs a training checkpoint (one that records the epoch and iteration it was saved '
             f'at), and this file does not record them; to train from its weights instead, pass --cfg-options '
             f'load_from={ref}')
    return meta if isinstance(meta, dict) else None


def take_resumed_seed(cfg, meta):
    """A resumed run of a config without a fixed ``randomness.seed`` uses the seed of the run it continues.

    mmengine restores that seed only once the data loader is built (and then re-seeds the generators that
    the checkpoint's states were restored into), so its sampler would shuffle by a new random seed."""
    if not cfg.get('resume') or not meta or meta.get('seed') is None:
        return
    randomness = dict(cfg.get('randomness') or {})
    if randomness.get('seed') is not None:
        return
    randomness['seed'] = meta['seed']
    cfg.randomness = randomness
    print(f"{PROG}: resume: the config's randomness.seed is None; using the resumed run's seed, {meta['seed']}",
          file=sys.stderr)


def _loop_kind(cfg) -> str:
    """'epoch' or 'iter' for mmengine's EpochBasedTrainLoop / IterBasedTrainLoop (by type, else by_epoch), else ''."""
    train_cfg = cfg.get('train_cfg') or {}
    kind = train_cfg.get('type')
    if kind is None:
        return 'epoch' if train_cfg.get('by_epoch', 'max_epochs' in train_cfg) else 'iter'
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return {'EpochBasedTrainLoop': 'epoch', 'IterBasedTrainLoop': 'iter'}.get(kind.split('.')[-1], '')


def resume_exactness_warning(cfg) -> str:
    """Why a resumed run will not end bitwise as the uninterrupted run would have, where the config says so;
    else ''. (The README's 'Checkpoints and resuming' lists what resumes bitwise.)

    * an epoch-based run whose train_dataloader keeps its worker processes (``persistent_workers=True``,
      ``num_workers`` > 0): each worker's random generators run on from epoch to epoch, inside the worker, where
      no checkpoint can take them from, so the resumed run's fresh workers draw other augmentations. Without
      persistent workers, every epoch starts new workers seeded from the config's seed, in a resumed run too.
    * an iteration-based run that loads its data in the main process (``num_workers=0``): mmengine skips the
      batches already trained by reading them again, and their augmentations draw from the random generators
      the checkpoint restored. With workers, that replay happens in freshly seeded workers, as it first did."""
    loader = cfg.get('train_dataloader') or {}
    workers = loader.get('num_workers') or 0
    kind = _loop_kind(cfg)
    if kind == 'epoch' and workers > 0 and loader.get('persistent_workers'):
        return (f'train_dataloader has persistent_workers=True with num_workers={workers}: its workers carry '
                'their random generators from epoch to epoch and no checkpoint holds them, so the resumed run draws '
                'other data augmentations than the uninterrupted run would have (same recipe, not bitwise the '
                'same weights). Runs trained with --cfg-options train_dataloader.persistent_workers=False from the '
                'start resume bitwise')
    if kind == 'iter' and workers == 0:
        return ('an iteration-based run with train_dataloader.num_workers=0: mmengine skips the batches already '
                'trained by loading them again in this process, which draws from the random generators the '
                'checkpoint restored, so the resumed run draws other random numbers than the uninterrupted run '
                'would have (same recipe, not bitwise the same weights). Runs trained with --cfg-options '
                'train_dataloader.num_workers=N (N >= 1) from the start resume bitwise')
    return ''


def use_safe_checkpoint_hook(cfg):
    """Put mmkat's KATCheckpointHook (atomic saves, nothing deleted at resume) in place of CheckpointHook."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook and hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook'):
        hook['type'] = 'KATCheckpointHook'


def schedule_mismatch(cfg):
    """A warning when an epoch-based run's learning-rate schedule ends before or after its last epoch (as
    when ``train_cfg.max_epochs`` is changed on the command line but the schedulers' ``end`` is not), else ''."""
    train_cfg = cfg.get('train_cfg') or {}
    max_epochs = train_cfg.get('max_epochs')
    schedulers = cfg.get('param_scheduler')
    if not max_epochs or not train_cfg.get('by_epoch', 'max_epochs' in train_cfg) or not schedulers:
        return ''
    schedulers = [schedulers] if isinstance(schedulers, dict) else list(schedulers)
    ends = [(i, s.get('end')) for i, s in enumerate(schedulers)
            if s.get('by_epoch', True) and isinstance(s.get('end'), (int, float)) and s.get('end') < 10**8]
    if not ends:
        return ''
    last, end = max(ends, key=lambda item: item[1])
    if end == max_epochs:
        return ''
    key = f'param_scheduler.{last}.end' if len(schedulers) > 1 else 'param_scheduler.end'
    if end < max_epochs:
        effect = f'the last {max_epochs - end} epoch(s) keep the final learning rate'
    else:
        effect = 'the learning rate never reaches the end of its schedule'
    return (f'the learning-rate schedule ends at epoch {end} but training runs {max_epochs} epochs: {effect}. '
            f'To fit the schedule to the run, also pass --cfg-options {key}={max_epochs}')


def _accelerator_available():
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        fail(f'config file not found: {args.config}')

    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg = merge_args(cfg, args)
    from mmkat.engine import prepare_runner, report_data_errors
    if args.amp and not _accelerator_available():
        fail("--amp needs a CUDA GPU (or an NPU, MLU or MUSA device): mmengine's AmpOptimWrapper refuses "
             'to train on the CPU. Drop --amp to train in fp32.')
    guard_work_dir(cfg, args)
    resolve_resume(cfg, args)
    meta = check_checkpoint(cfg)
    take_resumed_seed(cfg, meta)
    use_safe_checkpoint_hook(cfg)
    warnings = [schedule_mismatch(cfg)]
    if cfg.get('resume'):
        warnings.append(resume_exactness_warning(cfg))
    for warning in filter(None, warnings):
        print(f'{PROG}: warning: {warning}', file=sys.stderr)
    loaders = ('train_dataloader', 'val_dataloader') if cfg.get('val_cfg') is not None else ('train_dataloader', )
    # the lock after the data checks (a run that cannot start leaves no work dir behind) and before the runner
    # is built (its constructor writes the config copy and a log folder into the work dir)
    # the backbone's pretrained weights fetched once the data is known to be there (a download takes a while)
    def before_build():
        check_pretrained(cfg)
        lock_work_dir(cfg)

    runner = prepare_runner(cfg, args.config, loaders, 'trains on', fail, before_build=before_build)
    from mmkat.engine.hooks import CheckpointSaveError
    try:
        with report_data_errors(cfg, fail):
            runner.train()
    except CheckpointSaveError as e:
        fail(str(e))


if __name__ == '__main__':
    main()
