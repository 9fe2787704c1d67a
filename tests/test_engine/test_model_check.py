"""mmkat.engine.model_check: the channels a KAT backbone gives against what the built model's neck and heads
take (mmseg's packaged UperNet config with the README's old four-map snippet, mmkat's Mask R-CNN config,
classifiers), and no message where the structure is not one the check knows."""
import os.path as osp
import sys

import pytest
import torch

from tests.conftest import needs

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY = dict(embed_dims=32, num_layers=4, num_heads=2)

# the README's earlier four-map snippet, followed as written on mmseg's packaged UperNet config: the auxiliary
# FCNHead keeps the ResNet's 1024 input channels
UPERNET_SNIPPET = '''
_base_ = ['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py']
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='KAT', arch='small', img_size=512, out_type='featmap',
                  out_indices=(2, 5, 8, 11), final_norm=False),
    neck=dict(type='MultiLevelNeck', in_channels=[384] * 4, out_channels=384, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[384] * 4))
'''


def build(cfg):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    import mmkat  # noqa: F401
    init_default_scope(cfg.default_scope)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def config(text, tmp_path, name='cfg.py'):
    from mmengine.config import Config
    path = tmp_path / name
    path.write_text(text)
    return Config.fromfile(str(path))


def mismatches(model):
    from mmkat.engine.model_check import channel_mismatches
    return channel_mismatches(model)


@needs('mmseg')
def test_upernet_snippet_names_the_auxiliary_head_and_the_fix(tmp_path):
    cfg = config(UPERNET_SNIPPET, tmp_path)
    assert cfg.model.auxiliary_head.type == 'FCNHead' and cfg.model.auxiliary_head.in_channels == 1024
    model = build(cfg)
    found = mismatches(model)
    assert found == [
        'KAT-S gives 384 channels at out_indices (2, 5, 8, 11), model.neck (MultiLevelNeck) turns them into 4 maps '
        'of 384 channels; model.auxiliary_head (FCNHead) takes in_channels=1024 at in_index=2: set '
        'model.auxiliary_head.in_channels=384']
    # what the check stands in for: the forward stops on those channels
    model.eval()
    feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    with pytest.raises(RuntimeError, match='1024'):
        model.auxiliary_head(feats)

    cfg.model.auxiliary_head.in_channels = 384  # the fixed snippet
    model = build(cfg).eval()
    assert mismatches(model) == []
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
        assert model.decode_head(feats).shape[1] == model.auxiliary_head(feats).shape[1] == 150


@needs('mmseg')
def test_segmentation_heads_without_a_neck(tmp_path):
    """One head on KAT's outputs directly: in_index out of range, a wrong single input, resize_concat."""
    cfg = config(UPERNET_SNIPPET, tmp_path)
    cfg.model.backbone.update(arch=TINY, img_size=64, out_indices=(1, 3))
    cfg.model.pop('neck')
    cfg.model.decode_head.update(in_channels=[32, 32], in_index=[0, 1], channels=16)
    cfg.model.auxiliary_head.update(in_channels=32, in_index=2, channels=8)
    found = mismatches(build(cfg))
    assert found == ['KAT (embed_dims=32, 4 blocks) gives 32 channels at out_indices (1, 3); model.auxiliary_head '
                     '(FCNHead) reads in_index=2, but gets 2 maps: set model.auxiliary_head.in_index to one of 0..1']
    cfg.model.auxiliary_head.update(in_index=-1)
    cfg.model.decode_head.update(in_channels=[32, 64])
    found = mismatches(build(cfg))
    assert len(found) == 1 and 'model.decode_head (UPerHead) takes in_channels=[32, 64] at in_index=[0, 1]: set ' \
        'model.decode_head.in_channels=[32, 32]' in found[0]
    cfg.model.decode_head.update(in_channels=[32, 32])
    cfg.model.auxiliary_head = dict(type='FCNHead', in_channels=[32, 16], in_index=[0, 1], channels=8, num_convs=1,
                                    input_transform='resize_concat', num_classes=150)
    found = mismatches(build(cfg))
    assert len(found) == 1 and 'takes in_channels summing to 48 at in_index=[0, 1] (resize_concat): set ' \
        'model.auxiliary_head.in_channels=[32, 32]' in found[0]
    cfg.model.auxiliary_head.update(in_channels=[32, 32])
    assert mismatches(build(cfg)) == []


