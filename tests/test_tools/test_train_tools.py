"""tools/train.py, tools/test.py, the launch scripts and the checkpoint allowlist of mmkat.engine.

The tools run as subprocesses on a tiny mmpretrain classifier (LeNet-5, 2 classes, 8 grayscale 32x32 PNG
images written here), trained on the CPU for 2 epochs; one training run is shared by the module's tests.
"""
import importlib.util
import os
import os.path as osp
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')

CONFIG = '''
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='LeNet5', num_classes=2),
    head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss')))
data_preprocessor = dict(num_classes=2, mean=[127.5], std=[127.5], to_rgb=False)
pipeline = [dict(type='LoadImageFromFile', color_type='grayscale'), dict(type='PackInputs')]
dataset = dict(type='CustomDataset', data_root={data_root!r}, pipeline=pipeline)
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dataset,
                        sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(batch_size=4, num_workers=0, dataset=dataset,
                      sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[1], gamma=0.5)
train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
log_level = 'INFO'
load_from = None
resume = False
'''


def _env():
    env = dict(os.environ)
    # the tests are about torch's default (weights_only=True): no process-wide override may leak in
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    env.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
    return env


def run(args, cwd, timeout=300):
    """Run a command; return (exit status, stdout + stderr)."""
    proc = subprocess.run(args, cwd=str(cwd), env=_env(), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def run_tool(script, *args, cwd):
    return run([sys.executable, script, *map(str, args)], cwd)


def snapshot(folder):
    """{name: (size, mtime_ns, bytes)} of the checkpoint files in ``folder``."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith('.pth') or name == 'last_checkpoint':
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                out[name] = (os.path.getsize(path), os.stat(path).st_mtime_ns, f.read())
    return out


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A folder with the tiny data set (class c0 dark, c1 bright) and its config, lenet_tiny.py."""
    from PIL import Image

    root = tmp_path_factory.mktemp('tiny')
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / 'data' / f'c{label}').mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((32, 32)) * 60 + 150 * label).astype(np.uint8)
            Image.fromarray(pixels).save(root / 'data' / f'c{label}' / f'{i}.png')
    config = root / 'lenet_tiny.py'
    config.write_text(CONFIG.format(data_root=str(root / 'data')))
    return types.SimpleNamespace(root=root, config=config)


@pytest.fixture(scope='module')
def trained(tiny):
    """tools/train.py's 2-epoch run into <tiny>/work (shared: later tests add to it, never remove)."""
    work_dir = tiny.root / 'work'
    rc, log = run_tool(TRAIN, tiny.config, '--work-dir', work_dir, cwd=tiny.root)
    return types.SimpleNamespace(rc=rc, log=log, work_dir=work_dir)


