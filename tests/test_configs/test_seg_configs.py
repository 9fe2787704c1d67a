"""Segmentation: the UperNet configs hold mmseg's ViT + UperNet recipe; with a tiny KAT swapped in they run a loss
and a predict forward on the CPU, sliding-window inference included on a non-square image; KAT drops into one of
mmseg's own packaged (non-UperNet) configs; the demo trains and evaluates end to end."""
import glob
import json
import os.path as osp

import pytest
import torch

from tests.conftest import needs
from tests.test_configs.test_det_demo import data_options, run

pytestmark = needs('mmseg')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SEG_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'kat', 'upernet_kat_*.py')))
DEMO = osp.join(ROOT, 'configs', 'kat', 'demo', 'upernet_kat_demo.py')
TINY = dict(embed_dims=32, num_layers=4, num_heads=2)

USER_CONFIG = '''
_base_ = ['mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='KAT', arch='small', img_size=512, out_type='featmap',
                  out_indices=(2, 5, 8, 11), final_norm=False),
    neck=dict(type='MultiLevelNeck', in_channels=[384] * 4, out_channels=384, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[384] * 4))
'''


def build_segmentor(cfg, dims=32):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmkat  # noqa: F401
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    model.init_weights()
    return revert_sync_batchnorm(model)


def tiny_upernet(cfg):
    cfg.model.backbone.update(arch=TINY, img_size=64, out_indices=(0, 1, 2, 3), init_cfg=None)
    cfg.model.neck.update(in_channels=[32] * 4, out_channels=32)
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=16)
    cfg.model.auxiliary_head.update(in_channels=32, channels=8)
    return build_segmentor(cfg)


def seg_batch(height, width, num_classes, batch=2, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g))
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, height, width), generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_the_three_sizes_exist():
    assert [osp.basename(p) for p in SEG_CONFIGS] == ['upernet_kat_b.py', 'upernet_kat_s.py', 'upernet_kat_t.py']


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=[osp.basename(p) for p in SEG_CONFIGS])
def test_upernet_config_holds_the_mmseg_vit_recipe(path):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    size = osp.basename(path)[len('upernet_kat_'):-3]
    arch, dims = {'t': ('tiny', 192), 's': ('small', 384), 'b': ('base', 768)}[size]
    m = cfg.model
    b = m.backbone
    got = (b.type, b.arch, b.img_size, b.out_type, tuple(b.out_indices))
    assert got == ('KAT', arch, 512, 'featmap', (2, 5, 8, 11))
    assert b.init_cfg == dict(type='Pretrained', checkpoint=f'kat-{arch}-p16_3rdparty_in1k')
    assert m.pretrained is None
    assert (m.neck.type, list(m.neck.in_channels), m.neck.out_channels, list(m.neck.scales)) == (
        'MultiLevelNeck', [dims] * 4, dims, [4, 2, 1, 0.5])
    assert m.decode_head.type == 'UPerHead' and list(m.decode_head.in_channels) == [dims] * 4
    assert m.auxiliary_head.type == 'FCNHead' and m.auxiliary_head.in_channels == dims
    assert m.decode_head.num_classes == m.auxiliary_head.num_classes == 150
    assert tuple(m.data_preprocessor.size) == (512, 512)
    assert m.test_cfg.mode == 'slide' and tuple(m.test_cfg.crop_size) == (512, 512)
    ow = cfg.optim_wrapper
    assert ow.constructor == 'KATLayerDecayOptimWrapperConstructor' and ow.paramwise_cfg.layer_decay_rate == 0.9
    assert dict(ow.optimizer) == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR'] and cfg.param_scheduler[1].end == 160000
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop'][0]
    assert tuple(crop.crop_size) == (512, 512)
    assert cfg.val_evaluator.type == 'IoUMetric'


