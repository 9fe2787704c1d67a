"""The tools say where a config expects its data and how to get it, before a run starts."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from mmengine.config import Config

from mmkat.engine import missing_data
from tests.conftest import needs

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


# ---------------------------------------------------------------- COCO annotation files against their images
def write_coco(root, split='train', count=3, size=(48, 32), anns=None):
    """A small COCO set: <root>/images/<split>/<i>.jpg of ``size`` (width, height), and
    <root>/annotations/<split>.json whose entries say so, with one box per image (categories 1 and 2) unless
    ``anns`` is given. Returns the annotation file's path."""
    import json

    from PIL import Image
    (root / 'images' / split).mkdir(parents=True, exist_ok=True)
    (root / 'annotations').mkdir(exist_ok=True)
    images = []
    for i in range(count):
        Image.new('RGB', size, (40 * i, 90, 200)).save(root / 'images' / split / f'{i}.jpg')
        images.append(dict(id=i, file_name=f'{i}.jpg', width=size[0], height=size[1]))
    if anns is None:
        anns = [dict(id=i + 1, image_id=i, category_id=1 + i % 2, bbox=[2, 3, 10, 8], area=80.0, iscrowd=0,
                     segmentation=[[2, 3, 12, 3, 12, 11, 2, 11]]) for i in range(count)]
    path = root / 'annotations' / f'{split}.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns,
                                    categories=[dict(id=1, name='a'), dict(id=2, name='b')])))
    return path


def coco_set_cfg(root, val=False, **dataset):
    def loader(split, **extra):
        return dict(dataset=dict(type='CocoDataset', data_root=str(root), ann_file=f'annotations/{split}.json',
                                 data_prefix=dict(img=f'images/{split}/'), **extra))
    cfg = dict(train_dataloader=loader('train', **dataset))
    if val:
        cfg.update(val_dataloader=loader('val', test_mode=True),
                   val_evaluator=dict(type='CocoMetric', ann_file=str(root / 'annotations' / 'val.json')))
    return Config(cfg)


def test_an_image_smaller_than_its_entry_is_refused_with_the_file_and_both_sizes(tmp_path):
    from PIL import Image

    from mmkat.engine.data_check import annotation_problems
    ann = write_coco(tmp_path, count=5, size=(256, 256))
    assert annotation_problems(coco_set_cfg(tmp_path)) == []
    for i in (1, 3):
        Image.new('RGB', (1, 1)).save(tmp_path / 'images' / 'train' / f'{i}.jpg')
    problems = annotation_problems(coco_set_cfg(tmp_path))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f'train_dataloader.dataset: 2 of the 5 images that {ann} lists are not the size')
    for i in (1, 3):
        assert f'{tmp_path}/images/train/{i}.jpg is 1x1 (width x height), its entry says 256x256' in problems[0]


def test_the_size_check_names_the_first_few_and_counts_the_rest(tmp_path):
    from PIL import Image

    from mmkat.engine.data_check import annotation_problems
    write_coco(tmp_path, count=6, size=(40, 30))
    for i in range(5):
        Image.new('RGB', (30, 30)).save(tmp_path / 'images' / 'train' / f'{i}.jpg')
    (tmp_path / 'images' / 'train' / '5.jpg').unlink()
    problems = annotation_problems(coco_set_cfg(tmp_path))
    assert len(problems) == 2, problems
    missing, wrong = problems
    assert f'1 of the 6 images that {tmp_path}/annotations/train.json lists is not in ' in missing
    assert f'{tmp_path}/images/train/5.jpg' in missing and 'data_prefix.img=DIR' in missing
    assert wrong.count('is 30x30 (width x height), its entry says 40x30') == 3 and '; and 2 more.' in wrong


def test_the_size_check_reads_the_header_only(tmp_path):
    """A JPEG cut right after its headers cannot be decoded, yet the check finds its size: it reads no pixels."""
    from PIL import Image

    from mmkat.engine.data_check import annotation_problems
    write_coco(tmp_path, count=2, size=(30, 20))
    big = tmp_path / 'images' / 'train' / '0.jpg'
    Image.effect_noise((300, 200), 60).convert('RGB').save(big, quality=95)
    data = big.read_bytes()
    sos = data.index(b'\xff\xda')
    big.write_bytes(data[:sos + 2 + int.from_bytes(data[sos + 2:sos + 4], 'big')])  # headers, no scan data
    with pytest.raises(OSError), Image.open(big) as image:
        image.load()
    problems = annotation_problems(coco_set_cfg(tmp_path))
    assert len(problems) == 1 and f'{big} is 300x200 (width x height), its entry says 30x20' in problems[0]


def test_empty_image_and_annotation_lists_are_refused_naming_the_file(tmp_path):
    import json

    from mmkat.engine.data_check import annotation_problems
    ann = write_coco(tmp_path, count=2, anns=[])
    problems = annotation_problems(coco_set_cfg(tmp_path))
    assert len(problems) == 1 and problems[0].startswith(f'train_dataloader.dataset: {ann} has no annotations (its '
                                                         '"annotations" list is empty) for its 2 images')
    ann.write_text(json.dumps(dict(json.loads(ann.read_text()), images=[])))
    problems = annotation_problems(coco_set_cfg(tmp_path))
    assert len(problems) == 1 and problems[0].startswith(f'train_dataloader.dataset: {ann} lists no images')
    # a test set without annotations (like COCO's test-dev image info) is for inference: it passes
    write_coco(tmp_path, split='test', count=2, anns=[])
    cfg = Config(dict(test_dataloader=dict(dataset=dict(type='CocoDataset', data_root=str(tmp_path), test_mode=True,
                                                        ann_file='annotations/test.json',
                                                        data_prefix=dict(img='images/test/')))))
    assert annotation_problems(cfg, ('test_dataloader', )) == []