@needs('mmdet')
def test_mask_rcnn_config_fits_and_a_wrong_neck_or_head_is_named():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'kat', 'mask_rcnn_kat_s.py'))
    assert mismatches(build(cfg)) == []
    cfg.model.backbone.update(arch=TINY, img_size=64, window_size=2, global_attn_indexes=[1, 3], init_cfg=None)
    cfg.model.neck.update(backbone_channel=32)
    assert mismatches(build(cfg)) == []
    cfg.model.neck.update(backbone_channel=64)
    found = mismatches(build(cfg))
    assert len(found) == 1 and 'model.neck (KATSimpleFPN) takes backbone_channel=64 for the last of them: set ' \
        'model.neck.backbone_channel=32' in found[0]
    cfg.model.neck.update(backbone_channel=32)
    cfg.model.rpn_head.update(in_channels=128)
    found = mismatches(build(cfg))
    assert len(found) == 1 and found[0].endswith('model.rpn_head (RPNHead) takes in_channels=128: set '
                                                 'model.rpn_head.in_channels=256'), found
    assert 'model.neck (KATSimpleFPN) turns them into 5 maps of 256 channels' in found[0]


@needs('mmdet')
def test_mmdet_fpn_takes_every_kat_output(tmp_path):
    """mmdet's own FPN on four KAT outputs (the brief's list-of-in_channels neck) and RetinaNet's head."""
    cfg = config('''
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='KAT', arch=dict(embed_dims=32, num_layers=4, num_heads=2),
                           img_size=64, out_type='featmap', out_indices=(0, 1, 2, 3), final_norm=False),
             neck=dict(in_channels=[32, 32, 32, 64], out_channels=64, start_level=0),
             bbox_head=dict(in_channels=64, feat_channels=64))
''', tmp_path)
    found = mismatches(build(cfg))
    assert len(found) == 1 and 'model.neck (FPN) takes 4 inputs with in_channels=[32, 32, 32, 64]: set ' \
        'model.neck.in_channels=[32, 32, 32, 32]' in found[0]
    cfg.model.neck.in_channels = [32] * 4
    assert mismatches(build(cfg)) == []
    cfg.model.bbox_head.in_channels = 256
    found = mismatches(build(cfg))
    assert len(found) == 1 and 'model.bbox_head (RetinaHead) takes in_channels=256: set ' \
        'model.bbox_head.in_channels=64' in found[0]


@needs('mmpretrain')
def test_classifier_head_and_what_the_check_does_not_know():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py'))
    assert mismatches(build(cfg)) == []
    cfg.model.head.in_channels = 999
    assert mismatches(build(cfg)) == [
        'KAT (embed_dims=64, 4 blocks) gives 64 channels at out_indices (3); model.head (LinearClsHead) takes '
        'in_channels=999: set model.head.in_channels=64']
    # through a pooling neck the channels stay
    cfg.model.backbone.out_type = 'featmap'
    cfg.model.neck = dict(type='GlobalAveragePooling')
    found = mismatches(build(cfg))
    assert len(found) == 1 and '(through model.neck, GlobalAveragePooling); model.head' in found[0]
    # a neck the check does not know: what the head gets is unknown, so nothing is said (never a false refusal)
    cfg.model.neck = dict(type='LinearNeck', in_channels=64, out_channels=999, gap_dim=2)
    assert mismatches(build(cfg)) == []
    # not a KAT backbone: nothing to check
    cfg.model.backbone = dict(type='LeNet5', num_classes=0)
    cfg.model.neck = None
    assert mismatches(build(cfg)) == []
    assert mismatches(object()) == []


@needs('mmpretrain')
def test_check_channels_fails_with_every_line():
    from mmengine.config import Config

    from mmkat.engine.model_check import check_channels
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py'))
    model = build(cfg)
    check_channels(model, fail=lambda message: pytest.fail(message))  # fits: fail is not called
    cfg.model.head.in_channels = 999
    with pytest.raises(SystemExit, match='do not take the channels its KAT backbone gives') as info:
        check_channels(build(cfg), fail=lambda message: sys.exit(message))
    assert 'set model.head.in_channels=64' in str(info.value)