def test_upernet_with_a_tiny_kat_runs_loss_predict_and_slide_inference_on_cpu():
    from mmengine.config import Config
    cfg = Config.fromfile(SEG_CONFIGS[0])
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.test_cfg = dict(mode='slide', crop_size=(64, 64), stride=(40, 40))
    model = tiny_upernet(cfg)
    model.train()
    data = model.data_preprocessor(seg_batch(64, 64, 150), training=True)
    losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.blocks[0].mlp.act1.weight_numerator.grad.abs().sum() > 0
    # DistributedDataParallel (tools/dist_train.sh) stops on a trainable parameter without a gradient
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.eval()
    # a non-square image larger than the crop: 3 x 4 windows of 64 at stride 40 over 96 x 150
    data = model.data_preprocessor(seg_batch(96, 150, 150, batch=1, seed=1), training=False)
    with torch.no_grad():
        out = model(**data, mode='predict')
    assert out[0].pred_sem_seg.data.shape == (1, 96, 150)
    assert out[0].seg_logits.data.shape == (150, 96, 150)
    pred = out[0].pred_sem_seg.data
    assert pred.min() >= 0 and pred.max() < 150


def assert_a_training_step_reaches_kat(cfg):
    """Build the segmentor of ``cfg`` at 64 px, run a loss on a random batch and back-propagate it."""
    cfg.model.data_preprocessor.size = (64, 64)
    model = build_segmentor(cfg)
    model.train()
    data = model.data_preprocessor(seg_batch(64, 64, 150), training=True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.blocks[3].mlp.fc2.weight.grad.abs().sum() > 0


def test_kat_drops_into_an_mmseg_packaged_segformer_config(tmp_path):
    """KAT with four maps through MultiLevelNeck on mmseg's own SegFormer config (an all-MLP head, no UperNet)."""
    from mmengine.config import Config
    path = tmp_path / 'segformer_kat_s.py'
    path.write_text(USER_CONFIG)
    cfg = Config.fromfile(str(path))
    assert cfg.model.decode_head.type == 'SegformerHead' and cfg.model.backbone.type == 'KAT'
    cfg.model.backbone.update(arch=TINY, img_size=64, out_indices=(0, 1, 2, 3))
    cfg.model.neck.update(in_channels=[32] * 4, out_channels=32)
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=16)
    assert_a_training_step_reaches_kat(cfg)


SINGLE_INPUT_CONFIG = '''
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py']
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='KAT', arch='small', img_size=512, out_type='featmap', out_indices=-1,
                  final_norm=False),
    decode_head=dict(in_channels=384, in_index=0),
    auxiliary_head=None)
'''


def test_kat_drops_into_a_single_input_head_config(tmp_path):
    """KAT's single feature map on mmseg's own DeepLabV3 config (ASPPHead, one input)."""
    from mmengine.config import Config
    path = tmp_path / 'deeplabv3_kat_s.py'
    path.write_text(SINGLE_INPUT_CONFIG)
    cfg = Config.fromfile(str(path))
    assert cfg.model.decode_head.type == 'ASPPHead' and cfg.model.backbone.type == 'KAT'
    cfg.model.backbone.update(arch=TINY, img_size=64)
    cfg.model.decode_head.update(in_channels=32, channels=16)
    assert_a_training_step_reaches_kat(cfg)


