"""KATBatchClsPreprocessor (batched flip, padded crop, normalisation, mixup / cutmix) against per-image
reference implementations. (Its batches on the GPU, from KATFashionMNIST, are tested in
tests/test_datasets/test_tensor_dataset.py.)"""
import pytest
import torch
import torch.nn.functional as F

from mmkat.models.data_preprocessors.batch_cls import (
    KATBatchClsPreprocessor,
    cutmix_box,
    mix_targets,
    pad_crop,
    random_flip,
)
from tests.conftest import needs


def reference_pad_crop(x, padding, top, left, value):
    """Per image: torchvision's RandomCrop(size, padding) at a given offset, one image at a time."""
    out = []
    for b in range(x.shape[0]):
        padded = F.pad(x[b:b + 1], (padding,) * 4, value=value)
        out.append(padded[:, :, top[b]:top[b] + x.shape[2], left[b]:left[b] + x.shape[3]])
    return torch.cat(out)


@pytest.mark.parametrize('padding', [1, 4])
def test_pad_crop_matches_per_image_crops(padding):
    x = torch.randn(9, 3, 7, 6)  # negative values included; rectangular images
    top = torch.randint(0, 2 * padding + 1, (9, ))
    left = torch.randint(0, 2 * padding + 1, (9, ))
    top[0], left[0] = 0, 2 * padding  # the corners of the range
    torch.testing.assert_close(pad_crop(x, padding, top, left, -1.5), reference_pad_crop(x, padding, top, left, -1.5),
                               rtol=0, atol=0)
    centre = torch.full((9, ), padding)
    torch.testing.assert_close(pad_crop(x, padding, centre, centre), x, rtol=0, atol=0)


def test_random_flip_mirrors_exactly_the_chosen_images():
    x = torch.randn(5, 2, 4, 3)
    flip = torch.tensor([True, False, True, False, False])
    out = random_flip(x, flip)
    for b in range(5):
        torch.testing.assert_close(out[b], x[b].flip(-1) if flip[b] else x[b], rtol=0, atol=0)


def test_cutmix_box_area_and_clipping():
    assert cutmix_box(28, 28, 0.75, (14, 14)) == (7, 21, 7, 21)  # half the side, a quarter of the area
    y0, y1, x0, x1 = cutmix_box(28, 28, 0.75, (0, 27))
    assert (y0, x1) == (0, 28) and y1 - y0 == 7 and x1 - x0 == 8
    assert cutmix_box(10, 10, 1.0, (5, 5)) == (5, 5, 5, 5)  # lam 1: an empty box


def test_mix_targets_are_the_weighted_one_hots():
    labels = torch.tensor([0, 3, 3, 9])
    perm = torch.tensor([2, 0, 3, 1])
    target = mix_targets(labels, 10, 0.7, perm)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    assert target[0, 0] == pytest.approx(0.7) and target[0, 3] == pytest.approx(0.3)
    assert target[1, 3] == pytest.approx(0.7) and target[1, 0] == pytest.approx(0.3)
    assert target[2, 3] == pytest.approx(0.7) and target[2, 9] == pytest.approx(0.3)


def make_batch(b=6, c=1, h=8, w=8):
    return dict(inputs=torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8), labels=torch.randint(0, 10, (b, )))


@needs('mmpretrain')
def test_outside_training_only_normalisation_and_labels():
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[72.9], std=[90.0], flip_prob=1.0, crop_padding=4,
                                  mixup_alpha=0.8)
    data = make_batch()
    out = pre(data, training=False)
    torch.testing.assert_close(out['inputs'], (data['inputs'].float() - 72.9) / 90.0)
    assert [int(s.gt_label) for s in out['data_samples']] == data['labels'].tolist()
    assert all(s.gt_label.shape == (1, ) and 'gt_score' not in s for s in out['data_samples'])


