"""Detection: the Mask R-CNN configs with a tiny KAT swapped in run a loss and a predict forward on the CPU, and
KAT drops into one of mmdet's own packaged configs with three lines."""
import glob
import os.path as osp

import pytest
import torch

from tests.conftest import needs

pytestmark = needs('mmdet')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'kat', 'mask_rcnn_kat_*.py')))
TINY = dict(embed_dims=32, num_layers=4, num_heads=2)


def tiny_detector(cfg):
    """Swap the tiny arch into a Mask R-CNN config (no pretrained file) and build it under mmdet's scope."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import mmkat  # noqa: F401

    backbone = cfg.model.backbone
    backbone.arch = TINY
    backbone.img_size = 128
    backbone.window_size = 4
    backbone.global_attn_indexes = [1, 3]
    backbone.init_cfg = None
    cfg.model.neck.backbone_channel = 32
    cfg.model.neck.in_channels = [8, 16, 32, 32]
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def detection_batch(model, size=128):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                         batch_input_shape=(size, size), scale_factor=(1.0, 1.0)))
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:60, 20:90] = 1
    masks[1, 70:120, 30:70] = 1
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[20., 10., 90., 60.], [30., 70., 70., 120.]]), labels=torch.tensor([3, 7]),
        masks=BitmapMasks(masks.numpy(), size, size))
    return torch.randn(1, 3, size, size), [sample]


def test_the_three_sizes_exist():
    assert [osp.basename(p) for p in DET_CONFIGS] == ['mask_rcnn_kat_b.py', 'mask_rcnn_kat_s.py',
                                                     'mask_rcnn_kat_t.py']


@pytest.mark.parametrize('path', DET_CONFIGS, ids=[osp.basename(p) for p in DET_CONFIGS])
def test_mask_rcnn_config_holds_the_vitdet_recipe(path):
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    size = osp.basename(path)[len('mask_rcnn_kat_'):-3]
    arch, dims = {'t': ('tiny', 192), 's': ('small', 384), 'b': ('base', 768)}[size]
    b = cfg.model.backbone
    assert (b.type, b.arch, b.img_size, b.out_type, b.with_cls_token) == ('KAT', arch, 1024, 'featmap', False)
    assert (b.window_size, list(b.global_attn_indexes), b.use_rel_pos) == (14, [2, 5, 8, 11], True)
    assert b.init_cfg == dict(type='Pretrained', checkpoint=f'kat-{arch}-p16_3rdparty_in1k')
    assert cfg.model.neck.type == 'KATSimpleFPN' and cfg.model.neck.backbone_channel == dims
    assert cfg.model.neck.get('in_channels') is None and cfg.model.neck.num_outs == 5  # derived by the neck
    ow = cfg.optim_wrapper
    assert (ow.type, ow.constructor, ow.paramwise_cfg.layer_decay_rate) == (
        'AmpOptimWrapper', 'KATLayerDecayOptimWrapperConstructor', 0.7)
    assert dict(ow.optimizer) == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 184375
    resize = [t for t in cfg.train_dataloader.dataset.dataset.pipeline if t.type == 'RandomResize'][0]
    assert resize.scale == (1024, 1024) and resize.ratio_range == (0.1, 2.0)  # large-scale jitter
    assert cfg.val_evaluator.metric == ['bbox', 'segm']


@pytest.mark.parametrize('path', DET_CONFIGS[:1], ids=['mask_rcnn_kat_b.py'])
def test_mask_rcnn_with_a_tiny_kat_runs_loss_and_predict_on_cpu(path):
    from mmengine.config import Config

    model = tiny_detector(Config.fromfile(path))
    inputs, samples = detection_batch(model)
    data = model.data_preprocessor(dict(inputs=[inputs[0] * 50 + 100], data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    for name in ('loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'):
        assert name in losses
    total = sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.blocks[0].mlp.act1.weight_denominator.grad.abs().sum() > 0
    assert model.backbone.blocks[0].attn.rel_pos_h.grad is not None
    # DistributedDataParallel (tools/dist_train.sh) stops on a trainable parameter without a gradient
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[inputs[0] * 50 + 100], data_samples=samples), training=False)
        results = model(**data, mode='predict')
    assert len(results) == 1 and hasattr(results[0], 'pred_instances')


USER_CONFIG = """\
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='KAT', arch='small', img_size=1024, out_type='featmap', with_cls_token=False,
                  final_norm=False, window_size=14, global_attn_indexes=[2, 5, 8, 11], use_rel_pos=True),
    neck=dict(_delete_=True, type='KATSimpleFPN', backbone_channel=384, out_channels=256, num_outs=5))
"""


def test_kat_drops_into_an_mmdet_packaged_config(tmp_path):
    """KAT and KATSimpleFPN on top of mmdet's own RetinaNet config: it builds and trains a step."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    path = tmp_path / 'retinanet_kat_s.py'
    path.write_text(USER_CONFIG)
    cfg = Config.fromfile(str(path))  # runs custom_imports: registers KAT
    assert cfg.model.type == 'RetinaNet' and cfg.model.backbone.type == 'KAT'
    cfg.model.backbone.update(arch=TINY, img_size=128, window_size=4, global_attn_indexes=[1, 3])
    cfg.model.neck.update(backbone_channel=32)
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    inputs, samples = detection_batch(model)
    data = model.data_preprocessor(dict(inputs=[inputs[0] * 50 + 100], data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.blocks[3].mlp.fc2.weight.grad.abs().sum() > 0


def test_mask_rcnn_optim_wrapper_applies_layer_decay_to_the_tiny_detector():
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(DET_CONFIGS[0])
    model = tiny_detector(cfg)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs a GPU; the parameter groups are the same
    cfg.optim_wrapper.pop('loss_scale', None)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of, wd_of = {}, {}
    for group in wrapper.optimizer.param_groups:
        for name in group['param_names']:
            lr_of[name], wd_of[name] = group['lr'], group['weight_decay']
    # 4 blocks -> 6 depths: block i at depth i + 1, scale 0.7 ** (5 - depth)
    assert lr_of['backbone.blocks.0.attn.qkv.weight'] == pytest.approx(1e-4 * 0.7 ** 4)
    assert lr_of['backbone.blocks.3.mlp.act2.weight_denominator'] == pytest.approx(1e-4 * 0.7)
    assert lr_of['backbone.pos_embed'] == pytest.approx(1e-4 * 0.7 ** 5) and wd_of['backbone.pos_embed'] == 0
    assert wd_of['backbone.blocks.1.attn.rel_pos_h'] == 0 and wd_of['backbone.blocks.1.norm1.weight'] == 0
    assert wd_of['backbone.blocks.1.mlp.fc1.weight'] == pytest.approx(0.1)
    assert lr_of[next(k for k in lr_of if k.startswith('neck.'))] == pytest.approx(1e-4)
    assert lr_of[next(k for k in lr_of if k.startswith('roi_head.'))] == pytest.approx(1e-4)
