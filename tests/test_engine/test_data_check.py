"""The tools say where a config expects its data and how to get it, before a run starts."""
import os
import subprocess
import sys

from mmengine.config import Config

from mmkat.engine import missing_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def coco_cfg(root, ann='annotations/instances_train2017.json'):
    dataset = dict(type='CocoDataset', data_root=root, ann_file=ann, data_prefix=dict(img='train2017/'))
    return Config(dict(train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2, dataset=dataset)),
                       val_dataloader=dict(dataset=dict(type='KATDemoShapes', split='val'))))


def test_missing_coco_names_the_path_the_download_and_the_exact_key(tmp_path):
    messages = missing_data(coco_cfg(str(tmp_path / 'coco')))
    assert len(messages) == 1
    assert str(tmp_path / 'coco') in messages[0] and 'cocodataset.org' in messages[0]
    assert '--cfg-options train_dataloader.dataset.dataset.data_root=PATH' in messages[0]


def test_missing_annotation_file_under_an_existing_root(tmp_path):
    messages = missing_data(coco_cfg(str(tmp_path)))
    assert len(messages) == 1 and 'instances_train2017.json' in messages[0]


def test_present_data_remote_paths_and_generated_datasets_pass(tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'instances_train2017.json').write_text('{}')
    assert missing_data(coco_cfg(str(tmp_path))) == []
    assert missing_data(coco_cfg('s3://bucket/coco')) == []
    fmnist = Config(dict(test_dataloader=dict(dataset=dict(type='FashionMNIST', data_root=str(tmp_path / 'no')))))
    assert missing_data(fmnist) == []  # only the loaders asked for are checked
    message = missing_data(fmnist, ('test_dataloader', ))[0]
    assert 'tools/data/fashion_mnist.py' in message and 'dataset-fashion-mnist' in message


def test_train_tool_stops_before_building_anything_without_coco(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), os.path.join(ROOT, 'configs', 'kat',
                                                                               'mask_rcnn_kat_t.py'),
         '--work-dir', str(tmp_path / 'wd')], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "CocoDataset expects 'data/coco/'" in result.stderr and 'cocodataset.org' in result.stderr
    assert 'Traceback' not in result.stderr


def test_every_path_the_run_reads_is_checked_and_listed_once(tmp_path):
    """The evaluator's ann_file is checked too, and the last line sets every path key at once: applying it
    (with the data at the new root) leaves nothing missing."""
    def dataset(split):
        return dict(type='CocoDataset', data_root='data/old/', ann_file=f'annotations/{split}.json',
                    data_prefix=dict(img=f'{split}/'))

    cfg = Config(dict(train_dataloader=dict(dataset=dataset('train')), val_dataloader=dict(dataset=dataset('val')),
                      val_evaluator=dict(type='CocoMetric', ann_file='data/old/annotations/val.json')))
    messages = missing_data(cfg)
    assert any(m.startswith("val_evaluator: CocoMetric reads 'data/old/annotations/val.json'") for m in messages)
    options = messages[-1].split('--cfg-options ', 1)[1].split()
    assert options == ['train_dataloader.dataset.data_root=NEW_ROOT', 'val_dataloader.dataset.data_root=NEW_ROOT',
                       'val_evaluator.ann_file=NEW_ROOT/annotations/val.json']
    new_root = tmp_path / 'scenes'
    (new_root / 'annotations').mkdir(parents=True)
    for split in ('train', 'val'):
        (new_root / 'annotations' / f'{split}.json').write_text('{}')
    cfg.merge_from_dict({k: v.replace('NEW_ROOT', str(new_root)) for k, v in (o.split('=', 1) for o in options)})
    assert missing_data(cfg) == []