@pytest.fixture(scope='module')
def train_module():
    """tools/train.py imported as a module (its main() only runs as a script)."""
    spec = importlib.util.spec_from_file_location('mmkat_tools_train', TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- tools/train.py end to end -----------------------------------------------------------------------

@pytest.mark.slow
def test_train_writes_checkpoints(trained):
    assert trained.rc == 0, trained.log[-3000:]
    assert (trained.work_dir / 'epoch_1.pth').is_file()
    assert (trained.work_dir / 'epoch_2.pth').is_file()
    assert 'Epoch(val) [2]' in trained.log and 'accuracy/top1' in trained.log


@pytest.mark.slow
def test_rerun_refuses_to_train_over_checkpoints(tiny, trained):
    assert trained.rc == 0, trained.log[-3000:]
    before = snapshot(trained.work_dir)
    rc, log = run_tool(TRAIN, tiny.config, '--work-dir', trained.work_dir, cwd=tiny.root)
    assert rc == 1, log[-3000:]
    assert 'already holds' in log and '--resume' in log and '--overwrite' in log and 'epoch_2.pth' in log
    assert 'Epoch(train)' not in log
    assert snapshot(trained.work_dir) == before  # same files, sizes, modification times and bytes


@pytest.mark.slow
def test_checkpoint_needs_the_allowlist_with_weights_only(trained):
    """In a fresh process, torch.load's default (weights_only=True) refuses an mmengine training
    checkpoint, and reads it once allow_mmengine_checkpoints() has run, still with weights_only on."""
    assert trained.rc == 0, trained.log[-3000:]
    code = '\n'.join([
        'import pickle, sys, torch',
        'path = sys.argv[1]',
        'try:',
        "    torch.load(path, map_location='cpu')",
        'except pickle.UnpicklingError as err:',
        "    print('STRICT-REFUSED', ' '.join(str(err).split())[:2000])",
        'else:',
        "    print('STRICT-LOADED')",
        'from mmkat.engine import allow_mmengine_checkpoints',
        'allow_mmengine_checkpoints()',
        "ckpt = torch.load(path, map_location='cpu')",
        "hub = ckpt['message_hub']['log_scalars']",
        "print('ALLOWED-LOADED', ckpt['meta']['epoch'], float(hub['train/loss'].mean()) > 0)",
    ])
    rc, out = run([sys.executable, '-c', code, str(trained.work_dir / 'epoch_2.pth')], cwd=trained.work_dir)
    assert rc == 0, out[-3000:]
    assert 'STRICT-REFUSED' in out and 'STRICT-LOADED' not in out
    assert 'HistoryBuffer' in out or 'Unsupported global' in out
    assert 'ALLOWED-LOADED 2 True' in out


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(tiny, trained):
    assert trained.rc == 0, trained.log[-3000:]
    epoch_2 = snapshot(trained.work_dir)['epoch_2.pth']
    rc, log = run_tool(TRAIN, tiny.config, '--work-dir', trained.work_dir, '--resume',
                       '--cfg-options', 'train_cfg.max_epochs=3', cwd=tiny.root)
    assert rc == 0, log[-3000:]
    assert 'resume: continuing from' in log and 'epoch_2.pth' in log
    assert 'resumed epoch: 2' in log
    assert 'Epoch(train) [1]' not in log and 'Epoch(train) [3]' in log
    assert (trained.work_dir / 'epoch_3.pth').is_file()
    assert snapshot(trained.work_dir)['epoch_2.pth'] == epoch_2


@pytest.mark.slow
def test_resume_from_a_given_checkpoint(tiny, trained, tmp_path):
    assert trained.rc == 0, trained.log[-3000:]
    rc, log = run_tool(TRAIN, tiny.config, '--work-dir', tmp_path / 'work', '--resume',
                       trained.work_dir / 'epoch_1.pth', cwd=tiny.root)
    assert rc == 0, log[-3000:]
    assert 'resumed epoch: 1' in log
    assert (tmp_path / 'work' / 'epoch_2.pth').is_file() and not (tmp_path / 'work' / 'epoch_1.pth').exists()


def test_amp(tiny, tmp_path):
    """mmengine's AmpOptimWrapper refuses the CPU (an assertion deep in the runner): train.py says so up
    front. With a GPU, --amp trains."""
    work_dir = tmp_path / 'amp'
    rc, log = run_tool(TRAIN, tiny.config, '--work-dir', work_dir, '--amp', cwd=tiny.root)
    if torch.cuda.is_available():
        assert rc == 0, log[-3000:]
        assert (work_dir / 'epoch_2.pth').is_file()
        assert 'AmpOptimWrapper' in (work_dir / 'lenet_tiny.py').read_text()
    else:
        assert rc == 1, log[-3000:]
        assert '--amp needs a CUDA GPU' in log and 'Traceback' not in log
        assert not work_dir.exists()


@pytest.mark.slow
def test_test_tool_prints_accuracy_and_dumps_predictions(tiny, trained, tmp_path):
    assert trained.rc == 0, trained.log[-3000:]
    out = tmp_path / 'preds' / 'lenet.pkl'
    rc, log = run_tool(TEST, tiny.config, trained.work_dir / 'epoch_2.pth', '--work-dir', tmp_path / 'test',
                       '--out', out, cwd=tiny.root)
    assert rc == 0, log[-3000:]
    assert 'Epoch(test)' in log and 'accuracy/top1' in log
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 8 and 'pred_label' in predictions[0]


def test_missing_files_give_clear_errors(tiny, tmp_path):
    rc, log = run_tool(TRAIN, tmp_path / 'no_such_config.py', cwd=tmp_path)
    assert rc == 1 and 'config file not found' in log and 'Traceback' not in log
    rc, log = run_tool(TEST, tmp_path / 'no_such_config.py', tmp_path / 'x.pth', cwd=tmp_path)
    assert rc == 1 and 'config file not found' in log and 'Traceback' not in log
    rc, log = run_tool(TEST, tiny.config, tmp_path / 'missing.pth', cwd=tmp_path)
    assert rc == 1 and 'checkpoint not found' in log and 'Traceback' not in log
    rc, log = run_tool(TEST, tiny.config, tmp_path / 'missing.pth', '--out', 'preds.json', cwd=tmp_path)
    assert rc == 1 and 'checkpoint not found' in log
    rc, log = run_tool(TRAIN, tiny.config, '--resume', tmp_path / 'missing.pth', cwd=tmp_path)
    assert rc == 1 and 'checkpoint not found' in log and 'Traceback' not in log
    rc, log = run_tool(TRAIN, cwd=tmp_path)  # argparse: the config is required
    assert rc == 2 and 'config' in log
    assert not (tmp_path / 'work_dirs').exists()


# ---- tools/train.py's command-line handling, in process ----------------------------------------------

def _cfg_and_args(train_module, tiny, *argv):
    from mmengine.config import Config

    args = train_module.parse_args([str(tiny.config), *argv])
    return Config.fromfile(str(tiny.config)), args


def test_default_work_dir_and_cfg_options(train_module, tiny):
    cfg, args = _cfg_and_args(train_module, tiny, '--cfg-options', 'train_cfg.max_epochs=5')
    cfg = train_module.merge_args(cfg, args)
    assert cfg.work_dir == osp.join('./work_dirs', 'lenet_tiny')
    assert cfg.train_cfg.max_epochs == 5 and cfg.launcher == 'none'
    assert not cfg.resume and cfg.load_from is None


def test_amp_flag_edits_the_optim_wrapper(train_module, tiny):
    cfg, args = _cfg_and_args(train_module, tiny, '--amp')
    cfg = train_module.merge_args(cfg, args)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.optim_wrapper.optimizer.type == 'SGD'

    cfg, args = _cfg_and_args(train_module, tiny, '--amp', '--cfg-options',
                              'optim_wrapper.type=AmpOptimWrapper')
    with pytest.raises(SystemExit, match='already is an AmpOptimWrapper'):
        train_module.merge_args(cfg, args)

    cfg, args = _cfg_and_args(train_module, tiny, '--amp')
    cfg.pop('optim_wrapper')
    with pytest.raises(SystemExit, match='has no optim_wrapper'):
        train_module.merge_args(cfg, args)


def test_a_second_run_in_a_busy_work_dir_is_refused(train_module, tiny, tmp_path, monkeypatch):
    work_dir = tmp_path / 'busy'
    cfg, args = _cfg_and_args(train_module, tiny, '--work-dir', str(work_dir))
    cfg = train_module.merge_args(cfg, args)
    monkeypatch.setattr(train_module, '_WORK_DIR_LOCK', None)
    first = train_module.lock_work_dir(cfg)
    assert first is not None and f'pid {os.getpid()}' in (work_dir / '.train.lock').read_text()
    with pytest.raises(SystemExit, match=f'another tools/train.py run \\(pid {os.getpid()} on .*\\) is training'):
        train_module.lock_work_dir(cfg)
    monkeypatch.setenv('RANK', '1')  # the other processes of a launch do not take the lock
    assert train_module.lock_work_dir(cfg) is None
    monkeypatch.delenv('RANK')
    first.close()  # the run ended: the next one may start
    train_module.lock_work_dir(cfg).close()


def test_a_schedule_that_does_not_fit_the_epochs_is_warned_about(train_module):
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'kat', 'fashion_mnist', 'kat_t_fmnist.py'))
    assert train_module.schedule_mismatch(cfg) == ''
    cfg.merge_from_dict({'train_cfg.max_epochs': 40})
    warning = train_module.schedule_mismatch(cfg)
    assert 'ends at epoch 15 but training runs 40' in warning and 'param_scheduler.1.end=40' in warning
    cfg.merge_from_dict({'param_scheduler.1.end': 40})
    assert train_module.schedule_mismatch(cfg) == ''
    cfg.merge_from_dict({'train_cfg.max_epochs': 10})
    assert 'never reaches the end' in train_module.schedule_mismatch(cfg)
    iters = Config(dict(train_cfg=dict(type='IterBasedTrainLoop', max_iters=100),
                        param_scheduler=dict(type='LinearLR', by_epoch=False, end=50)))
    assert train_module.schedule_mismatch(iters) == ''


