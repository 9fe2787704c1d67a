"""tools/visualize_rationals.py and mmkat.utils.rationals on synthetic checkpoints."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmkat.models.checkpoint import describe_source, read_state_dict, unwrap_state_dict
from mmkat.utils.rationals import RationalsError, collect_rationals, evaluate_rationals


def select_state_dict(checkpoint, prefer_ema=False):
    """The state dict of an in-memory checkpoint and where it came from, as the tool reports it."""
    state_dict, source = unwrap_state_dict(checkpoint, prefer_ema)
    return state_dict, describe_source(checkpoint, source, prefer_ema)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'tools', 'visualize_rationals.py')
GROUPS = 8
EXPECTED_KEYS = [(0, 'act1'), (0, 'act2'), (1, 'act1'), (1, 'act2')]


@pytest.fixture(scope='module')
def script():
    spec = importlib.util.spec_from_file_location('visualize_rationals_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_state_dict(prefix='', blocks=2, seed=0, scale=1.0):
    """Random coefficients of both signs; every group's denominator differs. Plus unrelated keys."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(blocks):
        sd[f'{prefix}blocks.{i}.norm1.weight'] = torch.ones(16)
        sd[f'{prefix}blocks.{i}.mlp.fc1.weight'] = torch.randn(32, 16, generator=gen)
        for act in ('act1', 'act2'):
            sd[f'{prefix}blocks.{i}.mlp.{act}.weight_numerator'] = torch.randn(1, 6, generator=gen) * 0.5 * scale
            sd[f'{prefix}blocks.{i}.mlp.{act}.weight_denominator'] = torch.randn(GROUPS, 4, generator=gen) * scale
        # mmcv-1 style EMA buffers (dots replaced): not the pattern, ignored
        sd[f'ema_{prefix.replace(".", "_")}blocks_{i}_mlp_act1_weight_numerator'] = torch.full((1, 6), 99.0)
    sd[f'{prefix}cls_token'] = torch.zeros(1, 1, 16)
    return sd


def numpy_rational(x, a, b):
    """F(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b0||x| + |b1||x|^2 + |b2||x|^3 + |b3||x|^4), one group."""
    p = sum(a[i] * x**i for i in range(6))
    q = 1.0 + sum(abs(b[j]) * np.abs(x)**(j + 1) for j in range(4))
    return p / q


# ----------------------------------------------------------------------------------------- collecting
@pytest.mark.parametrize('wrapped', [True, False])
def test_collect_finds_every_activation(wrapped):
    plain = make_state_dict(prefix='backbone.' if wrapped else '')
    ckpt = dict(state_dict=plain, meta=dict(epoch=1), message_hub={}) if wrapped else plain
    sd, source = select_state_dict(ckpt)
    assert sd == plain and ('state_dict' in source) == wrapped
    rationals = collect_rationals(sd)
    assert list(rationals) == EXPECTED_KEYS
    prefix = 'backbone.' if wrapped else ''
    for (block, act), (num, den) in rationals.items():
        assert num.shape == (1, 6) and den.shape == (GROUPS, 4)
        torch.testing.assert_close(num, plain[f'{prefix}blocks.{block}.mlp.{act}.weight_numerator'].double())
        torch.testing.assert_close(den, plain[f'{prefix}blocks.{block}.mlp.{act}.weight_denominator'].double())


def test_script_exposes_collect(script):
    assert list(script.collect_rationals(make_state_dict('backbone.'))) == EXPECTED_KEYS


def test_curves_match_the_formula_per_group():
    sd = make_state_dict('backbone.', seed=1)
    rationals = collect_rationals(sd)
    x, curves = evaluate_rationals(rationals, xlim=3.0, num_points=301)
    assert x.shape == (301, ) and x[0] == -3.0 and x[-1] == 3.0
    for key, (num, den) in rationals.items():
        a, b = num[0].numpy(), den.numpy()
        assert (b < 0).any() and (a < 0).any()  # the |b| and the signs are exercised
        y = curves[key]
        assert y.shape == (301, GROUPS)
        for g in range(GROUPS):
            np.testing.assert_allclose(y[:, g], numpy_rational(x, a, b[g]), rtol=1e-5, atol=1e-5,
                                       err_msg=f'{key} group {g}')
        # the check can tell groups apart and the |b| matters
        assert np.abs(y[:, 0] - y[:, 1]).max() > 1e-2
        signed_q = 1.0 + sum(b[0, j] * np.abs(x)**(j + 1) for j in range(4))
        assert np.abs(sum(a[i] * x**i for i in range(6)) / signed_q - y[:, 0]).max() > 1e-2


def test_identity_preset_is_the_identity():
    rationals = {(0, 'act1'): (torch.tensor([[0.0, 1.0, 0, 0, 0, 0]]), torch.zeros(GROUPS, 4))}
    x, curves = evaluate_rationals(rationals, xlim=2.0, num_points=11)
    np.testing.assert_allclose(curves[(0, 'act1')], np.repeat(x[:, None], GROUPS, 1), atol=1e-12)