def test_dropped_boxes_and_unknown_categories_warn_once_per_file_with_the_count(tmp_path):
    import warnings

    from mmkat.engine.data_check import AnnotationWarning, annotation_problems

    def ann(i, category_id=1, bbox=(2, 3, 10, 8)):
        return dict(id=i, image_id=i % 3, category_id=category_id, bbox=list(bbox), area=80.0, iscrowd=0)

    train = write_coco(tmp_path, 'train', anns=[ann(1, bbox=(5, 5, -4, 6)), ann(2), ann(3, bbox=(1, 1, 3, 0)),
                                                ann(4, bbox=(0, 0, -1, -1)), ann(5, category_id=7),
                                                ann(6, category_id=9)])
    val = write_coco(tmp_path, 'val', anns=[ann(1, category_id=3), ann(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert annotation_problems(coco_set_cfg(tmp_path, val=True)) == []  # val.json: by the dataset and metric
    messages = [str(w.message) for w in caught if issubclass(w.category, AnnotationWarning)]
    assert len(messages) == 3, messages
    assert messages[0].startswith(f'{train}: 3 of its 6 annotations have a box of width or height <= 0 (the '
                                  'first: id 1, bbox [5, 5, -4, 6]); mmdet drops them')
    assert messages[1].startswith(f"{train}: 2 of its 6 annotations have a category_id that is not among its "
                                  'categories (7, 9; its categories: 1, 2)')
    assert messages[2].startswith(f"{val}: 1 of its 2 annotations has a category_id that is not among its "
                                  'categories (3;')


def test_the_tools_refuse_before_building_anything(tmp_path):
    """prepare_runner (tools/train.py, tools/test.py) refuses annotation files that do not fit their images
    before the runner is built."""
    from PIL import Image

    from mmkat.engine import launch

    class Refused(Exception):
        pass

    def fail(message):
        raise Refused(message)

    write_coco(tmp_path, size=(64, 64))
    Image.new('RGB', (1, 1)).save(tmp_path / 'images' / 'train' / '0.jpg')
    cfg = coco_set_cfg(tmp_path)
    cfg.work_dir = str(tmp_path / 'work')
    built = []

    def build(config):  # stands in for the runner: records that it was built
        built.append(config)
        return SimpleNamespace(model=None)

    original = launch.build_runner
    launch.build_runner = build
    try:
        with pytest.raises(Refused, match=r'the data does not fit its annotation files:\n  train_dataloader.dataset: '
                                          r'1 of the 3 images .* is 1x1 \(width x height\), its entry says 64x64'):
            launch.prepare_runner(cfg, str(tmp_path / 'config.py'), ('train_dataloader', ), 'trains on', fail)
        assert built == []
        cfg.check_annotations = False  # the opt-out
        launch.prepare_runner(cfg, str(tmp_path / 'config.py'), ('train_dataloader', ), 'trains on', fail)
        assert len(built) == 1
    finally:
        launch.build_runner = original


@needs('mmdet')
def test_a_dataset_left_empty_is_named(tmp_path):
    """mmengine's own "need at least one array to concatenate" (here: no annotation of the config's classes)
    becomes a message naming the dataset's annotation file."""
    from mmdet.utils import register_all_modules

    from mmkat.engine import report_data_errors
    register_all_modules()
    from mmdet.registry import DATASETS
    ann = write_coco(tmp_path)
    dataset = dict(type='CocoDataset', data_root=str(tmp_path), ann_file='annotations/train.json',
                   data_prefix=dict(img='images/train/'), metainfo=dict(classes=('other', )),
                   filter_cfg=dict(filter_empty_gt=True), pipeline=[])
    messages = []
    with report_data_errors(Config(dict(train_dataloader=dict(dataset=dataset))), messages.append):
        DATASETS.build(dataset)
    assert len(messages) == 1 and messages[0].startswith(f"the CocoDataset of '{ann}' has no samples left"), messages


@needs('mmdet', 'pycocotools')
def test_train_tool_refuses_a_1x1_image_whose_entry_says_256x256(tmp_path):
    """The detection demo on a scene set with one image replaced by a 1x1 JPEG: tools/train.py stops with the
    file and both sizes, instead of growing each mask 256 times per side (capped at 6 GB of address space here,
    in case it does)."""
    import resource

    from PIL import Image

    from mmkat.datasets.scenes import make_scenes
    data = tmp_path / 'scenes'
    make_scenes(str(data), dict(train=2, val=1), img_size=256)
    Image.new('RGB', (1, 1)).save(data / 'images' / 'train' / '000001.jpg')

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    root = f'{data}/'
    options = [f'{loader}.dataset.data_root={root}' for loader in ('train_dataloader', 'val_dataloader',
                                                                    'test_dataloader')]
    options += [f'{key}.ann_file={root}annotations/instances_val.json' for key in ('val_evaluator', 'test_evaluator')]
    options += ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False']
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'train.py'),
         os.path.join(ROOT, 'configs', 'kat', 'demo', 'mask_rcnn_kat_demo.py'), '--work-dir', str(tmp_path / 'wd'),
         '--cfg-options', *options], capture_output=True, text=True, cwd=tmp_path, timeout=600, preexec_fn=cap)
    assert result.returncode == 1, result.stderr[-3000:]
    assert (f'{data}/images/train/000001.jpg is 1x1 (width x height), its entry says 256x256'
            in result.stderr), result.stderr[-3000:]
    assert f'{data}/annotations/instances_train.json' in result.stderr
    assert 'Traceback' not in result.stderr and 'MemoryError' not in result.stderr
