"""The demo scene set: layout, COCO instances that agree with the label maps, RLE against pycocotools,
determinism, and no silent overwrite."""
import json
import os.path as osp

import numpy as np
import pytest

from mmkat.datasets.scenes import SCENE_CLASSES, draw_scene, make_scenes, mask_to_rle
from tests.conftest import needs


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('scenes') / 'set')
    counts = make_scenes(root, dict(train=6, val=3), img_size=64, seed=3)
    return root, counts


@needs('pycocotools')
@pytest.mark.parametrize('seed', [0, 1])
def test_mask_to_rle_decodes_back_with_pycocotools(seed):
    from pycocotools import mask as mask_utils
    rng = np.random.default_rng(seed)
    for shape in [(5, 7), (16, 16), (1, 9)]:
        mask = rng.random(shape) > 0.5
        mask[0, 0] = bool(seed)  # runs that start with a set pixel and with a clear one
        rle = mask_to_rle(mask)
        assert isinstance(rle['counts'], str) and rle['size'] == list(shape)
        decoded = mask_utils.decode(dict(rle, counts=rle['counts'].encode('ascii')))
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        assert mask_utils.area(dict(rle, counts=rle['counts'].encode('ascii'))) == mask.sum()


def test_objects_are_apart_and_inside():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, objects = draw_scene(96, rng)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= 4
        union = np.zeros((96, 96), dtype=int)
        for label, mask in objects:
            assert 0 <= label < len(SCENE_CLASSES) and mask.sum() >= 16
            union += mask
        assert union.max() == 1  # no two objects share a pixel


@needs('pycocotools')
def test_layout_and_annotations_agree_with_label_maps(scenes):
    from PIL import Image
    from pycocotools.coco import COCO
    root, counts = scenes
    for split, n in [('train', 6), ('val', 3)]:
        coco = COCO(osp.join(root, 'annotations', f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SCENE_CLASSES)
        assert len(coco.getImgIds()) == n and len(coco.getAnnIds()) == counts[split] > 0
        for img in coco.loadImgs(coco.getImgIds()):
            assert np.array(Image.open(osp.join(root, 'images', split, img['file_name']))).shape == (64, 64, 3)
            label_map = np.array(Image.open(osp.join(root, 'seg', split, img['file_name'][:-4] + '.png')))
            painted = np.zeros_like(label_map)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img['id']])):
                mask = coco.annToMask(ann).astype(bool)
                assert ann['area'] == mask.sum()
                assert np.all(label_map[mask] == ann['category_id'])  # label map: 0 background, 1..5 classes
                ys, xs = np.nonzero(mask)
                x, y, w, h = ann['bbox']
                assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                painted[mask] = ann['category_id']
            np.testing.assert_array_equal(painted, label_map)  # every labelled pixel belongs to an instance


def test_same_seed_same_files_and_overwrite_guard(scenes, tmp_path):
    root, _ = scenes
    with pytest.raises(FileExistsError, match='not empty'):
        make_scenes(root, dict(train=6, val=3), img_size=64, seed=3)
    again = str(tmp_path / 'again')
    make_scenes(again, dict(train=6, val=3), img_size=64, seed=3)
    for name in ['annotations/instances_train.json', 'annotations/instances_val.json']:
        with open(osp.join(root, name)) as a, open(osp.join(again, name)) as b:
            assert json.load(a) == json.load(b)
    other = str(tmp_path / 'other')
    make_scenes(other, dict(train=6), img_size=64, seed=4)
    with open(osp.join(root, 'annotations/instances_train.json')) as a, \
            open(osp.join(other, 'annotations/instances_train.json')) as b:
        assert json.load(a)['annotations'] != json.load(b)['annotations']


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_images=dict(train=0)), 'positive int'),
    (dict(num_images=dict(holdout=3)), 'split must be one of'),
    (dict(img_size=16), 'img_size'),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scenes(str(tmp_path / 'x'), **kwargs)


@needs('mmdet')
def test_mmdet_coco_dataset_reads_the_set(scenes):
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope

    import mmkat  # noqa: F401
    init_default_scope('mmdet')
    root, counts = scenes
    dataset = CocoDataset(data_root=root, ann_file='annotations/instances_val.json',
                          data_prefix=dict(img='images/val/'), metainfo=dict(classes=SCENE_CLASSES),
                          pipeline=[dict(type='LoadImageFromFile'),
                                    dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
                          test_mode=True)
    assert len(dataset) == 3
    item = dataset[0]
    assert item['img'].shape == (64, 64, 3)
    assert item['gt_masks'].masks.shape[0] == len(item['gt_bboxes_labels']) > 0
    assert item['gt_masks'].masks.sum(axis=(1, 2)).min() >= 16
