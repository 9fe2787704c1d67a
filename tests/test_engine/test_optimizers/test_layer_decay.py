"""KATLayerDecayOptimWrapperConstructor: per-parameter lr and weight decay, frozen parameters, custom keys,
the mmdet scope, model wrappers, bad configs and one optimizer step."""
import copy

import pytest
import torch
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

import mmkat.engine.optimizers.layer_decay as layer_decay
from mmkat.engine import KATLayerDecayOptimWrapperConstructor
from mmkat.models import KAT
from tests.conftest import needs

LR, WD, RATE = 1e-4, 0.1, 0.7
NUM_LAYERS = 3  # KAT depths: 0 (embeddings), 1..3 (blocks), 4 (final norm + everything outside): N = 5


class ToyModel(nn.Module):
    """A detector-like model: KAT backbone, a conv + BN neck and a linear head."""

    def __init__(self, **backbone_kwargs):
        super().__init__()
        self.backbone = KAT(arch=dict(embed_dims=32, num_layers=NUM_LAYERS, num_heads=2), img_size=32,
                            patch_size=8, with_cls_token=True, out_type='featmap',
                            rational=dict(impl='reference'), **backbone_kwargs)
        self.neck = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        feat = self.neck(self.backbone(x)[-1])
        return self.head(feat.mean(dim=(2, 3)))


class Wrapper:
    """Stands in for DistributedDataParallel: the model sits at ``.module``."""

    def __init__(self, module):
        self.module = module


def constructor_cfg(**paramwise):
    paramwise.setdefault('layer_decay_rate', RATE)
    paramwise.setdefault('custom_keys', {'.pos_embed': dict(decay_mult=0.0)})
    return dict(type='KATLayerDecayOptimWrapperConstructor',
                optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
                paramwise_cfg=paramwise)


def settings(optim_wrapper, model):
    """{parameter name: (lr, weight decay)}, asserting every trainable parameter appears exactly once."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optim_wrapper.optimizer.param_groups:
        assert group['param_names'] == [names[id(p)] for p in group['params']]
        for p in group['params']:
            name = names[id(p)]
            assert name not in out, f'{name} appears twice'
            out[name] = (group['lr'], group['weight_decay'])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(out) == trainable
    return out


@pytest.mark.parametrize('decay_rules', [dict(flat_decay_mult=0.0), dict(norm_decay_mult=0.0, bias_decay_mult=0.0)])
def test_lr_and_weight_decay(decay_rules):
    model = ToyModel()
    got = settings(OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg(**decay_rules))(model), model)
    expected_lr = {
        'backbone.pos_embed': LR * RATE ** 4, 'backbone.cls_token': LR * RATE ** 4,
        'backbone.patch_embed.proj.weight': LR * RATE ** 4,
        'backbone.blocks.0.attn.qkv.weight': LR * RATE ** 3, 'backbone.blocks.0.norm1.bias': LR * RATE ** 3,
        'backbone.blocks.0.mlp.act1.weight_denominator': LR * RATE ** 3,
        'backbone.blocks.1.mlp.fc2.weight': LR * RATE ** 2,
        'backbone.blocks.2.mlp.fc1.weight': LR * RATE, 'backbone.blocks.2.mlp.act2.weight_numerator': LR * RATE,
        'backbone.norm.weight': LR, 'backbone.norm.bias': LR,
        'neck.0.weight': LR, 'neck.1.weight': LR, 'head.weight': LR, 'head.bias': LR,
    }
    for name, lr in expected_lr.items():
        assert got[name][0] == pytest.approx(lr, rel=1e-12), name
    zero_wd = ['backbone.pos_embed', 'backbone.patch_embed.proj.bias', 'backbone.blocks.0.norm1.weight',
               'backbone.blocks.1.attn.qkv.bias', 'backbone.blocks.2.mlp.fc2.bias', 'backbone.norm.weight',
               'backbone.norm.bias', 'neck.0.bias', 'neck.1.weight', 'neck.1.bias', 'head.bias']
    full_wd = ['backbone.cls_token', 'backbone.patch_embed.proj.weight', 'backbone.blocks.0.attn.qkv.weight',
               'backbone.blocks.1.mlp.act1.weight_denominator', 'backbone.blocks.2.mlp.act2.weight_numerator',
               'backbone.blocks.2.mlp.fc1.weight', 'neck.0.weight', 'head.weight']
    for name in zero_wd:
        assert got[name][1] == 0.0, name
    for name in full_wd:
        assert got[name][1] == pytest.approx(WD), name
    # every depth at one lr scale, and only the layer scale separates the groups here
    for name, (lr, _) in got.items():
        if name.startswith('backbone.blocks.'):
            assert lr == pytest.approx(LR * RATE ** (NUM_LAYERS - int(name.split('.')[2])))


def test_without_decay_rules_only_custom_keys_zero_the_decay():
    """mmengine's semantics: with no norm/bias/flat multipliers, 1-D parameters keep the base decay."""
    model = ToyModel()
    got = settings(OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg())(model), model)
    assert got['backbone.pos_embed'][1] == 0.0
    assert got['backbone.blocks.0.norm1.bias'][1] == pytest.approx(WD)
    assert got['head.bias'][1] == pytest.approx(WD)


