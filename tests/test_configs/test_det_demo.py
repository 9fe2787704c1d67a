"""The detection demo end to end on the CPU: tools/data/make_demo_scenes.py draws a small set, tools/train.py trains
the demo Mask R-CNN one epoch and evaluates bbox + segm mAP (CocoMetric), tools/test.py evaluates the checkpoint,
and without the data both tools stop with the command that draws it."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.conftest import needs

pytestmark = needs('mmdet', 'pycocotools')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'kat', 'demo', 'mask_rcnn_kat_demo.py')


def run(*args, cwd):
    env = dict(os.environ)
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def data_options(root, coco_metric=True):
    """--cfg-options that point a demo config's loaders (and, with ``coco_metric``, its CocoMetric's annotation
    file) at the scene set under ``root``."""
    root = str(root).rstrip('/') + '/'
    options = ['train_dataloader.dataset.data_root=' + root, 'val_dataloader.dataset.data_root=' + root,
               'test_dataloader.dataset.data_root=' + root]
    if coco_metric:
        options += ['val_evaluator.ann_file=' + root + 'annotations/instances_val.json',
                    'test_evaluator.ann_file=' + root + 'annotations/instances_val.json']
    return options


def test_demo_config_is_the_scaled_down_recipe():
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    assert cfg.model.backbone.type == 'KAT' and cfg.model.backbone.mlp == 'kan'
    assert cfg.model.backbone.use_rel_pos and list(cfg.model.backbone.global_attn_indexes) == [1, 3]
    assert cfg.model.neck.type == 'KATSimpleFPN'
    assert cfg.optim_wrapper.constructor == 'KATLayerDecayOptimWrapperConstructor'
    assert cfg.val_evaluator.type == 'CocoMetric' and list(cfg.val_evaluator.metric) == ['bbox', 'segm']
    from mmkat.datasets import SCENE_CLASSES
    assert tuple(cfg.classes) == SCENE_CLASSES
    assert cfg.model.roi_head.bbox_head.num_classes == cfg.model.roi_head.mask_head.num_classes == 5


@pytest.mark.slow
def test_demo_trains_evaluates_and_tests_on_cpu(tmp_path):
    data = tmp_path / 'scenes'
    rc, log = run(osp.join(ROOT, 'tools', 'data', 'make_demo_scenes.py'), '--out', data, '--train', 8, '--val', 4,
                  '--img-size', 128, cwd=tmp_path)
    assert rc == 0, log
    work = tmp_path / 'work'
    rc, log = run(osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', work, '--cfg-options',
                  *data_options(data), 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                  'default_hooks.checkpoint.interval=1', 'train_dataloader.num_workers=0',
                  'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
                  'val_dataloader.persistent_workers=False', cwd=tmp_path)
    assert rc == 0, log[-3000:]
    assert 'coco/bbox_mAP:' in log and 'coco/segm_mAP:' in log, log[-3000:]
    assert (work / 'epoch_1.pth').is_file()
    rc, log = run(osp.join(ROOT, 'tools', 'test.py'), CONFIG, work / 'epoch_1.pth', '--work-dir', tmp_path / 'test',
                  '--cfg-options', *data_options(data), 'test_dataloader.num_workers=0',
                  'test_dataloader.persistent_workers=False', cwd=tmp_path)
    assert rc == 0, log[-3000:]
    assert 'coco/bbox_mAP:' in log and 'coco/segm_mAP:' in log, log[-3000:]

    # predicting with the checkpoint: mmdet's DetInferencer through tools/infer.py (the mmengine checkpoint
    # loads with torch's weights_only default once mmkat is imported)
    image = sorted((data / 'images' / 'val').iterdir())[0]
    out = tmp_path / 'infer'
    rc, log = run(osp.join(ROOT, 'tools', 'infer.py'), CONFIG, work / 'epoch_1.pth', image, '--out', out,
                  '--device', 'cpu', cwd=tmp_path)
    assert rc == 0, log[-3000:]
    pred = json.loads((out / 'preds' / (image.stem + '.json')).read_text())
    assert {'labels', 'scores', 'bboxes'} <= set(pred) and len(pred['labels']) == len(pred['bboxes'])
    assert (out / 'vis' / image.name).is_file()
    rc, log = run(osp.join(ROOT, 'tools', 'infer.py'), CONFIG, work / 'epoch_1.pth', image, '--out', out,
                  cwd=tmp_path)
    assert rc == 1 and 'already holds files' in log  # an earlier output is kept


def test_without_the_data_the_tools_say_how_to_draw_it(tmp_path):
    rc, log = run(osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', tmp_path / 'w', cwd=tmp_path)
    assert rc == 1 and 'Traceback' not in log
    assert "expects 'data/kat_demo_scenes/'" in log and 'python tools/data/make_demo_scenes.py --out' in log, log
    assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_benchmark_config_times_both_variants_of_the_demo_detector(tmp_path):
    import json
    out = tmp_path / 'bench.json'
    rc, log = run(osp.join(ROOT, 'tools', 'benchmark_config.py'), CONFIG, '--batch-size', 1, '--steps', 1,
                  '--warmup', 1, '--size', 128, 128, '--out', out, cwd=tmp_path)
    assert rc == 0, log[-3000:]
    result = json.loads(out.read_text())['runs'][-1]
    assert result['settings']['task'] == 'det' and result['settings']['size'] == [128, 128]
    rows = {row['variant']: row for row in result['rows']}
    assert set(rows) == {'kat', 'gelu'}
    assert rows['kat']['backbone_params_m'] == pytest.approx(rows['gelu']['backbone_params_m'], rel=0.01)
    for row in rows.values():
        assert row['iters_per_s'] > 0 and row['final_loss'] == row['final_loss'] and row['final_loss'] > 0
    assert '| KAT (group-rational KAN) |' in log and '| ViT (GELU MLP) |' in log
    rc, log = run(osp.join(ROOT, 'tools', 'benchmark_config.py'), CONFIG, '--batch-size', 1, '--steps', 1,
                  '--warmup', 0, '--size', 128, 128, '--variants', 'gelu', '--out', out, cwd=tmp_path)
    assert rc == 0 and len(json.loads(out.read_text())['runs']) == 2  # appended: an earlier run is kept
