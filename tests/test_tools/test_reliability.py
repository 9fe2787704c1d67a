"""Nothing lost, nothing faked: tools/test.py refuses checkpoints that do not fit, outputs and configs are
never overwritten silently, and resuming survives an empty last_checkpoint, a truncated checkpoint, a moved
work dir and a smaller max_keep_ckpts. On the tiny LeNet set-up of test_train_tools."""
import hashlib
import os
import shutil

import pytest
import torch

from .test_train_tools import TEST, TRAIN, run_tool, tiny  # noqa: F401  (tiny is a fixture)


def files(folder):
    """{name: sha256} of every file in ``folder`` (recursively, relative names)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


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
def test_interrupted_and_resumed_run_ends_bitwise_equal(tmp_path):
    """The demo (drop path 0.05, random flip): 2 epochs straight, and the same run resumed from its epoch-1
    checkpoint alone, end with the same weights to the bit."""
    import os.path as osp
    import subprocess
    import sys
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    config = osp.join(root, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')
    small = ['--cfg-options', 'train_dataloader.dataset.num_per_class=4', 'val_dataloader.dataset.num_per_class=2',
             'train_dataloader.batch_size=8', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
             'default_hooks.checkpoint.interval=1']

    def train_tool(work, *extra):
        proc = subprocess.run([sys.executable, osp.join(root, 'tools', 'train.py'), config, '--work-dir', str(work),
                               *extra, *small], cwd=root, capture_output=True, text=True, timeout=600)
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
    a = torch.load(straight / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    b = torch.load(resumed / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


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
