"""Nothing lost, nothing faked: tools/test.py refuses checkpoints that do not fit, outputs and configs are
never overwritten silently, and resuming survives an empty last_checkpoint, a truncated checkpoint, a moved
work dir and a smaller max_keep_ckpts; a second run in a busy work dir writes nothing there, a full disk while
saving leaves no partial file, an unreadable checkpoint is named in one line, and resuming says when it will not
be bitwise. On the tiny LeNet set-up of test_train_tools, and on the CPU demo."""
import errno
import hashlib
import os
import shutil

import pytest
import torch

from .test_train_tools import ROOT, TEST, TRAIN, run_tool, tiny, train_module  # noqa: F401  (fixtures)

DEMO = os.path.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')
# the demo, made small: 2 epochs of 32 images, a checkpoint after each
DEMO_SMALL = ['--cfg-options', 'train_dataloader.dataset.num_per_class=4', 'val_dataloader.dataset.num_per_class=2',
              'train_dataloader.batch_size=8', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
              'default_hooks.checkpoint.interval=1']


def files(folder):
    """{name: sha256} of every file in ``folder`` (recursively, relative names)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def tree(folder):
    """The folders and {name: sha256} of the files under ``folder`` (recursively, relative names)."""
    dirs = sorted(os.path.relpath(os.path.join(root, d), folder) for root, names, _ in os.walk(folder) for d in names)
    return dirs, files(folder)


def train(tiny, work, *extra):
    rc, log = run_tool(TRAIN, tiny.config, '--work-dir', work, *extra, cwd=tiny.root)
    return rc, log


@pytest.fixture(scope='module')
def run2(tiny, tmp_path_factory):
    """A finished 2-epoch run (KATCheckpointHook in place of the config's CheckpointHook)."""
    work = tmp_path_factory.mktemp('run2') / 'work'
    rc, log = train(tiny, work)
    assert rc == 0, log[-3000:]
    return work


# ------------------------------------------------------------------------------------- tools/test.py
def test_checkpoint_that_does_not_fit_is_refused(tiny, run2, tmp_path):
    import torchvision
    resnet = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    empty = tmp_path / 'empty.pth'
    torch.save({}, empty)
    sd = torch.load(run2 / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    no_prefix = tmp_path / 'no_prefix.pth'
    torch.save({k.split('.', 1)[1]: v for k, v in sd.items()}, no_prefix)  # 'backbone.x' -> 'x'
    nan = tmp_path / 'nan.pth'
    bad = dict(sd)
    first = next(iter(bad))
    bad[first] = torch.full_like(bad[first], float('nan'))
    torch.save(dict(state_dict=bad), nan)
    broken = tmp_path / 'broken.pth'
    broken.write_bytes((run2 / 'epoch_2.pth').read_bytes()[:2000])
    for path, message in ((resnet, 'model parameters are not in it'), (empty, 'model parameters are not in it'),
                          (no_prefix, 'model parameters are not in it'), (nan, 'hold NaN or inf'),
                          (broken, 'could not be read as a checkpoint')):
        rc, log = run_tool(TEST, tiny.config, path, '--work-dir', tmp_path / 'test', cwd=tiny.root)
        assert rc == 1 and message in log and str(path) in log, (path, log[-2000:])
        assert 'accuracy/top1' not in log and 'Traceback' not in log
    rc, log = run_tool(TEST, tiny.config, no_prefix, '--work-dir', tmp_path / 'test', '--allow-partial',
                       cwd=tiny.root)
    assert rc == 0 and 'warning (--allow-partial)' in log and 'accuracy/top1' in log
    rc, log = run_tool(TEST, tiny.config, run2 / 'epoch_2.pth', '--work-dir', tmp_path / 'test', cwd=tiny.root)
    assert rc == 0 and 'accuracy/top1' in log and 'warning (--allow-partial)' not in log


def test_out_file_is_never_overwritten_without_force(tiny, run2, tmp_path):
    out = tmp_path / 'preds.pkl'
    out.write_bytes(b'keep me')
    args = (TEST, tiny.config, run2 / 'epoch_2.pth', '--work-dir', tmp_path / 'test', '--out', out)
    rc, log = run_tool(*args, cwd=tiny.root)
    assert rc == 1 and 'exists' in log and '--force' in log and out.read_bytes() == b'keep me'
    rc, log = run_tool(*args, '--force', cwd=tiny.root)
    assert rc == 0 and out.read_bytes() != b'keep me'


def test_a_config_inside_the_work_dir_is_not_overwritten(tiny, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    config = work / 'lenet_tiny.py'
    shutil.copy(tiny.config, config)
    before = config.read_bytes()
    for tool in (TRAIN, TEST):
        args = (config, '--work-dir', work) if tool == TRAIN else (config, tmp_path / 'x.pth', '--work-dir', work)
        if tool == TEST:
            (tmp_path / 'x.pth').write_bytes(b'')
        rc, log = run_tool(tool, *args, cwd=tiny.root)
        assert rc == 1 and 'lies in the work dir' in log, log[-2000:]
    assert config.read_bytes() == before


# ------------------------------------------------------------------------------------------- resuming
def test_resume_with_nothing_to_resume_is_refused(tiny, tmp_path):
    rc, log = train(tiny, tmp_path / 'empty', '--resume')
    assert rc == 1 and 'no checkpoint to resume from' in log and 'Epoch(train)' not in log


def test_resume_falls_back_past_an_empty_marker_and_a_truncated_checkpoint(tiny, run2, tmp_path):
    work = tmp_path / 'work'
    shutil.copytree(run2, work)
    (work / 'last_checkpoint').write_text('')                    # a kill while writing the marker
    good = (work / 'epoch_2.pth').read_bytes()
    (work / 'epoch_2.pth').write_bytes(good[:len(good) // 2])     # ... and while writing epoch 2
    rc, log = train(tiny, work, '--resume', '--cfg-options', 'train_cfg.max_epochs=3')
    assert rc == 0, log[-3000:]
    assert 'last_checkpoint is empty' in log and 'epoch_2.pth is incomplete' in log
    assert 'continuing from' in log and 'epoch_1.pth' in log and 'resumed epoch: 1' in log
    assert (work / 'epoch_3.pth').is_file()


def test_moved_work_dir_resumes_from_its_own_files(tiny, run2, tmp_path):
    assert (run2 / 'last_checkpoint').read_text() == 'epoch_2.pth'  # relative to the work dir
    moved = tmp_path / 'moved'
    shutil.copytree(run2, moved)
    original = files(run2)
    rc, log = train(tiny, moved, '--resume', '--cfg-options', 'train_cfg.max_epochs=3')
    assert rc == 0, log[-3000:]
    assert f'continuing from {moved / "epoch_2.pth"}' in log and 'resumed epoch: 2' in log
    assert files(run2) == original  # the folder it was copied from is untouched


def test_old_style_absolute_marker_of_a_copied_work_dir_uses_the_copy(tiny, run2, tmp_path):
    copy = tmp_path / 'copy'
    shutil.copytree(run2, copy)
    (copy / 'last_checkpoint').write_text(str(run2 / 'epoch_2.pth'))  # what mmengine's own hook writes
    rc, log = train(tiny, copy, '--resume', '--cfg-options', 'train_cfg.max_epochs=3')
    assert rc == 0, log[-3000:]
    assert f'continuing from {copy / "epoch_2.pth"}' in log


def test_resume_under_a_smaller_max_keep_ckpts_deletes_nothing(tiny, run2, tmp_path):
    work = tmp_path / 'work'
    shutil.copytree(run2, work)
    before = files(work)
    rc, log = train(tiny, work, '--resume', '--cfg-options', 'train_cfg.max_epochs=2',
                    'default_hooks.checkpoint.max_keep_ckpts=1')
    assert rc == 0, log[-3000:]
    after = files(work)
    assert all(name in after and after[name] == digest for name, digest in before.items() if name.endswith('.pth'))


def test_max_keep_ckpts_keeps_the_old_checkpoint_until_the_new_one_is_complete(tiny, tmp_path, monkeypatch):
    """KATCheckpointHook: a save that dies leaves the previous checkpoint and last_checkpoint as they were;
    a save that completes replaces them, and no partial file is left."""
    from mmengine.logging import MessageHub

    from mmkat.engine import KATCheckpointHook

    class Runner:
        work_dir = str(tmp_path)
        message_hub = MessageHub.get_instance('kat_ckpt_test')
        logger = None
        fail = False

        def save_checkpoint(self, out_dir, filename, *args, **kwargs):
            path = os.path.join(out_dir, filename)
            with open(path, 'wb') as f:
                f.write(b'partial' if self.fail else b'complete ' + filename.encode())
            if self.fail:
                raise KeyboardInterrupt('killed while saving')

    hook = KATCheckpointHook(interval=1, max_keep_ckpts=1)
    hook.out_dir, hook.keep_ckpt_ids = str(tmp_path), __import__('collections').deque([], 1)
    runner = Runner()
    hook._save_checkpoint_with_step(runner, 1, dict(epoch=1))
    assert (tmp_path / 'epoch_1.pth').is_file() and (tmp_path / 'last_checkpoint').read_text() == 'epoch_1.pth'
    runner.fail = True
    with pytest.raises(KeyboardInterrupt):
        hook._save_checkpoint_with_step(runner, 2, dict(epoch=2))
    assert (tmp_path / 'epoch_1.pth').read_bytes().startswith(b'complete')
    assert (tmp_path / 'last_checkpoint').read_text() == 'epoch_1.pth' and not (tmp_path / 'epoch_2.pth').exists()
    runner.fail = False
    hook.keep_ckpt_ids = __import__('collections').deque([1], 1)
    hook._save_checkpoint_with_step(runner, 2, dict(epoch=2))
    assert not (tmp_path / 'epoch_1.pth').exists() and (tmp_path / 'epoch_2.pth').is_file()
    assert (tmp_path / 'last_checkpoint').read_text() == 'epoch_2.pth'
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.partial') and 'epoch_2' in p]


@pytest.mark.slow
@pytest.mark.parametrize(
    'loader', [[], ['train_dataloader.num_workers=2', 'train_dataloader.persistent_workers=False']],
    ids=['main-process', 'workers'])
def test_interrupted_and_resumed_run_ends_bitwise_equal(tmp_path, loader):
    """The demo (drop path 0.05, random flip): 2 epochs straight, and the same run resumed from its epoch-1
    checkpoint alone, end with the same weights to the bit; with the data loaded in the main process, and by
    loader workers that start anew each epoch (persistent_workers=False)."""
    import subprocess
    import sys

    def train_tool(work, *extra):
        proc = subprocess.run([sys.executable, TRAIN, DEMO, '--work-dir', str(work), *extra, *DEMO_SMALL, *loader],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    straight = tmp_path / 'straight'
    train_tool(straight)
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(straight / 'epoch_1.pth', resumed / 'epoch_1.pth')
    (resumed / 'last_checkpoint').write_text('epoch_1.pth')
    log = train_tool(resumed, '--resume')
    assert 'random generator states of rank 0 restored' in log and 'resumed epoch: 1' in log
    assert 'not bitwise' not in log
    a = torch.load(straight / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    b = torch.load(resumed / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


# ------------------------------------------------------------------------------- a busy work dir
def test_a_second_run_in_a_busy_work_dir_writes_nothing_there(tmp_path):
    """The work-dir lock is taken before mmengine's Runner is built: the refused run neither replaces the
    running run's config copy nor adds a log folder."""
    fcntl = pytest.importorskip('fcntl')
    work = tmp_path / 'work'
    log_dir = work / '20240101_120000'
    (log_dir / 'vis_data').mkdir(parents=True)
    (log_dir / '20240101_120000.log').write_text("the running run's log\n")
    (work / 'kat_demo_shapes.py').write_text("# the running run's copy of its config\n")
    with open(work / '.train.lock', 'a+') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the running tools/train.py holds
        lock.write('pid 4242 on the-other-host\n')
        lock.flush()
        before = tree(work)
        rc, log = run_tool(TRAIN, DEMO, '--work-dir', work, cwd=tmp_path)
        after = tree(work)
    assert rc == 1, log[-3000:]
    assert 'another tools/train.py run (pid 4242 on the-other-host) is training' in log and 'Traceback' not in log
    assert after == before  # the config copy byte for byte, no new file or folder anywhere below the work dir
    assert (work / 'kat_demo_shapes.py').read_text() == "# the running run's copy of its config\n"


# ----------------------------------------------------------------------------- a full disk while saving
class _SavingRunner:
    """What KATCheckpointHook._save_checkpoint_with_step needs of a Runner; ``disk_full`` makes the next save
    write half a file and fail as a full disk does."""

    def __init__(self, work_dir, name):
        from mmengine.logging import MessageHub
        self.work_dir = str(work_dir)
        self.message_hub = MessageHub.get_instance(name)
        self.logger = None
        self.disk_full = False

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        with open(os.path.join(out_dir, filename), 'wb') as f:
            f.write(b'half a checkpoint' if self.disk_full else b'complete ' + filename.encode())
        if self.disk_full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_saving_removes_the_partial_file(tmp_path, monkeypatch):
    import collections

    from mmkat.engine import KATCheckpointHook
    from mmkat.engine.hooks import CheckpointSaveError

    hook = KATCheckpointHook(interval=1, max_keep_ckpts=1)
    hook.out_dir, hook.keep_ckpt_ids = str(tmp_path), collections.deque([], 1)
    runner = _SavingRunner(tmp_path, 'kat_ckpt_full_disk')
    runner.disk_full = True
    with pytest.raises(CheckpointSaveError) as info:  # before any checkpoint is complete
        hook._save_checkpoint_with_step(runner, 1, dict(epoch=1))
    message = str(info.value)
    assert f'could not write the checkpoint {tmp_path / "epoch_1.pth"} (No space left on device)' in message
    assert 'was removed' in message and 'no complete checkpoint of this run yet' in message
    assert os.listdir(tmp_path) == []

    runner.disk_full = False
    hook.keep_ckpt_ids = collections.deque([], 1)
    hook._save_checkpoint_with_step(runner, 1, dict(epoch=1))
    runner.disk_full = True
    with pytest.raises(CheckpointSaveError) as info:
        hook._save_checkpoint_with_step(runner, 2, dict(epoch=2))
    message = str(info.value)
    assert f'the partial file {tmp_path / ".epoch_2.pth.partial"} was removed' in message
    assert f'the last complete checkpoint is {tmp_path / "epoch_1.pth"}' in message and '--resume' in message
    assert '\n' not in message
    assert sorted(os.listdir(tmp_path)) == ['epoch_1.pth', 'last_checkpoint']  # epoch 1 kept: nothing half-done
    assert (tmp_path / 'last_checkpoint').read_text() == 'epoch_1.pth'

    # the disk fills while last_checkpoint is written: its partial file goes too, the new checkpoint is named
    runner.disk_full = False
    hook.keep_ckpt_ids = collections.deque([1], 1)
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the checkpoint's partial file, then last_checkpoint's
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    with pytest.raises(CheckpointSaveError) as info:
        hook._save_checkpoint_with_step(runner, 2, dict(epoch=2))
    monkeypatch.setattr(os, 'fsync', real_fsync)
    message = str(info.value)
    assert f'{tmp_path / "last_checkpoint"} could not be updated (No space left on device)' in message
    assert f'continue with --resume {tmp_path / "epoch_2.pth"}' in message
    assert sorted(os.listdir(tmp_path)) == ['epoch_1.pth', 'epoch_2.pth', 'last_checkpoint']


FULL_DISK = '''
import errno, os, runpy, sys
from mmengine.fileio.backends.local_backend import LocalBackend
put, saves = LocalBackend.put, []

def full_disk_put(self, obj, filepath):
    if str(filepath).endswith('.partial'):
        saves.append(filepath)
        if len(saves) == int(os.environ['MMKAT_TEST_FULL_AT_SAVE']):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
    return put(self, obj, filepath)

LocalBackend.put = full_disk_put
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues(tmp_path):
    """The demo, with the disk full while its epoch-2 checkpoint is written: one line naming the last complete
    checkpoint, no partial file left; once saving works again, --resume continues from epoch 1."""
    import subprocess
    import sys
    wrapper = tmp_path / 'full_disk.py'
    wrapper.write_text(FULL_DISK)
    work = tmp_path / 'work'
    env = dict(os.environ, MMKAT_TEST_FULL_AT_SAVE='2')
    proc = subprocess.run([sys.executable, str(wrapper), TRAIN, DEMO, '--work-dir', str(work), *DEMO_SMALL],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert 'Traceback' not in log
    error = [line for line in log.splitlines() if line.startswith('tools/train.py: error:')]
    assert len(error) == 1 and log.rstrip().endswith(error[0]), log[-3000:]
    assert f'could not write the checkpoint {work / "epoch_2.pth"} (No space left on device)' in error[0]
    assert f'the last complete checkpoint is {work / "epoch_1.pth"}' in error[0]
    assert not [name for name in os.listdir(work) if 'partial' in name]
    assert not (work / 'epoch_2.pth').exists() and (work / 'last_checkpoint').read_text() == 'epoch_1.pth'

    rc, log = run_tool(TRAIN, DEMO, '--work-dir', work, '--resume', *DEMO_SMALL, cwd=tmp_path)
    assert rc == 0, log[-3000:]
    assert f'continuing from {work / "epoch_1.pth"}' in log and 'resumed epoch: 1' in log
    assert (work / 'epoch_2.pth').is_file() and (work / 'last_checkpoint').read_text() == 'epoch_2.pth'


# ---------------------------------------------------------------------------- unreadable checkpoints
def _unreadable_checkpoints(folder, good):
    class Pickled:  # refused by weights_only (it names a function to call)
        def __reduce__(self):
            return os.getcwd, ()

    truncated = folder / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:2000])
    text = folder / 'notes.pth'
    text.write_text('not a checkpoint\n')
    pickled = folder / 'pickled.pth'
    torch.save({'state_dict': {}, 'x': Pickled()}, pickled)
    return truncated, text, pickled


def test_an_unreadable_checkpoint_is_named_in_one_line(train_module, tiny, run2, tmp_path, monkeypatch):
    """--resume CKPT and load_from: a truncated file, a file that is not a checkpoint, and a pickle that
    weights_only refuses stop tools/train.py before the runner is built, with one line naming the file."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    work = tmp_path / 'work'
    for path in _unreadable_checkpoints(tmp_path, run2 / 'epoch_1.pth'):
        for how in (['--resume', str(path)], ['--cfg-options', f'load_from={path}']):
            with pytest.raises(SystemExit) as info:
                train_module.main([str(tiny.config), '--work-dir', str(work), *how])
            message = str(info.value.code)
            assert message.startswith(f'tools/train.py: error: {path}: could not be read as a checkpoint ('), message
            assert '\n' not in message and not work.exists()
    assert 'GLOBAL posix.getcwd' in message or 'getcwd' in message  # the weights_only refusal names what it refused
    weights = tmp_path / 'weights.pth'  # readable, but not a training checkpoint: --resume has nothing to go on
    torch.save({'state_dict': {}}, weights)
    with pytest.raises(SystemExit, match=f'{weights}: --resume needs a training checkpoint .* load_from={weights}$'):
        train_module.main([str(tiny.config), '--work-dir', str(work), '--resume', str(weights)])
    with pytest.raises(SystemExit, match='load_from: checkpoint not found'):
        train_module.main([str(tiny.config), '--work-dir', str(work), '--cfg-options',
                           f'load_from={tmp_path / "missing.pth"}'])

    # weights references: mmkat.hub's errors (download, digest) are one line too
    from mmkat.engine import checkpoint_fit
    from mmkat.hub import WeightsError

    def unreachable(ref):
        raise WeightsError(f'could not download {ref}: no network')

    monkeypatch.setattr(checkpoint_fit, 'read_as_mmengine', unreachable)
    url = 'https://example.invalid/kat_' + '0' * 64 + '.pth'
    with pytest.raises(SystemExit) as info:
        train_module.main([str(tiny.config), '--work-dir', str(work), '--cfg-options', f'load_from={url}'])
    assert str(info.value.code) == f'tools/train.py: error: load_from: could not download {url}: no network'
    assert not work.exists()


def test_an_unreadable_resume_checkpoint_gives_no_traceback(tiny, run2, tmp_path):
    truncated, _, _ = _unreadable_checkpoints(tmp_path, run2 / 'epoch_1.pth')
    rc, log = train(tiny, tmp_path / 'work', '--resume', truncated)
    assert rc == 1 and 'Traceback' not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith(f'tools/train.py: error: {truncated}: could not be read as a checkpoint (')
    assert 'only part of one: RuntimeError: PytorchStreamReader failed' in last
    assert not (tmp_path / 'work').exists()


# ------------------------------------------------------------------------------ resuming bitwise or not
def test_resume_says_when_it_will_not_be_bitwise(train_module):
    from mmengine.config import Config

    def warning(name, **options):
        cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'kat', name))
        cfg.merge_from_dict(options)
        return train_module.resume_exactness_warning(cfg)

    assert warning('demo/kat_demo_shapes.py') == ''  # num_workers=0, epoch-based
    assert warning('demo/kat_demo_shapes.py', **{'train_dataloader.num_workers': 2}) == ''
    persistent = warning('demo/kat_demo_shapes.py', **{'train_dataloader.num_workers': 2,
                                                        'train_dataloader.persistent_workers': True})
    assert persistent.startswith('train_dataloader has persistent_workers=True with num_workers=2')
    assert '--cfg-options train_dataloader.persistent_workers=False' in persistent and '\n' not in persistent
    assert 'num_workers=8' in warning('kat_t_in1k.py')
    assert 'persistent_workers=True' in warning('demo/mask_rcnn_kat_demo.py')
    assert warning('demo/mask_rcnn_kat_demo.py', **{'train_dataloader.persistent_workers': False}) == ''
    assert warning('demo/upernet_kat_demo.py') == ''  # iteration-based with workers: the replay is seeded alike
    iters = warning('demo/upernet_kat_demo.py', **{'train_dataloader.num_workers': 0,
                                                   'train_dataloader.persistent_workers': False})
    assert iters.startswith('an iteration-based run with train_dataloader.num_workers=0')
    assert '--cfg-options train_dataloader.num_workers=N' in iters


def test_resuming_a_persistent_workers_run_warns_once(tiny, run2, tmp_path):
    workers = ['--cfg-options', 'train_dataloader.num_workers=1', 'train_dataloader.persistent_workers=True']
    rc, log = train(tiny, tmp_path / 'workers', '--resume', run2 / 'epoch_1.pth', *workers)
    assert rc == 0, log[-3000:]
    lines = [line for line in log.splitlines() if 'warning' in line and 'persistent_workers=True' in line]
    assert len(lines) == 1 and lines[0].startswith('tools/train.py: warning: train_dataloader has persistent_workers')
    assert 'train_dataloader.persistent_workers=False' in lines[0]
    rc, log = train(tiny, tmp_path / 'main', '--resume', run2 / 'epoch_1.pth')
    assert rc == 0 and 'warning: train_dataloader' not in log and 'not bitwise' not in log


def test_a_run_without_a_fixed_seed_resumes_bitwise(tiny, tmp_path):
    """randomness.seed=None: the resumed run takes the seed of the run it continues (mmengine would shuffle
    by a new one), so the LeNet run's batches, and so its weights, are those of the uninterrupted run."""
    no_seed = ['--cfg-options', 'randomness.seed=None']
    rc, log = train(tiny, tmp_path / 'straight', *no_seed)
    assert rc == 0, log[-3000:]
    rc, log = train(tiny, tmp_path / 'resumed', '--resume', tmp_path / 'straight' / 'epoch_1.pth', *no_seed)
    assert rc == 0, log[-3000:]
    a = torch.load(tmp_path / 'straight' / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    b = torch.load(tmp_path / 'resumed' / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    seed = torch.load(tmp_path / 'straight' / 'epoch_1.pth', map_location='cpu', weights_only=False)['meta']['seed']
    assert f"randomness.seed is None; using the resumed run's seed, {seed}" in log and 'resumed epoch: 1' in log


# ------------------------------------------------------------------------------------------ bad data
def test_a_zero_byte_image_is_named(tiny, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(tiny.root / 'data', data)
    (data / 'c1' / '2.png').write_bytes(b'')
    config = tmp_path / 'lenet_broken.py'
    config.write_text(tiny.config.read_text().replace(repr(str(tiny.root / 'data')), repr(str(data))))
    rc, log = run_tool(TRAIN, config, '--work-dir', tmp_path / 'work', cwd=tiny.root)
    assert rc == 1 and f'could not read the image {data / "c1" / "2.png"}, 0 bytes' in log, log[-3000:]
    assert 'Traceback' not in log


def test_an_annotation_file_that_is_not_json_is_named(tmp_path):
    from mmengine.config import Config

    from mmkat.engine import explain_data_error
    (tmp_path / 'ann').mkdir()
    good, bad = tmp_path / 'ann' / 'val.json', tmp_path / 'ann' / 'train.json'
    good.write_text('{"images": []}')
    bad.write_text('{"images": [1, 2,')
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='CocoDataset', data_root=str(tmp_path), ann_file='ann/train.json')),
        val_dataloader=dict(dataset=dict(type='CocoDataset', data_root=str(tmp_path), ann_file='ann/val.json')),
        val_evaluator=dict(type='CocoMetric', ann_file=str(good))))
    import json
    try:
        json.loads(bad.read_text())
    except json.JSONDecodeError as e:
        error = e
    message = explain_data_error(cfg, error)
    assert message.startswith(f'{bad} is not valid JSON (') and 'line 1' in message
    assert explain_data_error(cfg, ValueError('other')) == ''
