"""The configs under configs/: every one loads and builds its model, the ImageNet configs hold the released
recipe, and the demo and Fashion-MNIST configs train end to end through tools/train.py and tools/test.py.

Also: KAT resolves in the mmdet, mmseg and mmpretrain scopes (while ``import mmkat`` imports none of them),
and KATDemoShapes, the demo's in-memory data set.

The three training runs (demo KAT, demo GELU twin, Fashion-MNIST on tiny synthetic idx files) are started
together in the background as soon as the module runs a test that needs them, so that they overlap with the
in-process tests on a small CPU machine.
"""
import argparse
import copy
import glob
import importlib
import math
import os
import os.path as osp
import re
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import torch

from tests.conftest import needs, write_idx_split

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(ROOT, 'configs')
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')
DEMO = osp.join(CONFIG_DIR, 'kat', 'demo', 'kat_demo_shapes.py')
FMNIST_KAT = osp.join(CONFIG_DIR, 'kat', 'fashion_mnist', 'kat_t_fmnist.py')
FMNIST_VIT = osp.join(CONFIG_DIR, 'kat', 'fashion_mnist', 'vit_t_fmnist.py')

SHAPE_NAMES = ('disc', 'ring', 'square', 'frame', 'triangle', 'cross', 'bars', 'diagonal')
# the released models (timm's kat_{tiny,small,base}_patch16_224) with their 1000-class heads
RELEASED_PARAMS = {'tiny': 5_718_328, 'small': 22_051_576, 'base': 86_568_568}
IN1K = [('t', 'tiny', 0.1, 192), ('s', 'small', 0.1, 384), ('b', 'base', 0.4, 768)]


def config_files():
    """Every config under configs/ (recursively), except files whose names start with '_'."""
    paths = glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    return sorted(p for p in paths if not osp.basename(p).startswith('_'))


CONFIGS = config_files()
_loaded = {}


def load(path):
    """Config.fromfile(path), parsed once per test session; every caller gets its own deep copy."""
    from mmengine.config import Config

    if path not in _loaded:
        _loaded[path] = Config.fromfile(path)
    return copy.deepcopy(_loaded[path])


def build_model(cfg):
    """The config's model, built with the registry of the config's default scope."""
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(cfg.default_scope)
    return MODELS.build(cfg.model)


