"""The tools' compile option: taken out of the config, applied to the KAT modules in place."""
import pytest
import torch
from mmengine.config import Config

from mmkat.engine import compile_kat_modules, take_compile_option
from mmkat.models import KAT


@pytest.mark.parametrize('value,expected', [(True, {}), (False, None), (None, None),
                                            (dict(mode='max-autotune'), dict(mode='max-autotune'))])
def test_take_compile_option(value, expected):
    cfg = Config(dict(model=dict(type='X'), compile=value))
    assert take_compile_option(cfg) == expected
    assert 'compile' not in cfg  # mmengine's Runner never sees it
    assert take_compile_option(Config(dict(model=1))) is None


def test_take_compile_option_refuses_other_values():
    with pytest.raises(TypeError, match="compile must be True, False or a dict.*'yes'"):
        take_compile_option(Config(dict(compile='yes')))


def test_compile_kat_modules_in_place():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(dict(backbone=KAT(dict(embed_dims=32, num_layers=2, num_heads=2), img_size=16,
                                                  patch_size=8), head=torch.nn.Linear(32, 3)))
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    expected = model['head'](model['backbone'](x)[-1])
    assert compile_kat_modules(model, dict(backend='aot_eager', fullgraph=True)) == 1
    out = model['head'](model['backbone'](x)[-1])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert model['backbone'].blocks[0].mlp.act2.weight_denominator.grad is not None
    assert list(model.state_dict()) == keys  # checkpoints keep their keys
    assert compile_kat_modules(torch.nn.Linear(2, 2), {}) == 0


def test_train_and_test_tools_compile_the_kat_backbone(tmp_path):
    """tools/train.py and tools/test.py with compile set: the KAT backbone is compiled, training and
    evaluation run, and the checkpoint's keys are the plain ones (so it loads without compile)."""
    import os.path as osp
    import subprocess
    import sys
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    config = osp.join(root, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')
    small = ['train_dataloader.dataset.num_per_class=4', 'val_dataloader.dataset.num_per_class=2',
             'test_dataloader.dataset.num_per_class=2', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
             'compile.backend=aot_eager']
    work = tmp_path / 'run'

    def tool(name, *args):
        proc = subprocess.run([sys.executable, osp.join(root, 'tools', name), *args], cwd=root,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    log = tool('train.py', config, '--work-dir', str(work), '--cfg-options', *small)
    assert "compile: torch.compile({'backend': 'aot_eager'}) on the forward of 1 KAT module(s)" in log
    assert 'accuracy/top1' in log
    ckpt = work / 'epoch_1.pth'
    from mmkat.engine import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    keys = torch.load(ckpt, map_location='cpu')['state_dict']
    assert any(k.startswith('backbone.blocks.0.mlp.act1.') for k in keys) and not any('_orig_mod' in k for k in keys)
    log = tool('test.py', config, str(ckpt), '--work-dir', str(tmp_path / 'test'), '--cfg-options', *small[2:3],
               small[-1])
    assert 'compile: torch.compile' in log and 'accuracy/top1' in log
