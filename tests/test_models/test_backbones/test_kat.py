"""The KAT backbone: the OpenMMLab backbone contract, the released function, checkpoints and inits."""
import math
import re

import pytest
import torch
from torch import nn

from mmkat.models import KAT
from mmkat.models.weight_init import rational_second_moment
from mmkat.ops import group_rational_reference

SMALL = dict(embed_dims=32, num_layers=4, num_heads=2)


def small_kat(**kwargs):
    kwargs.setdefault('arch', SMALL)
    kwargs.setdefault('img_size', 32)
    kwargs.setdefault('patch_size', 8)
    kwargs.setdefault('rational', dict(impl='reference'))
    return KAT(**kwargs)


def released_like_state_dict(dims=32, layers=4, grid=4, classes=10, seed=0, patch=8):
    """A state dict with exactly the released key names and shapes (the released checkpoint layout), random values
    (negative ones included) for every tensor."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {'cls_token': r(1, 1, dims), 'pos_embed': r(1, 1 + grid * grid, dims),
          'patch_embed.proj.weight': r(dims, 3, patch, patch, scale=0.05), 'patch_embed.proj.bias': r(dims)}
    for i in range(layers):
        p = f'blocks.{i}.'
        sd.update({
            p + 'norm1.weight': 1 + r(dims), p + 'norm1.bias': r(dims),
            p + 'attn.qkv.weight': r(3 * dims, dims), p + 'attn.qkv.bias': r(3 * dims),
            p + 'attn.proj.weight': r(dims, dims), p + 'attn.proj.bias': r(dims),
            p + 'norm2.weight': 1 + r(dims), p + 'norm2.bias': r(dims),
            p + 'mlp.act1.weight_numerator': r(1, 6, scale=0.5), p + 'mlp.act1.weight_denominator': r(8, 4),
            p + 'mlp.fc1.weight': r(4 * dims, dims), p + 'mlp.fc1.bias': r(4 * dims),
            p + 'mlp.act2.weight_numerator': r(1, 6, scale=0.5), p + 'mlp.act2.weight_denominator': r(8, 4),
            p + 'mlp.fc2.weight': r(dims, 4 * dims), p + 'mlp.fc2.bias': r(dims),
        })
    sd.update({'norm.weight': 1 + r(dims), 'norm.bias': r(dims), 'head.weight': r(classes, dims),
               'head.bias': r(classes)})
    return sd


def released_forward(sd, x, num_heads=2, patch=8, layers=4):
    """The released KAT (timm ViT + KAN) written out from the spec with plain tensor ops: the logits."""
    B = x.shape[0]
    t = torch.nn.functional.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd['cls_token'].expand(B, -1, -1), t], 1) + sd['pos_embed']
    D = t.shape[-1]
    hd = D // num_heads
    ln = torch.nn.functional.layer_norm
    for i in range(layers):
        p = f'blocks.{i}.'
        h = ln(t, (D, ), sd[p + 'norm1.weight'], sd[p + 'norm1.bias'], eps=1e-6)
        qkv = h @ sd[p + 'attn.qkv.weight'].t() + sd[p + 'attn.qkv.bias']
        q, k, v = qkv.view(B, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(B, -1, D)
        t = t + a @ sd[p + 'attn.proj.weight'].t() + sd[p + 'attn.proj.bias']
        h = ln(t, (D, ), sd[p + 'norm2.weight'], sd[p + 'norm2.bias'], eps=1e-6)
        h = group_rational_reference(h, sd[p + 'mlp.act1.weight_numerator'], sd[p + 'mlp.act1.weight_denominator'], 8)
        h = h @ sd[p + 'mlp.fc1.weight'].t() + sd[p + 'mlp.fc1.bias']
        h = group_rational_reference(h, sd[p + 'mlp.act2.weight_numerator'], sd[p + 'mlp.act2.weight_denominator'], 8)
        t = t + h @ sd[p + 'mlp.fc2.weight'].t() + sd[p + 'mlp.fc2.bias']
    t = ln(t, (D, ), sd['norm.weight'], sd['norm.bias'], eps=1e-6)
    return t[:, 0] @ sd['head.weight'].t() + sd['head.bias']


# ----------------------------------------------------------------------------- sizes and parameter counts
@pytest.mark.parametrize('arch,dims,expected', [('tiny', 192, 5_718_328), ('small', 384, 22_051_576),
                                                ('base', 768, 86_568_568)])
def test_parameter_counts_match_the_release(arch, dims, expected):
    model = KAT(arch)
    backbone = sum(p.numel() for p in model.parameters())
    assert backbone + dims * 1000 + 1000 == expected  # + the 1000-class head
    assert model.embed_dims == dims


def test_gelu_twin_has_the_vit_parameter_count():
    kat, vit = KAT('tiny'), KAT('tiny', mlp='gelu')
    rationals = 12 * 2 * (6 + 8 * 4)
    assert sum(p.numel() for p in kat.parameters()) - sum(p.numel() for p in vit.parameters()) == rationals
    assert not any('act1' in k for k in vit.state_dict())


def test_state_dict_keeps_the_released_names_and_shapes():
    sd = released_like_state_dict(dims=192, layers=12, grid=14, classes=1000, patch=16)
    mine = KAT('tiny').state_dict()
    expected = {k: v.shape for k, v in sd.items() if not k.startswith('head.')}
    assert {k: v.shape for k, v in mine.items()} == expected


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize('size', [(32, 32), (40, 24), (33, 47)])
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap', 'avg_featmap', 'raw'])
def test_output_shapes_for_square_non_square_and_odd_inputs(size, out_type):
    model = small_kat(out_type=out_type, out_indices=[1, -1]).eval()
    outs = model(torch.randn(2, 3, *size))
    h, w = math.ceil(size[0] / 8), math.ceil(size[1] / 8)
    expected = {'cls_token': (2, 32), 'avg_featmap': (2, 32), 'featmap': (2, 32, h, w), 'raw': (2, 1 + h * w, 32)}
    assert isinstance(outs, tuple) and len(outs) == 2
    assert all(o.shape == expected[out_type] for o in outs)


def test_featmap_stride_is_the_patch_size_and_padding_is_bottom_right():
    model = small_kat(out_type='featmap').eval()
    x = torch.randn(1, 3, 32, 32)
    padded = torch.zeros(1, 3, 40, 40)
    padded[..., :32, :32] = x
    odd = torch.cat([x, torch.randn(1, 3, 32, 1)], dim=3)[..., :32, :32]
    assert torch.equal(model(odd)[0], model(x)[0])
    # a 33-wide input is padded to 40: its last column of patches sees the extra column plus zeros
    wide = torch.zeros(1, 3, 32, 33)
    wide[..., :32] = x
    assert model(wide)[0].shape[-1] == 5


def test_out_type_raw_and_final_norm():
    model = small_kat(out_type='raw', final_norm=True).eval()
    tokens = model(torch.randn(2, 3, 32, 32))[0]
    # the final LayerNorm has unit-variance tokens (weight 1, bias 0 at init)
    assert torch.allclose(tokens.var(-1, unbiased=False), torch.ones(2, 17), atol=1e-3)
    no_norm = small_kat(out_type='raw', final_norm=False)
    assert isinstance(no_norm.norm, nn.Identity)


def test_out_indices_validation_names_the_range():
    with pytest.raises(IndexError, match=r'out of range for 4 blocks'):
        small_kat(out_indices=[4])
    with pytest.raises(IndexError, match=r'-4 \.\. 3'):
        small_kat(out_indices=-5)
    with pytest.raises(ValueError, match='twice'):
        small_kat(out_indices=[1, -3])
    with pytest.raises(TypeError, match='ints'):
        small_kat(out_indices=[1.0])
    assert small_kat(out_indices=[-1, 0]).out_indices == (3, 0)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='huge'), KeyError, 'unknown arch'),
    (dict(arch=dict(embed_dims=32, num_layers=2)), KeyError, 'num_heads'),
    (dict(arch=dict(embed_dims=30, num_layers=2, num_heads=4)), ValueError, 'divisible by num_heads'),
    (dict(out_type='tokens'), ValueError, 'out_type must be one of'),
    (dict(out_type='cls_token', with_cls_token=False), ValueError, 'with_cls_token=True'),
    (dict(mlp='relu'), ValueError, "'kan'"),
    (dict(init_mode='xavier'), ValueError, 'init_mode'),
    (dict(mlp='gelu', init_mode='variance_preserving'), ValueError, 'variance_preserving'),
    (dict(frozen_stages=5), ValueError, r'\[-1, 4\]'),
    (dict(window_size=2), ValueError, 'with_cls_token=False'),
    (dict(rational=dict(group=8)), KeyError, 'unknown rational options'),
    (dict(rational=dict(impl='fast')), ValueError, 'impl'),
    (dict(rational=dict(groups=0)), ValueError, r'rational.groups must be a positive int .* got 0'),
    (dict(drop_path_rate=-0.5), ValueError, r'drop_path_rate must be a number in \[0, 1\), got -0.5'),
    (dict(drop_path_rate=2), ValueError, r'drop_path_rate must be a number in \[0, 1\), got 2'),
    (dict(attn_drop_rate=1.0), ValueError, 'attn_drop_rate'),
    (dict(img_size=4), ValueError, 'smaller than one patch'),
    (dict(arch=dict(embed_dims=36, num_layers=1, num_heads=2)), ValueError, 'divisible by the rational groups'),
])
def test_bad_configuration_gets_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        small_kat(**kwargs)


def test_bad_input_names_the_expected_shape():
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        small_kat()(torch.randn(2, 1, 32, 32))


# ----------------------------------------------------------------------------- the released function
def test_computes_the_released_function_from_a_released_state_dict():
    sd = released_like_state_dict()
    model = small_kat(out_type='cls_token')
    report = model.load_pretrained(dict(state_dict_ema=sd))
    assert report['missing'] == [] and report['unexpected'] == [] and report['dropped'] == ['head.bias',
                                                                                          'head.weight']
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)[0] @ sd['head.weight'].t() + sd['head.bias']
        expected = released_forward(sd, x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_matches_timm_vision_transformer_with_the_same_weights():
    timm = pytest.importorskip('timm')

    class Kan(nn.Module):  # timm's mlp_layer slot holding KAT's KAN, evaluated with the reference op

        def __init__(self, in_features, hidden_features, **_):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(in_features, hidden_features), nn.Linear(hidden_features, in_features)
            self.act1, self.act2 = nn.Module(), nn.Module()
            for act in (self.act1, self.act2):
                act.weight_numerator = nn.Parameter(torch.zeros(1, 6))
                act.weight_denominator = nn.Parameter(torch.zeros(8, 4))

        def forward(self, x):
            x = group_rational_reference(x, self.act1.weight_numerator, self.act1.weight_denominator, 8)
            x = group_rational_reference(self.fc1(x), self.act2.weight_numerator, self.act2.weight_denominator, 8)
            return self.fc2(x)

    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10, mlp_layer=Kan).eval()
    sd = released_like_state_dict()
    reference.load_state_dict(sd, strict=True)
    model = small_kat(out_type='raw').eval()
    model.load_pretrained(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], reference.forward_features(x), rtol=1e-5, atol=1e-5)


def test_gelu_twin_matches_timm_vit_and_loads_its_checkpoint():
    timm = pytest.importorskip('timm')
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10).eval()
    model = small_kat(mlp='gelu', out_type='raw').eval()
    report = model.load_pretrained(dict(model=reference.state_dict()))
    assert report['missing'] == [] and report['unexpected'] == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], reference.forward_features(x), rtol=1e-5, atol=1e-5)


def test_from_vit_recipe_loads_mlp_weights_and_keeps_rationals_at_init():
    sd = {k: v for k, v in released_like_state_dict().items() if '.act' not in k}  # a plain ViT
    model = small_kat()
    model.init_weights()
    act2 = model.blocks[0].mlp.act2.weight_numerator.detach().clone()
    report = model.load_pretrained(sd)
    assert report['missing'] == []  # the rationals are expected to be absent: reported apart
    assert torch.equal(model.blocks[2].mlp.fc1.weight, sd['blocks.2.mlp.fc1.weight'])
    assert torch.equal(model.blocks[0].mlp.act2.weight_numerator, act2)
    # act1 is the identity, so block outputs equal those of the ViT with the same weights up to act2
    assert torch.equal(model.blocks[0].mlp.act1.weight_numerator, torch.tensor([[0., 1, 0, 0, 0, 0]]))


def test_loading_resizes_the_position_embedding():
    sd = released_like_state_dict(grid=4)
    model = small_kat(img_size=48, out_type='featmap')  # 6x6 grid
    model.load_pretrained(sd)
    assert model.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(model.pos_embed[:, :1], sd['pos_embed'][:, :1])
    grid = sd['pos_embed'][:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode='bicubic', align_corners=False)
    torch.testing.assert_close(model.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 32))


def test_position_embedding_is_interpolated_to_the_input_grid_each_forward():
    model = small_kat(out_type='raw').eval()
    captured = {}
    original = model.resize_pos_embed

    def spy(embed, old, new):
        captured['sizes'] = (tuple(old), tuple(new))
        return original(embed, old, new)

    model.resize_pos_embed = spy
    model(torch.randn(1, 3, 48, 64))
    assert captured['sizes'] == ((4, 4), (6, 8))


def test_shape_mismatch_fails_and_unknown_keys_are_reported(caplog):
    sd = released_like_state_dict()
    bad = dict(sd)
    bad['blocks.1.mlp.fc1.weight'] = torch.zeros(64, 32)
    with pytest.raises(RuntimeError, match='size mismatch'):
        small_kat().load_pretrained(bad)
    extra = dict(sd)
    extra['blocks.0.attn.extra'] = torch.zeros(1)
    del extra['blocks.3.norm2.bias']
    with pytest.raises(ValueError, match=r'leaves 1 of \d+ backbone tensors unloaded \(blocks.3.norm2.bias\).*'
                       'allow_missing=True'):
        small_kat().load_pretrained(extra)
    report = small_kat().load_pretrained(extra, allow_missing=True)
    assert report['unexpected'] == ['blocks.0.attn.extra'] and report['missing'] == ['blocks.3.norm2.bias']


def test_a_checkpoint_that_fills_little_of_the_backbone_or_holds_nan_is_refused(tmp_path):
    sd = released_like_state_dict()
    two = {k: sd[k] for k in ('blocks.0.attn.qkv.weight', 'blocks.0.mlp.fc1.weight')}  # 2 of a 4-block backbone's
    with pytest.raises(ValueError, match='backbone tensors unloaded'):
        small_kat().load_pretrained(two)
    nan = dict(sd)
    nan['blocks.2.attn.qkv.weight'] = torch.full_like(sd['blocks.2.attn.qkv.weight'], float('nan'))
    path = tmp_path / 'nan.pth'
    torch.save(nan, path)
    model = small_kat(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match=r'nan.pth holds NaN or inf in 1 tensors \(blocks.2.attn.qkv.weight\)'):
        model.init_weights()
    torch.save(two, path)
    small_kat(init_cfg=dict(type='Pretrained', checkpoint=str(path), allow_missing=True)).init_weights()


def test_kat_checkpoint_into_the_gelu_twin_is_refused():
    with pytest.raises(ValueError, match="mlp='gelu'"):
        small_kat(mlp='gelu').load_pretrained(released_like_state_dict())


def test_not_a_vit_checkpoint_is_refused():
    with pytest.raises(ValueError, match='neither a KAT nor a timm ViT'):
        small_kat().load_pretrained({'conv1.weight': torch.zeros(1)})


@pytest.mark.parametrize('wrap', ['plain', 'model', 'state_dict', 'state_dict_ema', 'mm_full'])
def test_init_cfg_pretrained_loads_every_wrapping(tmp_path, wrap):
    sd = released_like_state_dict()
    if wrap == 'plain':
        obj = sd
    elif wrap == 'mm_full':
        obj = {'state_dict': {'backbone.' + k: v for k, v in sd.items() if not k.startswith('head.')},
               'meta': {'epoch': 3}}
        obj['state_dict']['head.fc.weight'] = sd['head.weight']
    else:
        obj = {wrap: sd, 'epoch': 300}
    path = tmp_path / 'ckpt.pth'
    torch.save(obj, path)
    model = small_kat(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    torch.testing.assert_close(model.blocks[3].mlp.act2.weight_denominator, sd['blocks.3.mlp.act2.weight_denominator'])
    torch.testing.assert_close(model.pos_embed, sd['pos_embed'])


def test_pretrained_none_means_no_pretraining_and_trains():
    """`pretrained = None` in a config gives init_cfg=dict(type='Pretrained', checkpoint=None): the backbone
    starts from its own init (the same as without init_cfg) and trains."""
    torch.manual_seed(0)
    model = small_kat(init_cfg=dict(type='Pretrained', checkpoint=None))
    model.init_weights()
    torch.manual_seed(0)
    plain = small_kat()
    plain.init_weights()
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    before = model.blocks[0].mlp.fc1.weight.detach().clone()
    model(x)[-1].square().mean().backward()
    opt.step()
    assert not torch.equal(model.blocks[0].mlp.fc1.weight, before)


def test_pretrained_map_location_is_used(tmp_path, monkeypatch):
    import mmkat.models.checkpoint as checkpoint_module
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': released_like_state_dict()}, path)
    seen = []
    real = checkpoint_module.load_state_dict_file
    monkeypatch.setattr(checkpoint_module, 'load_state_dict_file',
                        lambda p, map_location='cpu': seen.append(map_location) or real(p, map_location=map_location))
    def to_cpu(storage, location):
        return storage

    small_kat(init_cfg=dict(type='Pretrained', checkpoint=str(path), map_location=to_cpu)).init_weights()
    assert seen == [to_cpu]


def test_checkpoint_of_another_size_is_named(tmp_path):
    """A 32-dim, 4-block file into a 48-dim or a 2-block model: the message says which size each is."""
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': released_like_state_dict()}, path)
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(ValueError, match=r'32-dim, 4 blocks checkpoint, but this backbone is 48-dim, 4 blocks'):
        small_kat(arch=dict(SMALL, embed_dims=48), init_cfg=init_cfg).init_weights()
    with pytest.raises(ValueError, match=r'32-dim, 4 blocks checkpoint, but this backbone is 32-dim, 2 blocks'):
        small_kat(arch=dict(SMALL, num_layers=2), init_cfg=init_cfg).init_weights()


def test_init_cfg_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        small_kat(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.pth'))).init_weights()
    with pytest.raises(KeyError, match="type='Pretrained', checkpoint=PATH"):
        small_kat(init_cfg=dict(type='Pretrained', ckpt='x.pth')).init_weights()
    with pytest.raises(ValueError, match='cannot be combined'):
        small_kat(init_cfg=[dict(type='Pretrained', checkpoint='x.pth'),
                            dict(type='Constant', layer='Linear', val=0.)]).init_weights()
    bad = tmp_path / 'pickled.pth'
    torch.save({'state_dict': released_like_state_dict(), 'cfg': _Unsafe()}, bad)
    with pytest.raises(RuntimeError, match='weights-only'):
        small_kat(init_cfg=dict(type='Pretrained', checkpoint=str(bad))).init_weights()


class _Unsafe:
    pass


def test_other_init_cfg_applies_on_top_of_the_default_init():
    model = small_kat(init_cfg=dict(type='Constant', layer='Linear', val=0.25, bias=0.))
    model.init_weights()
    assert torch.all(model.blocks[0].mlp.fc1.weight == 0.25)


def test_save_load_round_trip(tmp_path):
    model = small_kat(out_type='featmap')
    model.init_weights()
    path = tmp_path / 'kat.pth'
    torch.save(model.state_dict(), path)
    other = small_kat(out_type='featmap')
    other.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    model.eval(), other.eval()
    assert torch.equal(model(x)[0], other(x)[0])


# ----------------------------------------------------------------------------- training behaviour
def test_frozen_stages_stay_frozen_across_train():
    model = small_kat(frozen_stages=2)
    model.train()
    frozen = ['cls_token', 'pos_embed', 'patch_embed.', 'blocks.0.', 'blocks.1.']
    for name, param in model.named_parameters():
        assert param.requires_grad == (not any(name.startswith(f) for f in frozen)), name
    assert not model.blocks[1].training and model.blocks[2].training and model.training
    x = torch.randn(2, 3, 32, 32)
    model(x)[0].sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is None and model.blocks[2].attn.qkv.weight.grad is not None
    everything = small_kat(frozen_stages=4, drop_rate=0.5)
    everything.train()
    assert all(not p.requires_grad for p in everything.parameters())
    assert not everything.norm.training and not everything.pos_drop.training


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = small_kat()
    plain.init_weights()
    ckpt = small_kat(with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, ckpt):
        model.train()
        model(x)[0].pow(2).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_drop_path_rates_rise_linearly_and_act_only_in_training():
    model = small_kat(drop_path_rate=0.3)
    rates = [getattr(b.drop_path, 'p', 0.) for b in model.blocks]
    assert rates == pytest.approx([0., 0.1, 0.2, 0.3])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x)[0], model(x)[0])


def test_get_layer_depth_for_layer_decay():
    model = small_kat()
    assert model.get_layer_depth('backbone.cls_token', 'backbone.') == (0, 6)
    assert model.get_layer_depth('backbone.patch_embed.proj.weight', 'backbone.') == (0, 6)
    assert model.get_layer_depth('backbone.blocks.2.mlp.act1.weight_numerator', 'backbone.') == (3, 6)
    assert model.get_layer_depth('backbone.norm.weight', 'backbone.') == (5, 6)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (5, 6)


def test_a_train_step_moves_every_parameter_including_rationals():
    model = small_kat()
    model.init_weights()
    head = nn.Linear(32, 4)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(head(model(x)[0]), y).backward()
    opt.step()
    unchanged = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert unchanged == []  # act1's zero denominators move too (sign(0) = +1)


@pytest.mark.parametrize('options', [
    dict(out_type='cls_token'),
    dict(out_type='featmap', with_cls_token=True, out_indices=(0, 1, 2, 3), final_norm=False),
    dict(out_type='featmap', with_cls_token=False, final_norm=False, window_size=2, global_attn_indexes=[1, 3],
         use_rel_pos=True),
], ids=['classification', 'upernet', 'vitdet'])
def test_every_trainable_parameter_gets_a_gradient(options):
    """DistributedDataParallel (find_unused_parameters=False, mmengine's default) stops on a trainable parameter
    that gets no gradient: the dense settings must not leave one (the unused cls token is frozen)."""
    model = small_kat(arch=dict(embed_dims=32, num_layers=4, num_heads=2), img_size=64, **options)
    model.train()
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.cls_token.requires_grad == options.get('with_cls_token', True)


# ----------------------------------------------------------------------------- dense-task options
def test_window_attention_and_relative_positions():
    model = small_kat(arch=dict(embed_dims=32, num_layers=4, num_heads=2), with_cls_token=False, out_type='featmap',
                      window_size=2, global_attn_indexes=[1, 3], use_rel_pos=True, img_size=64)
    assert [b.attn.window_size for b in model.blocks] == [2, 0, 2, 0]
    assert model.blocks[0].attn.rel_pos_h.shape == (3, 16) and model.blocks[1].attn.rel_pos_h.shape == (15, 16)
    outs = model(torch.randn(1, 3, 56, 72))  # 7x9 grid: windows need padding
    assert outs[0].shape == (1, 32, 7, 9)
    outs[0].sum().backward()
    assert model.blocks[0].attn.rel_pos_w.grad.abs().sum() > 0


def test_window_attention_equals_attention_inside_each_window():
    model = small_kat(with_cls_token=False, out_type='featmap', window_size=2, img_size=32).eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 4 * 4, 32)
    out = attn(x, (4, 4))
    grid = x.view(1, 4, 4, 32)
    window = grid[:, :2, 2:].reshape(1, 4, 32)  # top-right window
    attn.window_size = 0
    alone = attn(window, (2, 2)).view(1, 2, 2, 32)
    torch.testing.assert_close(out.view(1, 4, 4, 32)[:, :2, 2:], alone, rtol=1e-5, atol=1e-6)


def test_dense_checkpoint_loading_drops_cls_for_vitdet_setting():
    sd = released_like_state_dict()
    model = small_kat(with_cls_token=False, out_type='featmap', window_size=2, global_attn_indexes=[3],
                      use_rel_pos=True, img_size=64)
    report = model.load_pretrained(sd)
    assert all('rel_pos' in k for k in report['missing']) and len(report['missing']) == 8
    out = model(torch.randn(1, 3, 64, 64))[0]
    assert out.shape == (1, 32, 8, 8)


# ----------------------------------------------------------------------------- inits
def test_released_init_is_timm_plus_mimetic_attention():
    torch.manual_seed(0)
    model = KAT('small')
    model.init_weights()
    fc1 = model.blocks[0].mlp.fc1.weight
    assert abs(fc1.std().item() - 0.02) < 0.002 and fc1.abs().max() <= 2.0
    assert torch.all(model.blocks[0].mlp.fc1.bias == 0)
    qkv = model.blocks[3].attn.qkv.weight.detach().double()
    D, hd = 384, 64
    q, k = qkv[:hd], qkv[D:D + hd]  # head 0
    prod = q.t() @ k  # [D, D] ~ rank-hd part of 0.7 U + 0.7 I: a positive diagonal
    assert prod.diagonal().mean() > 5 * prod.fill_diagonal_(0).abs().mean()
    v, proj = qkv[2 * D:], model.blocks[3].attn.proj.weight.detach().double()
    assert torch.allclose(v @ proj, (v @ proj), atol=0)  # shapes line up
    assert (proj @ v).diagonal().mean() < 0  # the -0.4 I part
    assert abs(model.cls_token.std().item()) < 1e-5 and abs(model.pos_embed.std().item() - 0.02) < 0.002


def test_vit_init_has_no_mimetic_attention():
    torch.manual_seed(0)
    model = small_kat(mlp='gelu')
    model.init_weights()
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.003


def test_variance_preserving_init_preserves_the_second_moment():
    assert rational_second_moment('identity') == pytest.approx(1.0, abs=1e-9)
    x = torch.randn(2_000_000, dtype=torch.float64)
    swish = group_rational_reference(x.view(-1, 8), *[torch.tensor(v, dtype=torch.float64).view(s) for v, s in
                                                     zip(__import__('mmkat').ops.get_preset('swish'),
                                                         [(1, 6), (1, 4)])], 1)
    assert rational_second_moment('swish') == pytest.approx(swish.pow(2).mean().item(), rel=5e-3)
    torch.manual_seed(0)
    model = KAT(dict(embed_dims=256, num_layers=1, num_heads=4), init_mode='variance_preserving')
    model.init_weights()
    fc1, fc2 = model.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc2.weight
    assert fc1.var().item() == pytest.approx(1 / 256, rel=0.05)
    assert fc2.var().item() == pytest.approx(1 / rational_second_moment('swish') / 1024, rel=0.05)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_backbone_matches_the_reference_op():
    """fp32: the compiled op and the reference give the same network; bf16 autocast: the compiled op is
    as close to the fp32 network as the reference op is (bf16 rounding differs, so compare the errors)."""
    torch.manual_seed(0)
    sd = released_like_state_dict()
    x = torch.randn(8, 3, 32, 32, device='cuda')

    def run(impl, dtype):
        model = small_kat(rational=dict(impl=impl)).cuda()
        model.load_pretrained(sd)
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            y = model(x)[0]
        y.float().pow(2).sum().backward()
        grads = {k: p.grad.float() for k, p in model.named_parameters() if re.search(r'act[12]', k)}
        return y.float(), grads

    truth, truth_grads = run('reference', torch.float32)
    out, grads = run('compiled', torch.float32)
    torch.testing.assert_close(out, truth, rtol=1e-4, atol=1e-4)
    for k in truth_grads:
        torch.testing.assert_close(grads[k], truth_grads[k], rtol=1e-3, atol=1e-3, msg=k)
    ref16, _ = run('reference', torch.bfloat16)
    out16, _ = run('compiled', torch.bfloat16)
    err_ref, err_out = (ref16 - truth).abs().mean().item(), (out16 - truth).abs().mean().item()
    assert err_out <= 1.5 * err_ref + 1e-3, (err_out, err_ref)