def test_no_rational_keys_errors_clearly():
    with pytest.raises(RationalsError, match=r'no group-rational coefficients found.*weight_numerator'):
        collect_rationals({'backbone.blocks.0.mlp.fc1.weight': torch.zeros(2, 2)})
    with pytest.raises(RationalsError, match='weight_denominator is missing'):
        collect_rationals({'blocks.0.mlp.act1.weight_numerator': torch.zeros(1, 6)})
    with pytest.raises(RationalsError, match=r'shape \[2, 3\]'):
        collect_rationals({'blocks.0.mlp.act1.weight_numerator': torch.zeros(1, 6),
                           'blocks.0.mlp.act1.weight_denominator': torch.zeros(2, 3)})


def test_ema_and_prefix_selection():
    model, ema = make_state_dict(seed=2), make_state_dict(seed=3)
    key = 'blocks.0.mlp.act1.weight_numerator'
    ckpt = dict(model=model, state_dict_ema=ema)
    assert collect_rationals(select_state_dict(ckpt)[0])[(0, 'act1')][0].equal(model[key].double())
    assert collect_rationals(select_state_dict(ckpt, prefer_ema=True)[0])[(0, 'act1')][0].equal(ema[key].double())
    # an mmengine EMAHook checkpoint: 'state_dict' already holds the averaged weights
    sd, source = select_state_dict(dict(state_dict=model, ema_state_dict={}), prefer_ema=True)
    assert sd == model and 'EMA' in source
    # 'ema_'-prefixed copies beside the model keys: the model is used unless EMA is asked for
    both = {**make_state_dict('backbone.', seed=4), **make_state_dict('ema_backbone.', seed=5)}
    assert collect_rationals(both)[(0, 'act1')][0].equal(both['backbone.' + key].double())
    assert collect_rationals(both, prefer_ema=True)[(0, 'act1')][0].equal(both['ema_backbone.' + key].double())
    # two model prefixes: ambiguous unless one is named
    two = {**make_state_dict('backbone.', seed=6), **make_state_dict('module.backbone.', seed=7)}
    with pytest.raises(RationalsError, match='several prefixes'):
        collect_rationals(two)
    assert collect_rationals(two, prefix='module.backbone.')[(0, 'act1')][0].equal(
        two['module.backbone.' + key].double())


class NotATensor:
    pass


def test_non_weights_checkpoint_errors_clearly(tmp_path):
    path = tmp_path / 'train.pth'
    torch.save(dict(state_dict=make_state_dict('backbone.'), meta=NotATensor()), path)
    with pytest.raises(RuntimeError, match=f'could not load {path} as a weights-only checkpoint'):
        read_state_dict(str(path))
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        read_state_dict(str(tmp_path / 'missing.pth'))


def test_mmengine_training_checkpoint_loads(tmp_path):
    from mmengine.logging import MessageHub

    from mmkat.engine import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()  # what import mmkat did already: the message hub's types load weights-only

    hub = MessageHub.get_instance('test_visualize_rationals')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', np.float64(1.25))
    path = tmp_path / 'epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1, seed=np.int64(3)), state_dict=make_state_dict('backbone.'),
                    message_hub=hub.state_dict()), path)
    sd, source = read_state_dict(str(path))
    assert source == "'state_dict'" and list(collect_rationals(sd)) == EXPECTED_KEYS


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_writes_png_and_never_overwrites(script, tmp_path, capsys):
    ckpt = tmp_path / 'epoch_2.pth'
    torch.save(dict(state_dict=make_state_dict('backbone.'), meta=dict(epoch=2)), ckpt)
    out = tmp_path / 'plots' / 'rationals.png'
    assert script.main([str(ckpt), '--out', str(out), '--preset-overlay', '--dpi', '40']) == 0
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'found 4 activations in 2 blocks' in capsys.readouterr().out
    assert os.listdir(out.parent) == ['rationals.png']  # no temporary file left behind

    mtime = os.stat(out).st_mtime_ns
    assert script.main([str(ckpt), '--out', str(out), '--dpi', '40']) == 1
    assert 'already exists' in capsys.readouterr().err
    assert out.read_bytes() == data and os.stat(out).st_mtime_ns == mtime

    assert script.main([str(ckpt), '--out', str(out), '--dpi', '30', '--xlim', '5', '--force']) == 0
    assert out.read_bytes() != data


def test_cli_without_rational_keys(script, tmp_path, capsys):
    ckpt = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.layer1.weight': torch.zeros(3)}}, ckpt)
    assert script.main([str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert 'no group-rational coefficients found' in err and 'weight_numerator' in err
    assert not (tmp_path / 'other_rationals.png').exists()


def test_cli_subprocess_default_output(tmp_path):
    ckpt = tmp_path / 'kat_plain.pth'
    torch.save(make_state_dict(), ckpt)  # a plain (released, timm-layout) state dict
    proc = subprocess.run([sys.executable, SCRIPT, str(ckpt), '--dpi', '30'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / 'kat_plain_rationals.png'
    assert out.is_file() and out.stat().st_size > 0