def test_seg_optim_wrapper_applies_layer_decay():
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(SEG_CONFIGS[0])
    model = tiny_upernet(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    base = 6e-5
    # 4 blocks: depth 0 (embeddings) .. 4, then 5 for everything outside the backbone
    assert lr_of[id(model.backbone.patch_embed.projection.weight if hasattr(model.backbone.patch_embed, 'projection')
                    else model.backbone.patch_embed.proj.weight)] == pytest.approx(base * 0.9 ** 5)
    assert lr_of[id(model.backbone.blocks[0].mlp.fc1.weight)] == pytest.approx(base * 0.9 ** 4)
    assert lr_of[id(model.backbone.blocks[3].mlp.fc1.weight)] == pytest.approx(base * 0.9 ** 1)
    assert lr_of[id(model.decode_head.conv_seg.weight)] == pytest.approx(base)
    assert len(lr_of) == len(list(model.parameters()))


def test_demo_config_is_the_scaled_down_recipe():
    from mmengine.config import Config

    from mmkat.datasets import SEG_CLASSES
    cfg = Config.fromfile(DEMO)
    assert tuple(cfg.classes) == SEG_CLASSES and cfg.model.decode_head.num_classes == len(SEG_CLASSES)
    assert cfg.model.backbone.type == 'KAT' and cfg.model.neck.type == 'MultiLevelNeck'
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.auxiliary_head.type == 'FCNHead'
    assert cfg.val_evaluator.type == 'IoUMetric'


@pytest.mark.slow
def test_demo_trains_evaluates_and_tests_on_cpu(tmp_path):
    data = tmp_path / 'scenes'
    rc, log = run(osp.join(ROOT, 'tools', 'data', 'make_demo_scenes.py'), '--out', data, '--train', 8, '--val', 3,
                  '--img-size', 128, cwd=tmp_path)
    assert rc == 0, log
    work = tmp_path / 'work'
    loaders = [f'{k}.{v}' for k in ('train_dataloader', 'val_dataloader')
               for v in ('num_workers=0', 'persistent_workers=False')]
    rc, log = run(osp.join(ROOT, 'tools', 'train.py'), DEMO, '--work-dir', work, '--cfg-options',
                  *data_options(data, coco_metric=False),
                  'train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
                  'param_scheduler.0.end=2', 'param_scheduler.1.begin=2', 'param_scheduler.1.end=4', *loaders,
                  cwd=tmp_path)
    assert rc == 0, log[-3000:]
    assert 'mIoU:' in log and 'disc' in log, log[-3000:]  # the per-class IoU table and the summary
    assert (work / 'iter_4.pth').is_file()
    rc, log = run(osp.join(ROOT, 'tools', 'test.py'), DEMO, work / 'iter_4.pth', '--work-dir', tmp_path / 'test',
                  '--cfg-options', *data_options(data, coco_metric=False), 'test_dataloader.num_workers=0',
                  'test_dataloader.persistent_workers=False', 'model.test_cfg.mode=slide',
                  'model.test_cfg.crop_size=(192,192)', 'model.test_cfg.stride=(128,128)', cwd=tmp_path)
    assert rc == 0, log[-3000:]
    assert 'mIoU:' in log, log[-3000:]
    # predicting with the checkpoint: mmseg's MMSegInferencer through tools/infer.py
    image = sorted((data / 'images' / 'val').iterdir())[0]
    out = tmp_path / 'infer'
    rc, log = run(osp.join(ROOT, 'tools', 'infer.py'), DEMO, work / 'iter_4.pth', image, '--out', out,
                  '--device', 'cpu', cwd=tmp_path)
    assert rc == 0, log[-3000:]
    pred = json.loads((out / 'preds' / (image.stem + '.json')).read_text())
    assert pred['classes'][0] == 'background' and pred['label_map'] and osp.isfile(pred['label_map'])
    assert (out / 'vis' / image.name).is_file()


def test_without_the_data_the_tools_say_how_to_draw_it(tmp_path):
    rc, log = run(osp.join(ROOT, 'tools', 'train.py'), DEMO, '--work-dir', tmp_path / 'w', cwd=tmp_path)
    assert rc == 1 and 'Traceback' not in log
    assert 'make_demo_scenes.py --out' in log, log
    assert not (tmp_path / 'w').exists()


def test_ade20k_config_without_the_data_names_the_layout(tmp_path):
    rc, log = run(osp.join(ROOT, 'tools', 'train.py'), SEG_CONFIGS[2], '--work-dir', tmp_path / 'w', cwd=tmp_path)
    assert rc == 1 and 'Traceback' not in log
    assert 'data/ade/ADEChallengeData2016' in log and 'ADEChallengeData2016' in log and 'images/' in log, log
    assert 'train_dataloader.dataset.data_root=PATH' in log


@pytest.mark.slow
def test_benchmark_config_times_the_segmentor(tmp_path):
    out = tmp_path / 'bench.json'
    rc, log = run(osp.join(ROOT, 'tools', 'benchmark_config.py'), DEMO, '--batch-size', 2, '--steps', 1,
                  '--warmup', 1, '--size', 64, 96, '--out', out, cwd=tmp_path)
    assert rc == 0, log[-3000:]
    result = json.loads(out.read_text())['runs'][-1]
    assert result['settings']['task'] == 'seg' and result['settings']['size'] == [64, 96]
    assert {row['variant'] for row in result['rows']} == {'kat', 'gelu'}
    assert all(row['iters_per_s'] > 0 and row['final_loss'] > 0 for row in result['rows'])