def parse_cfg_options(options):
    """``--cfg-options`` values parsed exactly as the tools parse them (mmengine's DictAction)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- every config loads and builds
def test_the_glob_finds_the_shipped_configs():
    found = {osp.relpath(p, CONFIG_DIR) for p in CONFIGS}
    shipped = {f'kat/kat_{s}_in1k{r}.py' for s in 'tsb' for r in ('', '_released')}
    shipped |= {'kat/demo/kat_demo_shapes.py', 'kat/fashion_mnist/kat_t_fmnist.py',
                'kat/fashion_mnist/vit_t_fmnist.py', 'kat/fashion_mnist/kat_t_vp_fmnist.py'}
    assert shipped <= found


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.relpath(p, CONFIG_DIR) for p in CONFIGS])
def test_config_loads_and_its_model_builds(path):
    from mmkat.models import KAT

    cfg = load(path)
    assert 'mmkat' in cfg.custom_imports['imports']
    assert cfg.get('default_scope'), 'the config needs a default_scope (its mmpretrain/mmdet/mmseg base sets it)'
    model = build_model(cfg)
    kats = [m for m in model.modules() if isinstance(m, KAT)]
    assert len(kats) == 1
    backbone = kats[0]
    head = getattr(model, 'head', None)
    if head is not None and hasattr(head, 'fc'):  # a classifier: its head reads the KAT's features
        assert head.fc.in_features == backbone.embed_dims
        assert head.fc.out_features == cfg.model.head.num_classes
    name = osp.basename(path)
    match = re.fullmatch(r'kat_([tsb])_in1k(_released)?\.py', name)
    if match:
        arch = {'t': 'tiny', 's': 'small', 'b': 'base'}[match.group(1)]
        assert count_params(model) == RELEASED_PARAMS[arch]


def test_kat_t_classifier_has_the_released_parameter_count():
    model = build_model(load(osp.join(CONFIG_DIR, 'kat', 'kat_t_in1k.py')))
    assert count_params(model) == 5_718_328
    assert model.backbone.embed_dims == 192 and len(model.backbone.blocks) == 12
    assert model.backbone.num_heads == 3 and model.backbone.mlp == 'kan'


# ----------------------------------------------------------------------------- the ImageNet recipes
@pytest.mark.parametrize('released', [False, True], ids=['recipe', 'released'])
@pytest.mark.parametrize('letter,arch,drop_path,dims', IN1K, ids=[arch for _, arch, _, _ in IN1K])
def test_imagenet_config_holds_the_released_recipe(letter, arch, drop_path, dims, released):
    name = f'kat_{letter}_in1k' + ('_released' if released else '')
    cfg = load(osp.join(CONFIG_DIR, 'kat', name + '.py'))
    assert cfg.default_scope == 'mmpretrain'

    model = cfg.model
    assert model.type == 'ImageClassifier'
    backbone = model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == ('KAT', arch, drop_path)
    assert (backbone.img_size, backbone.patch_size, backbone.out_type) == (224, 16, 'cls_token')
    assert backbone.get('mlp', 'kan') == 'kan'
    assert 'rational' not in backbone  # the released setting is KAT's default (checked below)
    from mmkat.models import KAT
    default = KAT(arch=dict(embed_dims=8, num_layers=1, num_heads=1), img_size=16).rational
    assert {k: default[k] for k in ('groups', 'act1_init', 'act2_init')} == dict(groups=8, act1_init='identity',
                                                                                act2_init='swish')
    head = model.head
    assert (head.type, head.in_channels, head.num_classes) == ('LinearClsHead', dims, 1000)
    assert (head.loss.type, head.loss.label_smooth_val) == ('LabelSmoothLoss', 0.1)
    assert [(a['type'], a['alpha']) for a in model.train_cfg.augments] == [('Mixup', 0.8), ('CutMix', 1.0)]
    assert cfg.data_preprocessor.num_classes == 1000

    wrapper = cfg.optim_wrapper
    assert wrapper.type == 'AmpOptimWrapper'
    optimizer = wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 1e-3, 0.05)
    assert cfg.train_dataloader.batch_size == 128
    assert cfg.auto_scale_lr.base_batch_size == 1024 == 8 * cfg.train_dataloader.batch_size
    assert cfg.train_cfg.max_epochs == 300
    schedule = [(s['type'], s['begin'], s['end']) for s in cfg.param_scheduler]
    assert schedule == [('LinearLR', 0, 5), ('CosineAnnealingLR', 5, 300)]
    emas = [h for h in cfg.custom_hooks if h['type'] == 'EMAHook']
    assert len(emas) == 1 and emas[0]['momentum'] == 1e-4

    # the pipeline the train data set really uses (not only the train_pipeline variable)
    train = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResizedCrop']['scale'] == 224
    assert (train['RandAugment']['magnitude_level'], train['RandAugment']['magnitude_std']) == (9, 0.5)
    assert train['RandomErasing']['erase_prob'] == 0.25
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        test = {t['type']: t for t in loader.dataset.pipeline}
        assert (test['ResizeEdge']['scale'], test['ResizeEdge']['edge']) == (256, 'short')
        assert test['ResizeEdge']['interpolation'] == 'bicubic'
        assert test['CenterCrop']['crop_size'] == 224

    if released:
        size = {'t': 'tiny', 's': 'small', 'b': 'base'}[letter]
        assert cfg.load_from == f'kat-{size}-p16_3rdparty_in1k'  # a weights name of configs/kat/metafile.yml
        # otherwise the very same config as the training recipe
        recipe = load(osp.join(CONFIG_DIR, 'kat', f'kat_{letter}_in1k.py')).to_dict()
        mine = cfg.to_dict()
        recipe.pop('load_from'), mine.pop('load_from')
        assert mine == recipe
    else:
        assert cfg.load_from is None


def test_imagenet_weight_decay_spares_only_1d_tensors_and_the_tokens():
    """timm's rule, as released: every tensor of 2+ dims is decayed (the rational coefficients too), except
    pos_embed and cls_token."""
    from mmengine.optim import build_optim_wrapper

    cfg = load(osp.join(CONFIG_DIR, 'kat', 'kat_t_in1k.py'))
    model = build_model(cfg)
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    wrapper_cfg.type = 'OptimWrapper'  # AmpOptimWrapper refuses the CPU; the param groups are the same
    wrapper_cfg.pop('loss_scale')
    wrapper = build_optim_wrapper(model, wrapper_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: group['weight_decay'] for group in wrapper.optimizer.param_groups
             for p in group['params']}
    assert set(decay) == set(names.values())
    for name, param in model.named_parameters():
        spared = param.ndim <= 1 or name in ('backbone.cls_token', 'backbone.pos_embed')
        assert decay[name] == (0.0 if spared else 0.05), name
    assert decay['backbone.blocks.0.mlp.act1.weight_denominator'] == 0.05
    assert decay['backbone.blocks.11.mlp.act2.weight_numerator'] == 0.05


# ----------------------------------------------------------------------------- the KAT / ViT twins
def twin_pairs():
    """(kat_X.py, vit_X.py) pairs in the same folder: the KAT config and its GELU-ViT twin."""
    pairs = []
    for kat in CONFIGS:
        folder, name = osp.split(kat)
        if name.startswith('kat_') and osp.isfile(osp.join(folder, 'vit_' + name[4:])):
            pairs.append((kat, osp.join(folder, 'vit_' + name[4:])))
    return pairs


TWINS = twin_pairs()


def test_the_fashion_mnist_twins_are_found():
    assert (FMNIST_KAT, FMNIST_VIT) in TWINS


@pytest.mark.parametrize('kat_path,vit_path', TWINS, ids=[osp.relpath(k, CONFIG_DIR) for k, _ in TWINS])
def test_twin_configs_differ_only_in_the_mlp(kat_path, vit_path):
    kat, vit = load(kat_path), load(vit_path)
    assert kat.model.backbone.get('mlp', 'kan') == 'kan' and vit.model.backbone.mlp == 'gelu'
    kat_dict, vit_dict = kat.to_dict(), vit.to_dict()
    kat_dict['model']['backbone'].pop('mlp', None)
    del vit_dict['model']['backbone']['mlp']
    assert kat_dict == vit_dict

    kat_model, vit_model = build_model(kat), build_model(vit)
    assert vit_model.backbone.init_mode == 'vit' and kat_model.backbone.init_mode == 'released'
    # the same network but for the rationals: 2 per block, each 6 numerator + groups x 4 denominator weights
    groups = kat_model.backbone.rational['groups']
    rationals = kat_model.backbone.num_layers * 2 * (6 + groups * 4)
    assert count_params(kat_model) - count_params(vit_model) == rationals
    assert not any('.act' in n for n, _ in vit_model.named_parameters())


def test_fashion_mnist_kat_t_is_the_tiny_kat_on_grey_28px_images():
    cfg = load(FMNIST_KAT)
    backbone, head = cfg.model.backbone, cfg.model.head
    assert (backbone.arch, backbone.img_size, backbone.patch_size, backbone.in_channels) == ('tiny', 28, 4, 1)
    assert (head.num_classes, head.in_channels) == (10, 192)
    assert cfg.val_dataloader.dataset.split == 'test' and cfg.train_dataloader.dataset.split == 'train'
    # the data stay in one tensor (on the GPU when there is one) and are augmented there, batch by batch
    assert cfg.train_dataloader.dataset.type == 'KATFashionMNIST' and cfg.train_dataloader.num_workers == 0
    assert cfg.data_preprocessor.type == 'KATBatchClsPreprocessor' and cfg.data_preprocessor.crop_padding == 4
    vp = load(osp.join(CONFIG_DIR, 'kat', 'fashion_mnist', 'kat_t_vp_fmnist.py'))
    assert build_model(vp).backbone.init_mode == 'variance_preserving'
    del vp.model.backbone['init_mode']
    assert vp.to_dict() == cfg.to_dict()  # nothing else differs


# ----------------------------------------------------------------------------- scopes and registries
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_kat_resolves_in_every_downstream_scope(scope):
    from mmengine.registry import init_default_scope

    import mmkat

    registry = importlib.import_module(f'{scope}.registry').MODELS
    assert registry.get('KAT') is mmkat.KAT
    init_default_scope(scope)
    small = dict(type='KAT', arch=dict(embed_dims=32, num_layers=2, num_heads=2), img_size=32, patch_size=8)
    for cfg in (small, dict(small, _scope_=scope)):
        model = registry.build(copy.deepcopy(cfg))
        assert type(model) is mmkat.KAT
        assert model.embed_dims == 32 and len(model.blocks) == 2
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert len(out) == 1 and out[0].shape == (2, 32)


def test_import_mmkat_alone_imports_no_downstream_package():
    code = ("import sys, mmkat\n"
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'mmdet', 'mmseg', 'mmpretrain'})\n"
            "assert not loaded, loaded\n"
            "print('clean')\n")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith('clean')


@needs('mmpretrain')
def test_demo_dataset_resolves_through_mmpretrain():
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import DATASETS

    from mmkat.datasets import KATDemoShapes

    assert DATASETS.get('KATDemoShapes') is KATDemoShapes
    init_default_scope('mmpretrain')
    dataset = DATASETS.build(dict(type='KATDemoShapes', split='val', num_per_class=2, img_size=16))
    assert type(dataset) is KATDemoShapes and len(dataset) == 16


# ----------------------------------------------------------------------------- KATDemoShapes
def shapes(**kwargs):
    from mmkat.datasets import KATDemoShapes

    kwargs.setdefault('num_per_class', 4)
    kwargs.setdefault('img_size', 16)
    return KATDemoShapes(**kwargs)


def images_and_labels(dataset):
    images = np.stack([dataset.get_data_info(i)['img'] for i in range(len(dataset))])
    return images, dataset.get_gt_labels()


def test_demo_shapes_are_deterministic_and_the_splits_never_overlap():
    images, labels = images_and_labels(shapes(split='train'))
    again, again_labels = images_and_labels(shapes(split='train'))
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    train_images = {img.tobytes() for img in images}
    assert len(train_images) == len(images)
    for other in (shapes(split='val'), shapes(split='test'), shapes(split='train', seed=1)):
        other_images, _ = images_and_labels(other)
        assert not train_images & {img.tobytes() for img in other_images}


@pytest.mark.parametrize('split,per_class,size', [('train', 5, 16), ('val', 3, 24), ('test', 1, 8)])
def test_demo_shapes_are_balanced_uint8_hwc_images(split, per_class, size):
    dataset = shapes(split=split, num_per_class=per_class, img_size=size)
    assert len(dataset) == 8 * per_class
    assert tuple(dataset.metainfo['classes']) == SHAPE_NAMES
    labels = dataset.get_gt_labels()
    assert np.bincount(labels, minlength=8).tolist() == [per_class] * 8
    if per_class > 1:
        assert labels.tolist() != sorted(labels.tolist())  # shuffled, not grouped by class
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        assert info['img'].dtype == np.uint8 and info['img'].shape == (size, size, 3)
        assert info['gt_label'] == labels[i]
        assert tuple(info['img_shape']) == tuple(info['ori_shape']) == (size, size)


def test_demo_shapes_draws_a_different_shape_per_class():
    from mmkat.datasets.shapes import draw_shape

    # the same random stream: position, colours and noise agree, only the shape differs
    images = [draw_shape(label, 32, np.random.default_rng(7)) for label in range(8)]
    assert len({img.tobytes() for img in images}) == 8
    disc, ring = images[0].astype(int), images[1].astype(int)
    differs = (disc != ring).any(-1)
    # the ring is the disc without its centre: they differ on a blob of pixels, and agree elsewhere
    assert 0 < differs.sum() < 0.5 * differs.size


@pytest.mark.parametrize('kwargs,match', [
    (dict(split='training'), 'split must be one of'),
    (dict(num_per_class=0), 'num_per_class must be a positive int'),
    (dict(num_per_class=2.5), 'num_per_class must be a positive int'),
    (dict(img_size=4), r'img_size must be an int >= 8'),
    (dict(img_size='32'), r'img_size must be an int >= 8'),
])
def test_demo_shapes_bad_arguments_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shapes(**kwargs)


# ----------------------------------------------------------------------------- a classification train step
def test_demo_classifier_train_step_moves_every_backbone_parameter():
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    cfg = load(DEMO)
    model = build_model(cfg)
    model.init_weights()
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.dataset.num_per_class = 4
    loader_cfg.batch_size = 16
    loader = Runner.build_dataloader(loader_cfg, seed=0)  # the runner's own way: pipeline, sampler, collate
    data = next(iter(loader))
    assert len(data['inputs']) == 16
    assert data['inputs'][0].shape == (3, 32, 32) and data['inputs'][0].dtype == torch.uint8
    assert len(data['data_samples']) == 16

    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert 'backbone.blocks.0.mlp.act1.weight_denominator' in before
    log_vars = model.train_step(data, wrapper)
    loss = log_vars['loss'].item()
    assert math.isfinite(loss)
    assert abs(loss - math.log(8)) < 0.3  # a fresh 8-class head predicts about uniformly
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []


# ----------------------------------------------------------------------------- end to end through the tools
DEMO_OPTIONS = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'train_dataloader.dataset.num_per_class=16',
                'val_dataloader.dataset.num_per_class=8']
FMNIST_TRAIN, FMNIST_TEST = 64, 32


def fmnist_options(data_root):
    options = ['model.backbone.arch._delete_=True', 'model.backbone.arch.embed_dims=32',
               'model.backbone.arch.num_layers=2', 'model.backbone.arch.num_heads=2', 'model.head.in_channels=32',
               'train_cfg.max_epochs=1']
    # the config spells data_root out in each data set, so each one is pointed at the files
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data_root}', f'{loader}.batch_size=16',
                    f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    return options


def subprocess_env():
    env = dict(os.environ)
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)  # the tools must work with torch's default
    env.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
    env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = '1'  # the runs share a small machine
    return env


class Job(threading.Thread):
    """Commands run one after the other in the background (the next only when the previous one succeeded),
    each with its output in a file."""

    def __init__(self, commands, cwd, log_prefix):
        super().__init__(daemon=True)
        self.commands = [[str(a) for a in command] for command in commands]
        self.cwd, self.log_prefix = str(cwd), str(log_prefix)
        self.results = [(None, 'not run: an earlier step failed')] * len(commands)
        self.proc, self.stopped, self.lock = None, False, threading.Lock()
        self.start()

    def run(self):
        for i, command in enumerate(self.commands):
            log_path = f'{self.log_prefix}.{i}.log'
            with open(log_path, 'w') as log:
                with self.lock:
                    if self.stopped:
                        return
                    self.proc = subprocess.Popen(command, cwd=self.cwd, env=subprocess_env(), stdout=log,
                                                 stderr=subprocess.STDOUT)
                rc = self.proc.wait()
            with open(log_path) as log:
                self.results[i] = (rc, log.read())
            if rc != 0:
                return

    def result(self, step=0, timeout=400):
        """(exit status, output) of command ``step``, waiting for the job to get there."""
        self.join(timeout)
        assert not self.is_alive(), f'{self.commands} still running after {timeout} s'
        return self.results[step]

    def stop(self):
        with self.lock:
            self.stopped = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        self.join(60)


def write_idx_files(folder, n_train=FMNIST_TRAIN, n_test=FMNIST_TEST):
    """Uncompressed Fashion-MNIST idx files (the names mmpretrain's FashionMNIST reads); returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write_idx_split(folder, prefix, images, labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.fixture(scope='module')
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp('fmnist')
    return types.SimpleNamespace(root=str(root), arrays=write_idx_files(str(root)))


@pytest.fixture(scope='module')
def runs(tmp_path_factory, fmnist):
    """The background runs, started together: the demo KAT (then tools/test.py on its checkpoint), the
    demo's GELU twin, and Fashion-MNIST with a tiny arch."""
    root = tmp_path_factory.mktemp('runs')
    work = {name: root / name for name in ('demo', 'gelu', 'fmnist')}
    python = sys.executable
    # test_dataloader is a copy of val_dataloader made when the config was parsed: shrink it the same way
    demo_test = [python, TEST, DEMO, work['demo'] / 'epoch_1.pth', '--work-dir', root / 'demo_test',
                 '--cfg-options', 'test_dataloader.dataset.num_per_class=8']
    commands = {
        'demo': [[python, TRAIN, DEMO, '--work-dir', work['demo'], '--cfg-options', *DEMO_OPTIONS], demo_test],
        'gelu': [[python, TRAIN, DEMO, '--work-dir', work['gelu'], '--cfg-options', *DEMO_OPTIONS,
                  'model.backbone.mlp=gelu']],
        'fmnist': [[python, TRAIN, FMNIST_KAT, '--work-dir', work['fmnist'], '--cfg-options',
                    *fmnist_options(fmnist.root)]],
    }
    jobs = {name: Job(steps, root, root / name) for name, steps in commands.items()}
    yield types.SimpleNamespace(root=root, work=work, jobs=jobs)
    for job in jobs.values():
        job.stop()


@pytest.fixture(scope='module', autouse=True)
def _start_runs_early(request):
    """Start the background runs before the first test when any selected test of this module needs them."""
    items = [item for item in request.session.items if getattr(item, 'module', None) is request.module]
    if any('runs' in item.fixturenames for item in items):
        request.getfixturevalue('runs')


def assert_is_a_count_of(value, images):
    """A top-1 over ``images`` validation images is k / images for a whole k: a metric averaged wrongly
    (over batches of unequal size, or over the training set) is not."""
    k = value * images / 100.0
    assert abs(k - round(k)) < 1e-3 and 0 <= round(k) <= images, (value, images)


def accuracy(log, mode):
    """The top-1 accuracy that the last Epoch(<mode>) line of the log reports."""
    found = re.findall(rf'Epoch\({mode}\).*?accuracy/top1: ([0-9.]+)', log)
    assert found, f'no Epoch({mode}) accuracy/top1 in the log:\n{log[-3000:]}'
    return float(found[-1])


@pytest.mark.slow
def test_demo_config_trains_validates_and_saves(runs):
    rc, log = runs.jobs['demo'].result(0)
    assert rc == 0, log[-3000:]
    assert 'Epoch(train) [1][2/2]' in log  # 8 classes x 16 images, batch 64
    assert 'Epoch(val) [1][1/1]' in log and 'accuracy/top1' in log
    assert_is_a_count_of(accuracy(log, 'val'), 64)  # the 64 validation images
    checkpoint = runs.work['demo'] / 'epoch_1.pth'
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert state['backbone.blocks.0.mlp.act1.weight_denominator'].shape == (8, 4)
    assert state['head.fc.weight'].shape == (8, 64)


@pytest.mark.slow
def test_test_tool_reproduces_the_validation_accuracy(runs):
    rc, train_log = runs.jobs['demo'].result(0)
    assert rc == 0, train_log[-3000:]
    rc, log = runs.jobs['demo'].result(1)
    assert rc == 0, log[-3000:]
    assert 'Epoch(test) [1/1]' in log and 'accuracy/top1' in log
    # the same weights on the same 64 validation images: the very same accuracy
    assert accuracy(log, 'test') == accuracy(train_log, 'val')


@pytest.mark.slow
def test_demo_config_trains_the_gelu_twin(runs):
    rc, log = runs.jobs['gelu'].result()
    assert rc == 0, log[-3000:]
    assert 'Epoch(val) [1][1/1]' in log and 'accuracy/top1' in log
    gelu = torch.load(runs.work['gelu'] / 'epoch_1.pth', map_location='cpu', weights_only=False)['state_dict']
    rc, kan_log = runs.jobs['demo'].result(0)
    assert rc == 0, kan_log[-3000:]
    kan = torch.load(runs.work['demo'] / 'epoch_1.pth', map_location='cpu', weights_only=False)['state_dict']
    rationals = {k for k in kan if '.act1.' in k or '.act2.' in k}
    assert len(rationals) == 4 * 2 * 2  # 4 blocks x 2 activations x (numerator, denominator)
    assert set(gelu) == set(kan) - rationals


def test_fashion_mnist_config_reads_the_t10k_files_for_validation(fmnist):
    from mmengine.registry import DATASETS, init_default_scope

    cfg = load(FMNIST_KAT)
    cfg.merge_from_dict(parse_cfg_options(fmnist_options(fmnist.root)))
    init_default_scope(cfg.default_scope)
    for loader, prefix in (('train_dataloader', 'train'), ('val_dataloader', 't10k'), ('test_dataloader', 't10k')):
        dataset = DATASETS.build(copy.deepcopy(cfg[loader].dataset))
        images, labels = fmnist.arrays[prefix]
        assert len(dataset) == len(labels), loader
        np.testing.assert_array_equal(dataset.images[:, 0].cpu().numpy(), images)
        np.testing.assert_array_equal(dataset.labels.cpu().numpy(), labels)


@pytest.mark.slow
def test_fashion_mnist_config_trains_on_idx_files(runs):
    rc, log = runs.jobs['fmnist'].result()
    assert rc == 0, log[-3000:]
    assert 'Epoch(train) [1][4/4]' in log  # 64 training images, batch 16
    assert 'Epoch(val) [1][2/2]' in log  # the 32 t10k images, not the 64 training ones
    assert_is_a_count_of(accuracy(log, 'val'), 32)
    checkpoint = torch.load(runs.work['fmnist'] / 'epoch_1.pth', map_location='cpu', weights_only=False)
    state = checkpoint['state_dict']
    assert state['backbone.patch_embed.proj.weight'].shape == (32, 1, 4, 4)  # the tiny override, grey input
    assert state['backbone.pos_embed'].shape == (1, 1 + 7 * 7, 32)
    assert state['head.fc.weight'].shape == (10, 32)
    # save_best='auto' in the config: the best checkpoint is kept too (through mmkat's KATCheckpointHook)
    assert (runs.work['fmnist'] / 'best_accuracy_top1_epoch_1.pth').is_file(), sorted(os.listdir(runs.work['fmnist']))


@pytest.mark.slow
def test_infer_tool_classifies_with_the_trained_checkpoint(runs, tmp_path):
    """tools/infer.py (mmpretrain's ImageClassificationInferencer) on the demo's checkpoint: the mmengine
    training checkpoint loads with torch's weights_only default once mmkat is imported."""
    import json

    from PIL import Image

    from mmkat.datasets import KATDemoShapes
    rc, log = runs.jobs['demo'].result(0)
    assert rc == 0, log[-3000:]
    image = tmp_path / 'shape.png'
    Image.fromarray(KATDemoShapes(split='val', num_per_class=1).get_data_info(0)['img']).save(image)
    out = tmp_path / 'infer'
    result = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'infer.py'), DEMO,
                             str(runs.work['demo'] / 'epoch_1.pth'), str(image), '--out', str(out), '--device', 'cpu'],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    pred = json.loads((out / 'preds' / 'shape.json').read_text())
    scores = pred['pred_scores']
    assert len(scores) == 8 and abs(sum(scores) - 1) < 1e-4
    assert pred['pred_label'] == max(range(8), key=scores.__getitem__) and pred['pred_class'] in SHAPE_NAMES
    assert (out / 'vis' / 'shape.png').is_file()
