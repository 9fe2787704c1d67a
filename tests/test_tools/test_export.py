"""tools/export.py: a KAT classifier and a KAT backbone to ONNX, run with onnxruntime against PyTorch."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from tests.conftest import needs

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'export.py')
DEMO = osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')

pytestmark = needs('onnx', 'onnxscript', 'onnxruntime', 'mmpretrain')


def export(*args, cwd):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """The demo classifier with seeded random weights, saved as mmengine saves a model."""
    import mmkat  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(DEMO)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # move the rationals off their init, so the export is checked on a general function
        for name, p in model.named_parameters():
            if 'act' in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp('export') / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.mark.parametrize('backbone', [False, True])
def test_export_round_trip_matches_pytorch(checkpoint, tmp_path, backbone):
    import numpy as np
    import onnxruntime

    out = tmp_path / 'kat.onnx'
    result = export(DEMO, checkpoint, '--out', out, *(['--backbone'] if backbone else []), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'onnxruntime matches PyTorch' in result.stdout
    # independently of the tool's own check: another batch size, against the model rebuilt here
    import mmkat  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(DEMO)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), map_location='cpu', logger='silent')
    model.eval()
    images = torch.randn(5, 3, 32, 32) * 2
    with torch.no_grad():
        want = (model.backbone(images)[-1] if backbone else model(images, mode='tensor')).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_export_keeps_an_existing_file(checkpoint, tmp_path):
    out = tmp_path / 'kat.onnx'
    out.write_bytes(b'mine')
    result = export(DEMO, checkpoint, '--out', out, cwd=tmp_path)
    assert result.returncode == 1 and 'exists' in result.stderr and out.read_bytes() == b'mine'