def test_auto_scale_lr_flag(train_module, tiny):
    cfg, args = _cfg_and_args(train_module, tiny, '--auto-scale-lr')
    assert train_module.merge_args(cfg, args).auto_scale_lr == dict(base_batch_size=4, enable=True)
    cfg, args = _cfg_and_args(train_module, tiny, '--auto-scale-lr')
    cfg.pop('auto_scale_lr')
    with pytest.raises(SystemExit, match='needs an auto_scale_lr entry'):
        train_module.merge_args(cfg, args)


def test_resume_flags(train_module, tiny, tmp_path):
    cfg, args = _cfg_and_args(train_module, tiny, '--resume')
    cfg = train_module.merge_args(cfg, args)
    assert cfg.resume is True and cfg.load_from is None
    ckpt = tmp_path / 'some.pth'
    ckpt.write_bytes(b'')
    cfg, args = _cfg_and_args(train_module, tiny, '--resume', str(ckpt))
    cfg = train_module.merge_args(cfg, args)
    assert cfg.resume is True and cfg.load_from == str(ckpt)
    cfg, args = _cfg_and_args(train_module, tiny, '--resume', '--overwrite')
    with pytest.raises(SystemExit, match='pass only one'):
        train_module.merge_args(cfg, args)


def test_overwrite_lets_a_new_run_start(train_module, tiny, tmp_path, capsys):
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'epoch_1.pth').write_bytes(b'old')
    cfg, args = _cfg_and_args(train_module, tiny, '--work-dir', str(work_dir))
    cfg = train_module.merge_args(cfg, args)
    with pytest.raises(SystemExit, match='already holds 1 checkpoint'):
        train_module.guard_work_dir(cfg, args)
    cfg, args = _cfg_and_args(train_module, tiny, '--work-dir', str(work_dir), '--overwrite')
    cfg = train_module.merge_args(cfg, args)
    train_module.guard_work_dir(cfg, args)  # goes on, and says what will happen
    assert 'will be replaced' in capsys.readouterr().err
    cfg, args = _cfg_and_args(train_module, tiny, '--work-dir', str(work_dir), '--resume')
    train_module.guard_work_dir(train_module.merge_args(cfg, args), args)
    assert (work_dir / 'epoch_1.pth').read_bytes() == b'old'


