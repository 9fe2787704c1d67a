"""tools/infer.py refuses, before building anything, what would overwrite a user's files; its --score-thr
filters the detections it draws and saves."""
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'infer.py')
DEMO = osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')


def infer(*args, cwd):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_images_with_one_name_and_a_used_output_folder_are_refused(tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'not read: the arguments are refused first')
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    for folder in ('a', 'b'):
        (tmp_path / folder / 'shape.png').write_bytes(b'')
    result = infer(DEMO, checkpoint, tmp_path / 'a' / 'shape.png', tmp_path / 'b' / 'shape.png', '--out',
                   tmp_path / 'out', cwd=tmp_path)
    assert result.returncode == 1 and 'several images share the name shape' in result.stderr
    assert not (tmp_path / 'out').exists()
    out = tmp_path / 'used'
    out.mkdir()
    (out / 'mine.txt').write_text('kept')
    result = infer(DEMO, checkpoint, tmp_path / 'a' / 'shape.png', '--out', out, cwd=tmp_path)
    assert result.returncode == 1 and 'already holds files' in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ['mine.txt'] and (out / 'mine.txt').read_text() == 'kept'


def test_an_unreadable_checkpoint_gets_one_line_naming_it(tmp_path):
    """A truncated file, a file that is not a checkpoint and a pickle that weights_only refuses: one line
    naming the file and exit status 1, before any model is built (no traceback)."""
    import io

    import torch

    image = tmp_path / 'shape.png'
    image.write_bytes(b'')
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.randn(64, 64)}}, buf)
    cases = {'truncated.pth': buf.getvalue()[:200], 'notes.pth': b'plain text, not a checkpoint',
             'pickled.pth': None}
    for name, data in cases.items():
        path = tmp_path / name
        if data is None:
            torch.save({'state_dict': {}, 'payload': _Unsafe()}, path)
        else:
            path.write_bytes(data)
        result = infer(DEMO, path, image, '--out', tmp_path / 'out', cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert f'{path} could not be read as a checkpoint' in result.stderr, result.stderr
        assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'out').exists()


class _Unsafe:
    pass


# ---- detection and segmentation on a few drawn scenes, with weights of freshly built demo models --------

DET_DEMO = osp.join(ROOT, 'configs', 'kat', 'demo', 'mask_rcnn_kat_demo.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'kat', 'demo', 'upernet_kat_demo.py')


def draw_scenes(root, val=2):
    """tools/data/make_demo_scenes.py's layout under ``root``: 2 training and ``val`` validation scenes of 64 px."""
    result = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'data', 'make_demo_scenes.py'), '--out',
                             str(root), '--train', '2', '--val', str(val), '--img-size', '64'],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def fresh_weights(config, path, seed=0):
    """The model of ``config`` built with seeded random weights, saved as mmengine saves one (with the classes)."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import mmkat  # noqa: F401

    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    classes = (cfg.test_dataloader.dataset.get('metainfo') or {}).get('classes')
    meta = dict(dataset_meta=dict(classes=list(classes))) if classes else {}
    torch.save(dict(state_dict=model.state_dict(), meta=meta), path)
    return path


@pytest.fixture(scope='module')
def det_demo(tmp_path_factory):
    import types
    root = tmp_path_factory.mktemp('det_demo')
    return types.SimpleNamespace(scenes=draw_scenes(root / 'scenes'),
                                 weights=fresh_weights(DET_DEMO, root / 'det.pth'))


@pytest.mark.slow
def test_score_threshold_filters_drawn_and_saved_detections(det_demo, tmp_path):
    """--score-thr 0 saves every box the detector returns; a higher threshold keeps exactly those above it, in
    preds/ (with the threshold recorded) as in the picture; the default is mmdet's 0.3."""
    import json

    image = det_demo.scenes / 'images' / 'val' / '000000.jpg'
    result = infer(DET_DEMO, det_demo.weights, image, '--out', tmp_path / 'all', '--device', 'cpu', '--score-thr', 0,
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    every = json.loads((tmp_path / 'all' / 'preds' / '000000.json').read_text())
    assert every['score_thr'] == 0 and len(every['scores']) > 2, every['scores']
    scores = sorted(every['scores'])
    thr = (scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2  # between two scores: about half stay
    result = infer(DET_DEMO, det_demo.weights, image, '--out', tmp_path / 'some', '--device', 'cpu', '--score-thr',
                   thr, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    some = json.loads((tmp_path / 'some' / 'preds' / '000000.json').read_text())
    kept = [i for i, s in enumerate(every['scores']) if s > thr]
    assert 0 < len(kept) < len(scores) and some['score_thr'] == thr
    assert some['scores'] == [every['scores'][i] for i in kept]
    for key in ('labels', 'bboxes', 'masks'):
        assert some[key] == [every[key][i] for i in kept], key
    assert (tmp_path / 'some' / 'vis' / '000000.jpg').is_file()


def test_score_threshold_out_of_range_is_refused(tmp_path):
    image = tmp_path / 'shape.png'
    image.write_bytes(b'')
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    result = infer(DEMO, checkpoint, image, '--out', tmp_path / 'out', '--score-thr', 1.5, cwd=tmp_path)
    assert result.returncode == 1 and '--score-thr must lie in [0, 1]' in result.stderr
    assert not (tmp_path / 'out').exists()
