"""KATTensorDataset / KATFashionMNIST (whole batches from one tensor), and on the GPU the batches with
KATBatchClsPreprocessor (tested on its own in tests/test_models/test_data_preprocessors/test_batch_cls.py)."""

import numpy as np
import pytest
import torch

from mmkat.datasets import KATFashionMNIST, KATTensorDataset, kat_batch_collate, read_idx_ubyte
from mmkat.models.data_preprocessors.batch_cls import KATBatchClsPreprocessor
from tests.conftest import idx_images, needs, write_idx_split

CLASSES = tuple('abcdefghij')


@pytest.fixture
def fmnist_files(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {}
    for prefix, n in (('train', 40), ('t10k', 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx_split(tmp_path, prefix, images, labels)
        arrays[prefix] = (images, labels)
    return tmp_path, arrays


# ----------------------------------------------------------------------------------------------- dataset
def test_fashion_mnist_reads_both_splits(fmnist_files):
    root, arrays = fmnist_files
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        dataset = KATFashionMNIST(str(root), split=split, device='cpu')
        images, labels = arrays[prefix]
        assert len(dataset) == len(labels)
        assert dataset.images.shape == (len(labels), 1, 28, 28) and dataset.images.dtype == torch.uint8
        np.testing.assert_array_equal(dataset.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(dataset.labels.numpy(), labels)
        assert dataset.metainfo['classes'][9] == 'Ankle boot'


def test_a_batch_is_one_indexing_of_the_tensors(fmnist_files):
    root, arrays = fmnist_files
    dataset = KATFashionMNIST(str(root), split='train', device='cpu')
    picked = [7, 0, 39, 7]
    batch = dataset.__getitems__(picked)
    images, labels = arrays['train']
    np.testing.assert_array_equal(batch['inputs'][:, 0].numpy(), images[picked])
    np.testing.assert_array_equal(batch['labels'].numpy(), labels[picked])
    assert batch['indices'].tolist() == picked
    single = dataset[-1]
    np.testing.assert_array_equal(single['inputs'][0, 0].numpy(), images[-1])
    with pytest.raises(IndexError, match='out of range for 40'):
        dataset[40]


def test_indices_keep_a_subset(fmnist_files):
    root, arrays = fmnist_files
    assert len(KATFashionMNIST(str(root), device='cpu', indices=10)) == 10
    subset = KATFashionMNIST(str(root), device='cpu', indices=[3, 5])
    np.testing.assert_array_equal(subset.labels.numpy(), arrays['train'][1][[3, 5]])


def test_mmengine_dataloader_with_the_default_sampler_covers_the_split_once(fmnist_files):
    """Through mmengine's Runner.build_dataloader: DefaultSampler order, the collate function from the
    registry, the last partial batch kept."""
    from mmengine.runner import Runner
    root, arrays = fmnist_files
    loader = Runner.build_dataloader(dict(
        batch_size=16, num_workers=0,
        dataset=dict(type='KATFashionMNIST', data_root=str(root), split='train', device='cpu'),
        sampler=dict(type='DefaultSampler', shuffle=True, seed=5), collate_fn=dict(type='kat_batch_collate')))
    batches = list(loader)
    assert [len(b['labels']) for b in batches] == [16, 16, 8]
    seen = torch.cat([b['indices'] for b in batches])
    assert sorted(seen.tolist()) == list(range(40)) and seen.tolist() != list(range(40))
    images, labels = arrays['train']
    for batch in batches:
        np.testing.assert_array_equal(batch['inputs'][:, 0].numpy(), images[batch['indices'].numpy()])
        np.testing.assert_array_equal(batch['labels'].numpy(), labels[batch['indices'].numpy()])


def test_collate_joins_single_samples_and_refuses_other_batches():
    dataset = KATTensorDataset(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4), [1, 0], CLASSES,
                               device='cpu')
    joined = kat_batch_collate([dataset[1], dataset[0]])
    assert joined['labels'].tolist() == [0, 1] and joined['inputs'].shape == (2, 1, 4, 4)
    assert kat_batch_collate(dataset.__getitems__([0, 1])) is not None
    with pytest.raises(TypeError, match='KATTensorDataset'):
        kat_batch_collate([torch.zeros(1)])


@pytest.mark.parametrize('kind,damage,message', [
    ('missing', None, 'does not exist'),
    ('magic', b'\x00\x00\x08\x01', 'magic number 2049, expected 2051'),
    ('gzip', b'\x1f\x8b\x08\x00', 'gzip'),
    ('short', None, 'expected'),
])
def test_bad_idx_files_are_named_in_the_error(tmp_path, kind, damage, message):
    path = tmp_path / 'train-images-idx3-ubyte'
    good = idx_images(np.zeros((2, 3, 3), np.uint8))
    if kind == 'short':
        path.write_bytes(good[:-1])
    elif damage is not None:
        path.write_bytes(damage + good[4:])
    error = FileNotFoundError if kind == 'missing' else ValueError
    with pytest.raises(error, match=message) as info:
        read_idx_ubyte(str(path), 3)
    assert str(path) in str(info.value)


def test_bad_dataset_arguments():
    images = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match='labels span 0..10, expected 0..9'):
        KATTensorDataset(images, [0, 10, 2], CLASSES, device='cpu')
    with pytest.raises(ValueError, match='3 images but labels of shape'):
        KATTensorDataset(images, [0, 1], CLASSES, device='cpu')
    with pytest.raises(TypeError, match='uint8'):
        KATTensorDataset(images.astype(np.float32), [0, 1, 2], CLASSES, device='cpu')
    with pytest.raises(ValueError, match="split='val'"):
        KATFashionMNIST('nowhere', split='val')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no GPU is visible'):
            KATTensorDataset(images, [0, 1, 2], CLASSES, device='cuda')


# ----------------------------------------------------------------------------------------------- on the GPU
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU visible')
@needs('mmpretrain')
def test_on_the_gpu_the_data_and_the_augmentation_stay_there(fmnist_files):
    root, arrays = fmnist_files
    dataset = KATFashionMNIST(str(root), split='train', device='auto')
    batch = dataset.__getitems__(list(range(8)))
    assert batch['inputs'].is_cuda and batch['labels'].is_cuda and dataset.images.is_cuda
    pre = KATBatchClsPreprocessor(num_classes=10, mean=[72.9], std=[90.0], crop_padding=4, cutmix_alpha=1.0,
                                  mixup_alpha=0.8).cuda()
    out = pre(batch, training=True)
    assert out['inputs'].is_cuda and out['data_samples'][0].gt_score.is_cuda
    evaluation = pre(batch, training=False)
    torch.testing.assert_close(evaluation['inputs'].cpu(),
                               (torch.from_numpy(arrays['train'][0][:8]).float()[:, None] - 72.9) / 90.0)
    assert not evaluation['data_samples'][0].gt_label.is_cuda  # the evaluator reads them on the CPU