def test_guard_looks_in_the_checkpoint_hooks_out_dir(train_module, tiny, tmp_path):
    (tmp_path / 'ckpts' / 'run').mkdir(parents=True)
    (tmp_path / 'ckpts' / 'run' / 'iter_10.pth').write_bytes(b'old')
    cfg, args = _cfg_and_args(train_module, tiny, '--work-dir', str(tmp_path / 'run'), '--cfg-options',
                              f'default_hooks.checkpoint.out_dir={tmp_path / "ckpts"}')
    cfg = train_module.merge_args(cfg, args)
    with pytest.raises(SystemExit, match='iter_10.pth'):
        train_module.guard_work_dir(cfg, args)


# ---- launch scripts, with stand-ins for python and srun ----------------------------------------------

def _recorder(path):
    """An executable that writes its arguments, one a line, to <path>.args."""
    path.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$0.args"\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize('script', ['dist_train.sh', 'dist_test.sh', 'slurm_train.sh'])
def test_scripts_are_executable_and_print_usage(script, tmp_path):
    path = osp.join(ROOT, 'tools', script)
    assert os.access(path, os.X_OK)
    rc, log = run(['bash', path], cwd=tmp_path)
    assert rc == 2 and 'usage:' in log


def test_dist_scripts_call_torchrun(tmp_path, monkeypatch):
    python = _recorder(tmp_path / 'python')
    monkeypatch.setenv('PYTHON', str(python))
    monkeypatch.setenv('NNODES', '2')
    monkeypatch.setenv('NODE_RANK', '1')
    monkeypatch.setenv('PORT', '29555')
    monkeypatch.setenv('MASTER_ADDR', '10.1.2.3')
    rc, log = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), 'cfg.py', '4', '--amp'], cwd=tmp_path)
    assert rc == 0, log
    assert (tmp_path / 'python.args').read_text().splitlines() == [
        '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1', '--master_addr=10.1.2.3',
        '--master_port=29555', '--nproc_per_node=4', TRAIN, 'cfg.py', '--launcher', 'pytorch', '--amp']
    rc, log = run(['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), 'cfg.py', 'a.pth', '2', '--out', 'p.pkl'],
                  cwd=tmp_path)
    assert rc == 0, log
    assert (tmp_path / 'python.args').read_text().splitlines() == [
        '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1', '--master_addr=10.1.2.3',
        '--master_port=29555', '--nproc_per_node=2', TEST, 'cfg.py', 'a.pth', '--launcher', 'pytorch',
        '--out', 'p.pkl']


def test_slurm_script_calls_srun(tmp_path, monkeypatch):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _recorder(bin_dir / 'srun')
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('PYTHON', 'py')
    monkeypatch.setenv('GPUS', '16')
    monkeypatch.setenv('SRUN_ARGS', '--time=1:00:00 --quotatype=auto')
    script = osp.join(ROOT, 'tools', 'slurm_train.sh')
    rc, log = run(['bash', script, 'gpu', 'kat', 'cfg.py', 'wd', '--resume'], cwd=tmp_path)
    assert rc == 0, log
    assert (tmp_path / 'bin' / 'srun.args').read_text().splitlines() == [
        '-p', 'gpu', '--job-name=kat', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
        '--cpus-per-task=5', '--kill-on-bad-exit=1', '--time=1:00:00', '--quotatype=auto',
        'py', '-u', TRAIN, 'cfg.py', '--work-dir=wd', '--launcher', 'slurm', '--resume']



# ---- tools/test.py --show-dir / --show, and the channel check of prepare_runner -----------------------

@pytest.mark.slow
def test_show_dir_draws_the_test_predictions_and_is_not_overwritten(tiny, trained, tmp_path):
    """mmpretrain's VisualizationHook, switched on as mmpretrain's tools/test.py does: every test image drawn
    (named after the image file's base name: the tiny set's two classes share their four names)."""
    assert trained.rc == 0, trained.log[-3000:]
    show = tmp_path / 'vis'
    args = (tiny.config, trained.work_dir / 'epoch_2.pth', '--work-dir', tmp_path / 'test', '--show-dir', show)
    rc, log = run_tool(TEST, *args, cwd=tiny.root)
    assert rc == 0, log[-3000:]
    assert 'accuracy/top1' in log
    assert sorted(p.name for p in show.iterdir()) == [f'{i}.png_0.png' for i in range(4)]
    before = {p.name: p.stat().st_mtime_ns for p in show.iterdir()}
    rc, log = run_tool(TEST, *args, cwd=tiny.root)
    assert rc == 1 and '--show-dir' in log and 'already holds files' in log and 'Traceback' not in log
    assert {p.name: p.stat().st_mtime_ns for p in show.iterdir()} == before
    rc, log = run_tool(TEST, *args, '--force', cwd=tiny.root)
    assert rc == 0, log[-3000:]


def test_show_needs_a_display_and_show_dir_a_folder(tiny, tmp_path, monkeypatch):
    checkpoint = tmp_path / 'w.pth'
    checkpoint.write_bytes(b'not read: refused before')
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    rc, log = run_tool(TEST, tiny.config, checkpoint, '--show', '--work-dir', tmp_path / 'w', cwd=tmp_path)
    assert rc == 1 and '--show needs a display' in log and '--show-dir' in log and 'Traceback' not in log
    (tmp_path / 'a_file').write_text('mine')
    rc, log = run_tool(TEST, tiny.config, checkpoint, '--show-dir', tmp_path / 'a_file', cwd=tmp_path)
    assert rc == 1 and 'is a file, not a folder' in log
    assert not (tmp_path / 'w').exists() and (tmp_path / 'a_file').read_text() == 'mine'


@pytest.fixture(scope='module')
def dense_demo(tmp_path_factory):
    """Three drawn scenes, and weights of the freshly built demo detector and segmentor."""
    from tests.test_tools.test_infer_tool import DET_DEMO, SEG_DEMO, draw_scenes, fresh_weights
    root = tmp_path_factory.mktemp('dense_demo')
    return types.SimpleNamespace(root=root, scenes=draw_scenes(root / 'scenes', val=3), det=DET_DEMO, seg=SEG_DEMO,
                                 det_weights=fresh_weights(DET_DEMO, root / 'det.pth'),
                                 seg_weights=fresh_weights(SEG_DEMO, root / 'seg.pth'))


def _dense_options(demo, detection):
    from tests.test_configs.test_det_demo import data_options
    return ['--cfg-options', *data_options(demo.scenes, coco_metric=detection), 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']


@pytest.mark.slow
@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_show_dir_draws_detections_and_segmentations(dense_demo, task, tmp_path):
    """mmdet's DetVisualizationHook and mmseg's SegVisualizationHook (a subclass that does not need the
    training data) write DIR/<image name> for each test image."""
    config, weights = (dense_demo.det, dense_demo.det_weights) if task == 'detection' else \
        (dense_demo.seg, dense_demo.seg_weights)
    show = tmp_path / 'vis'
    rc, log = run_tool(TEST, config, weights, '--work-dir', tmp_path / 'work', '--show-dir', show,
                       *_dense_options(dense_demo, task == 'detection'), cwd=tmp_path)
    assert rc == 0, log[-3000:]
    assert ('coco/bbox_mAP' if task == 'detection' else 'mIoU') in log
    assert sorted(p.name for p in show.iterdir()) == [f'00000{i}.jpg' for i in range(3)]
    from PIL import Image
    assert Image.open(show / '000000.jpg').size == (128, 64)  # ground truth beside the prediction


@pytest.mark.slow
def test_a_head_at_another_backbones_channels_is_refused_before_testing(dense_demo, tmp_path):
    """mmkat.engine.prepare_runner checks the built model: the demo segmentor's auxiliary head left at a
    ResNet's 1024 channels is named with the channels KAT (through the neck) gives, before any forward."""
    rc, log = run_tool(TEST, dense_demo.seg, dense_demo.seg_weights, '--work-dir', tmp_path / 'work',
                       *_dense_options(dense_demo, False), 'model.auxiliary_head.in_channels=1024', cwd=tmp_path)
    assert rc == 1 and 'Traceback' not in log, log[-3000:]
    assert 'model.auxiliary_head (FCNHead) takes in_channels=1024 at in_index=3: set ' \
        'model.auxiliary_head.in_channels=96' in log, log[-3000:]
    assert 'Iter(test)' not in log
