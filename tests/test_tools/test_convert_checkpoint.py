"""tools/convert_checkpoint.py: released KAT file -> OpenMMLab checkpoint that computes the released function."""
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import needs
from tests.test_models.test_backbones.test_kat import SMALL, released_forward, released_like_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, 'tools', 'convert_checkpoint.py')


def convert(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=REPO)


def classifier():
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import mmkat  # noqa: F401
    init_default_scope('mmpretrain')
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='KAT', arch=SMALL, img_size=32, patch_size=8, rational=dict(impl='reference')),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=32)))


@needs('mmpretrain')
def test_cls_checkpoint_loads_strictly_into_mmpretrain_and_gives_the_released_logits(tmp_path):
    sd = released_like_state_dict()
    src, dst = tmp_path / 'kat_tiny_patch16_224.pth', tmp_path / 'out' / 'kat_cls.pth'
    torch.save({'model': sd}, src)
    result = convert(src, dst, '--task', 'cls')
    assert result.returncode == 0, result.stderr
    assert 'kat weights' in result.stdout and 'task cls' in result.stdout
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['kind'] == 'kat' and ckpt['meta']['num_layers'] == 4 and ckpt['meta']['embed_dims'] == 32
    model = classifier().eval()
    model.load_state_dict(ckpt['state_dict'], strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x, mode='tensor')
    torch.testing.assert_close(logits, released_forward(sd, x), rtol=1e-4, atol=1e-5)


def test_det_checkpoint_holds_the_backbone_only(tmp_path):
    src, dst = tmp_path / 'released.pth', tmp_path / 'det.pth'
    torch.save(released_like_state_dict(), src)
    assert convert(src, dst, '--task', 'det').returncode == 0
    keys = torch.load(dst, weights_only=True)['state_dict'].keys()
    assert all(k.startswith('backbone.') for k in keys) and 'backbone.blocks.3.mlp.act2.weight_numerator' in keys
    assert not any('head' in k for k in keys)


def test_prefer_ema_takes_the_ema_weights(tmp_path):
    plain, ema = released_like_state_dict(seed=1), released_like_state_dict(seed=2)
    src = tmp_path / 'train.pth'
    torch.save({'state_dict': plain, 'state_dict_ema': ema}, src)
    assert convert(src, tmp_path / 'a.pth', '--task', 'seg').returncode == 0
    assert convert(src, tmp_path / 'b.pth', '--task', 'seg', '--prefer-ema').returncode == 0
    a = torch.load(tmp_path / 'a.pth', weights_only=True)['state_dict']['backbone.pos_embed']
    b = torch.load(tmp_path / 'b.pth', weights_only=True)['state_dict']['backbone.pos_embed']
    assert torch.equal(a, plain['pos_embed']) and torch.equal(b, ema['pos_embed'])


def test_never_overwrites_without_force(tmp_path):
    src, dst = tmp_path / 'released.pth', tmp_path / 'existing.pth'
    torch.save(released_like_state_dict(), src)
    dst.write_bytes(b'precious')
    result = convert(src, dst)
    assert result.returncode != 0 and 'not overwriting' in result.stderr
    assert dst.read_bytes() == b'precious'
    assert convert(src, dst, '--force').returncode == 0
    assert 'state_dict' in torch.load(dst, weights_only=True)


@pytest.mark.parametrize('content,message', [
    ({'conv.weight': torch.zeros(1)}, 'neither a KAT nor a timm ViT'),
    ('headless', "needs the released classifier"),
    ('missing', 'checkpoint file not found'),
])
def test_bad_sources_fail_clearly_and_write_nothing(tmp_path, content, message):
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    if content == 'headless':
        torch.save({k: v for k, v in released_like_state_dict().items() if not k.startswith('head.')}, src)
    elif content != 'missing':
        torch.save(content, src)
    result = convert(src, dst, '--task', 'cls')
    assert result.returncode == 1 and message in result.stderr
    assert not dst.exists()