@needs('mmpretrain')
def test_training_flip_and_crop_replay_the_documented_draws():
    """The preprocessor's flip and crop equal the per-image references fed the same random draws (flip
    decisions first, then the crop offsets, from the inputs' device generator)."""
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[10.0, 20.0], std=[2.0, 4.0], flip_prob=0.5,
                                  crop_padding=3, pad_value=7.0)
    data = make_batch(b=32, c=2)
    torch.manual_seed(11)
    out = pre(data, training=True)
    torch.manual_seed(11)
    flip = torch.rand(32) < 0.5
    offsets = torch.randint(0, 7, (2, 32))
    x = data['inputs'].float()
    x = torch.stack([x[b].flip(-1) if flip[b] else x[b] for b in range(32)])
    x = reference_pad_crop(x, 3, offsets[0], offsets[1], 7.0)
    expected = (x - torch.tensor([10.0, 20.0]).view(1, 2, 1, 1)) / torch.tensor([2.0, 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(out['inputs'], expected, rtol=0, atol=1e-6)
    assert 0 < int(flip.sum()) < 32 and len(set(offsets[0].tolist())) > 3  # the draws did vary


@needs('mmpretrain')
@pytest.mark.parametrize('mode', ['mixup', 'cutmix'])
def test_training_mix_replays_the_documented_draws(mode):
    """Mixup / cutmix equal a per-image reference fed the same draws: the mix_prob draw, lam ~ Beta, the
    permutation, then (cutmix) the box centre; the scores weigh the two labels by the mixed share."""
    kwargs = dict(mixup_alpha=0.8) if mode == 'mixup' else dict(cutmix_alpha=1.0)
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[3.0], std=[2.0], flip_prob=0.0, **kwargs)
    data = make_batch(b=16, h=12, w=10)
    torch.manual_seed(5)
    out = pre(data, training=True)
    torch.manual_seed(5)
    torch.rand(())  # mix_prob
    alpha = 0.8 if mode == 'mixup' else 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(16)
    x = (data['inputs'].float() - 3.0) / 2.0
    if mode == 'mixup':
        expected = torch.stack([lam * x[i] + (1 - lam) * x[perm[i]] for i in range(16)])
    else:
        centre = (int(torch.randint(12, ())), int(torch.randint(10, ())))
        y0, y1, x0, x1 = cutmix_box(12, 10, lam, centre)
        expected = x.clone()
        for i in range(16):
            expected[i, :, y0:y1, x0:x1] = x[perm[i], :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / 120.0
    torch.testing.assert_close(out['inputs'], expected, rtol=0, atol=1e-6)
    one_hot = F.one_hot(data['labels'], 10).float()
    scores = torch.stack([s.gt_score for s in out['data_samples']])
    torch.testing.assert_close(scores, lam * one_hot + (1 - lam) * one_hot[perm], rtol=0, atol=1e-6)
    assert 0.0 < lam < 1.0  # a real mix was drawn


@needs('mmpretrain')
def test_packinputs_batches_and_inferencer_samples_are_accepted():
    from mmpretrain.structures import DataSample
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[0.0], std=[1.0])
    images = [torch.randint(0, 256, (1, 5, 5), dtype=torch.uint8) for _ in range(3)]
    samples = [DataSample().set_gt_label(k) for k in (4, 0, 9)]
    out = pre(dict(inputs=images, data_samples=samples), training=True)
    assert out['inputs'].shape == (3, 1, 5, 5) and [int(s.gt_label) for s in out['data_samples']] == [4, 0, 9]
    unlabelled = pre(dict(inputs=images, data_samples=[DataSample() for _ in range(3)]), training=False)
    torch.testing.assert_close(unlabelled['inputs'], torch.stack(images).float())
    with pytest.raises(ValueError, match='needs labels'):
        pre(dict(inputs=images, data_samples=[DataSample() for _ in range(3)]), training=True)


def test_colour_images_for_a_grey_model_become_their_luma():
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[0.0], std=[1.0])
    grey = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
    out = pre(dict(inputs=grey.expand(2, 3, 6, 6), labels=torch.tensor([1, 2])), training=False)
    torch.testing.assert_close(out['inputs'], grey.float(), rtol=0, atol=1e-4)  # a grey file read in colour
    bgr = torch.tensor([10., 20., 30.]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = pre(dict(inputs=bgr, labels=torch.tensor([0])), training=False)
    torch.testing.assert_close(out['inputs'], torch.full((1, 1, 2, 2), 0.114 * 10 + 0.587 * 20 + 0.299 * 30))


def test_bad_preprocessor_arguments_and_batches():
    with pytest.raises(ValueError, match='mean has 3 channels but std 1'):
        KATBatchClsPreprocessor(num_classes=10, mean=[0, 0, 0], std=[1])
    with pytest.raises(ValueError, match='flip_prob=1.5'):
        KATBatchClsPreprocessor(num_classes=10, mean=[0], std=[1], flip_prob=1.5)
    with pytest.raises(ValueError, match='batch_augments'):
        KATBatchClsPreprocessor(num_classes=10, mean=[0], std=[1], batch_augments=dict(augments=[]))
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[0, 0, 0], std=[1, 1, 1])
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        pre(make_batch(c=1), training=False)
    with pytest.raises(KeyError, match="'inputs' and 'labels'"):
        pre(dict(img=torch.zeros(1)), training=False)