def test_custom_keys_and_bias_lr_mult_apply_on_top_of_the_layer_scale():
    model = ToyModel()
    cfg = constructor_cfg(flat_decay_mult=0.0, bias_lr_mult=2.0, custom_keys={
        '.pos_embed': dict(decay_mult=0.0), 'head': dict(lr_mult=0.1),
        'blocks.1.attn': dict(lr_mult=3.0, decay_mult=0.5), 'blocks.1.attn.qkv': dict(lr_mult=5.0)})
    optim_wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(cfg)(model)
    got = settings(optim_wrapper, model)
    assert got['head.weight'] == pytest.approx((LR * 0.1, WD))
    assert got['head.bias'] == pytest.approx((LR * 0.1, WD))  # a custom key overrides the bias/flat rules
    assert got['backbone.blocks.1.attn.proj.weight'] == pytest.approx((LR * RATE ** 2 * 3.0, WD * 0.5))
    assert got['backbone.blocks.1.attn.qkv.bias'] == pytest.approx((LR * RATE ** 2 * 5.0, WD))  # longest key
    assert got['backbone.blocks.2.attn.qkv.bias'] == pytest.approx((LR * RATE * 2.0, 0.0))
    assert got['backbone.blocks.2.norm1.bias'] == pytest.approx((LR * RATE, 0.0))  # bias_lr_mult skips norms
    assert got['backbone.pos_embed'] == pytest.approx((LR * RATE ** 4, 0.0))
    # mult keys are consumed, not copied into the groups
    assert not any('lr_mult' in g or 'decay_mult' in g for g in optim_wrapper.optimizer.param_groups)


def test_frozen_parameters_are_skipped_and_the_summary_is_logged(monkeypatch):
    messages = []
    monkeypatch.setattr(layer_decay, 'print_log', lambda msg, **kw: messages.append((msg, kw)))
    model = ToyModel(frozen_stages=1)
    got = settings(OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg(flat_decay_mult=0.0))(model), model)
    assert not any(n.startswith(('backbone.blocks.0.', 'backbone.patch_embed', 'backbone.pos_embed',
                                 'backbone.cls_token')) for n in got)
    assert got['backbone.blocks.1.attn.qkv.weight'][0] == pytest.approx(LR * RATE ** 2)
    (msg, kw), = messages
    assert kw['level'] == 20 and kw['logger'] == 'current'
    lines = msg.splitlines()
    assert '20 frozen parameters skipped' in lines[0]
    assert len(lines) == 1 + 3 and [line.split()[1] for line in lines[1:]] == ['2', '3', '4']
    assert 'lr scale 0.49' in lines[1] and '16 tensors' in lines[1]


@needs('mmdet')
def test_builds_in_mmdet_scope_and_through_build_optim_wrapper():
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET_CONSTRUCTORS
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    model = ToyModel()
    constructor = MMDET_CONSTRUCTORS.build(constructor_cfg(flat_decay_mult=0.0))
    assert type(constructor) is KATLayerDecayOptimWrapperConstructor
    got = settings(constructor(model), model)
    assert got['backbone.blocks.0.attn.qkv.weight'][0] == pytest.approx(LR * RATE ** 3)

    cfg = constructor_cfg(flat_decay_mult=0.0)
    optim_cfg = dict(cfg['optim_wrapper_cfg'], constructor=cfg['type'], paramwise_cfg=cfg['paramwise_cfg'])
    got = settings(build_optim_wrapper(model, copy.deepcopy(optim_cfg)), model)
    assert got['backbone.pos_embed'] == pytest.approx((LR * RATE ** 4, 0.0))


def test_model_wrapper_is_unwrapped():
    model = ToyModel()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg(flat_decay_mult=0.0))
    got = settings(constructor(Wrapper(model)), model)
    assert got['backbone.blocks.2.mlp.fc1.weight'][0] == pytest.approx(LR * RATE)
    params = []
    constructor.add_params(params, Wrapper(model))  # add_params unwraps too
    assert sum(len(g['params']) for g in params) == len(got)


@pytest.mark.parametrize('paramwise, error', [
    (None, 'layer_decay_rate'), ({}, 'layer_decay_rate'), (dict(flat_decay_mult=0.0), 'layer_decay_rate'),
    (dict(layer_decay_rate=0.0), r'\(0, 1\]'), (dict(layer_decay_rate=1.5), r'\(0, 1\]'),
    (dict(layer_decay_rate=-0.5), r'\(0, 1\]'), (dict(layer_decay_rate='0.7'), r'\(0, 1\]'),
    (dict(layer_decay_rate=True), r'\(0, 1\]'), (dict(layer_decay_rate=0.7, backbone_name=''), 'backbone_name'),
    (dict(layer_decay_rate=0.7, dwconv_decay_mult=0.0), 'unsupported paramwise_cfg keys'),
])
def test_bad_configs(paramwise, error):
    cfg = constructor_cfg()
    cfg['paramwise_cfg'] = paramwise
    with pytest.raises(ValueError, match=error):
        OPTIM_WRAPPER_CONSTRUCTORS.build(cfg)


def test_bad_models():
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg())
    plain = nn.Module()
    plain.backbone = nn.Linear(2, 2)
    with pytest.raises(NotImplementedError, match='get_layer_depth'):
        constructor(plain)
    with pytest.raises(AttributeError, match='no backbone'):
        constructor(nn.Linear(2, 2))
    named = OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg(backbone_name='encoder'))
    with pytest.raises(AttributeError, match="'encoder'"):
        named(ToyModel())


def test_one_optimizer_step():
    torch.manual_seed(0)
    model = ToyModel(frozen_stages=1)
    optim_wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(constructor_cfg(flat_decay_mult=0.0))(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]))
    optim_wrapper.update_params(loss)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if name == 'backbone.cls_token':
            continue  # trainable but unused without a cls token: no gradient, no update
        assert changed == p.requires_grad, name
