"""KATSimpleFPN: ViTDet's simple feature pyramid on KAT's stride-16 map (shapes, identity level, gradients,
argument and input checks, the mmdet scope, the KAT -> neck chain)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmkat.models import KAT, KATSimpleFPN
from mmkat.models.necks import LayerNorm2d
from tests.conftest import needs

C = 64


def expected_sizes(h, w, num_outs):
    """(h, w) of every level: 4x, 2x, 1x, floor /2 (MaxPool2d(2)), then ceil /2 per extra level."""
    sizes = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (h // 2, w // 2)]
    while len(sizes) < num_outs:
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes


@pytest.mark.parametrize('num_outs', [4, 5, 6])
@pytest.mark.parametrize('hw', [(16, 16), (10, 14), (9, 13)])
def test_output_count_and_shapes(hw, num_outs):
    torch.manual_seed(0)
    neck = KATSimpleFPN(backbone_channel=C, out_channels=32, num_outs=num_outs)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        outs = neck((torch.randn(2, C, 3, 3), x))   # only the last element is used
    assert isinstance(outs, tuple) and len(outs) == num_outs
    for out, (h, w) in zip(outs, expected_sizes(*hw, num_outs)):
        assert out.shape == (2, 32, h, w)
        assert torch.isfinite(out).all()


def test_explicit_sizes_odd_input():
    neck = KATSimpleFPN(backbone_channel=C, out_channels=16, num_outs=6)
    with torch.no_grad():
        outs = neck((torch.randn(1, C, 9, 13),))
    assert [tuple(o.shape[2:]) for o in outs] == [(36, 52), (18, 26), (9, 13), (4, 6), (2, 3), (1, 2)]


def test_structure_and_norm_none():
    neck = KATSimpleFPN(backbone_channel=C, out_channels=32)
    assert neck.in_channels == [16, 32, 64, 64]
    assert isinstance(neck.fpn1[1], LayerNorm2d) and isinstance(neck.fpn1[2], torch.nn.GELU)
    for module in list(neck.lateral_convs) + list(neck.fpn_convs):
        assert module[0].bias is None and isinstance(module[1], LayerNorm2d)
    assert [m[0].kernel_size for m in neck.lateral_convs] == [(1, 1)] * 4
    assert [m[0].kernel_size for m in neck.fpn_convs] == [(3, 3)] * 4

    plain = KATSimpleFPN(backbone_channel=C, out_channels=32, norm=None)
    assert not any(isinstance(m, LayerNorm2d) for m in plain.modules())
    for module in list(plain.lateral_convs) + list(plain.fpn_convs):
        assert len(module) == 1 and module[0].bias is not None
    with torch.no_grad():
        outs = plain((torch.randn(2, C, 10, 14),))
    assert [tuple(o.shape) for o in outs] == [(2, 32, h, w) for h, w in expected_sizes(10, 14, 5)]


def test_layernorm2d_matches_channel_layernorm():
    torch.manual_seed(0)
    ln = LayerNorm2d(8)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mean) / torch.sqrt(var + 1e-6) * ln.weight.view(1, -1, 1, 1)
                               + ln.bias.view(1, -1, 1, 1))


def test_pyramid_inputs_before_the_convs():
    """What reaches each lateral conv: the stride-16 level is exactly the input, the stride-32 level its
    2x2 max-pool, the stride-4/8 levels the transposed-conv branches."""
    torch.manual_seed(0)
    neck = KATSimpleFPN(backbone_channel=C, out_channels=32)
    seen = {}
    for i, lateral in enumerate(neck.lateral_convs):
        lateral.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, args[0].detach().clone()))
    x = torch.randn(2, C, 9, 13)
    with torch.no_grad():
        neck((x,))
        assert torch.equal(seen[2], x)
        assert torch.equal(seen[3], F.max_pool2d(x, 2, 2))
        assert torch.allclose(seen[1], F.conv_transpose2d(x, neck.fpn2.weight, neck.fpn2.bias, stride=2))
        up = F.conv_transpose2d(x, neck.fpn1[0].weight, neck.fpn1[0].bias, stride=2)
        up = F.gelu(neck.fpn1[1](up))
        up = F.conv_transpose2d(up, neck.fpn1[3].weight, neck.fpn1[3].bias, stride=2)
        assert torch.allclose(seen[0], up, atol=1e-6)
        assert seen[0].shape == (2, C // 4, 36, 52) and seen[1].shape == (2, C // 2, 18, 26)


def test_identity_weights_reproduce_the_stride16_input():
    """With identity 1x1 lateral / 3x3 output convs and no norm, the stride-16 output IS the input, the
    stride-32 output its max-pool and the extra level its stride-2 subsample."""
    neck = KATSimpleFPN(backbone_channel=C, out_channels=C, norm=None)
    with torch.no_grad():
        for lateral, fpn_conv in zip(neck.lateral_convs, neck.fpn_convs):
            for conv in (lateral[0], fpn_conv[0]):
                conv.weight.zero_()
                conv.bias.zero_()
                k = conv.kernel_size[0] // 2
                n = min(conv.in_channels, conv.out_channels)
                conv.weight[torch.arange(n), torch.arange(n), k, k] = 1.0
        x = torch.randn(2, C, 10, 14)
        outs = neck((x,))
    torch.testing.assert_close(outs[2], x)
    torch.testing.assert_close(outs[3], F.max_pool2d(x, 2))
    torch.testing.assert_close(outs[4], F.max_pool2d(x, 2)[:, :, ::2, ::2])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for norm in ('LN', None):
        neck = KATSimpleFPN(backbone_channel=C, out_channels=16, num_outs=5, norm=norm)
        x = torch.randn(2, C, 9, 13, requires_grad=True)
        outs = neck((x,))
        sum((o * torch.randn_like(o)).sum() for o in outs).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for name, p in neck.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('kwargs, match', [
    (dict(backbone_channel=62), 'divisible by 4'),
    (dict(backbone_channel=0), 'divisible by 4'),
    (dict(backbone_channel=64.0), 'divisible by 4'),
    (dict(backbone_channel=64, in_channels=[16, 32, 64]), r'\[16, 32, 64, 64\]'),
    (dict(backbone_channel=64, in_channels=[64, 64, 64, 64]), r'\[16, 32, 64, 64\]'),
    (dict(backbone_channel=64, num_outs=3), 'num_outs'),
    (dict(backbone_channel=64, out_channels=0), 'out_channels'),
    (dict(backbone_channel=64, norm='BN'), 'norm'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KATSimpleFPN(**kwargs)


def test_explicit_consistent_in_channels_and_bare_tensor():
    neck = KATSimpleFPN(backbone_channel=C, in_channels=(16, 32, 64, 64), out_channels=8, num_outs=4)
    with torch.no_grad():
        assert len(neck(torch.randn(1, C, 4, 4))) == 4


def test_bad_inputs():
    neck = KATSimpleFPN(backbone_channel=C, out_channels=8)
    with pytest.raises(ValueError, match=r'\[B, 64, H, W\].*\(2, 32, 8, 8\)'):
        neck((torch.randn(2, 32, 8, 8),))
    with pytest.raises(ValueError, match=r'\[B, 64, H, W\]'):
        neck((torch.randn(2, 64, 8),))
    with pytest.raises(ValueError, match='non-empty tuple'):
        neck(())
    with pytest.raises(ValueError, match='at least 2x2'):
        neck((torch.randn(1, 64, 1, 5),))


@needs('mmdet')
def test_builds_in_mmdet_scope():
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import mmkat  # noqa: F401  (registers KATSimpleFPN on mmengine's root registry)

    init_default_scope('mmdet')
    cfg = dict(type='KATSimpleFPN', backbone_channel=64, out_channels=32)
    for c in (cfg, dict(cfg, _scope_='mmdet')):
        neck = MODELS.build(copy.deepcopy(c))
        assert type(neck) is KATSimpleFPN and neck.out_channels == 32 and neck.num_outs == 5


def test_kat_to_simple_fpn_chain():
    torch.manual_seed(0)
    backbone = KAT(arch=dict(embed_dims=64, num_layers=2, num_heads=2), img_size=64, patch_size=16,
                   with_cls_token=False, out_type='featmap', rational=dict(impl='reference'))
    neck = KATSimpleFPN(backbone_channel=64, out_channels=32)
    img = torch.randn(2, 3, 64, 96)
    feats = backbone(img)
    assert feats[-1].shape == (2, 64, 4, 6)
    outs = neck(feats)
    assert len(outs) == 5
    strides = [4, 8, 16, 32, 64]
    for out, s in zip(outs, strides):
        assert out.shape == (2, 32, -(-64 // s), -(-96 // s))   # 64x96 / s, ceil at stride 64 (1x1.5 -> 1x2)
    sum(o.sum() for o in outs).backward()
    assert backbone.patch_embed.proj.weight.grad is not None
