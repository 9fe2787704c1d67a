"""KATLoadImageFromFile (the image loader mmkat's tools put in every pipeline): an importable, registered class
that names the file it cannot read and refuses an image whose size is not the one its annotation entry gives."""
import numpy as np
import pytest
from PIL import Image

from tests.conftest import needs

pytestmark = needs('mmcv')


def image(path, width, height):
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
    return str(path)


def test_a_decoded_image_that_is_not_its_entrys_size_is_refused(tmp_path):
    from mmkat.datasets.transforms import ImageSizeMismatchError, KATLoadImageFromFile
    path = image(tmp_path / 'tiny.jpg', 1, 1)
    with pytest.raises(ImageSizeMismatchError) as info:
        KATLoadImageFromFile()(dict(img_path=path, height=256, width=256))
    assert isinstance(info.value, ValueError)
    assert f'the image {path} is 1x1 (width x height) but its annotation entry says 256x256' in str(info.value)


def test_matching_turned_and_sizeless_samples_pass(tmp_path):
    from mmkat.datasets.transforms import KATLoadImageFromFile
    load = KATLoadImageFromFile()
    path = image(tmp_path / 'wide.png', 40, 20)
    assert load(dict(img_path=path, height=20, width=40))['img'].shape == (20, 40, 3)
    assert load(dict(img_path=path, height=40, width=20)) is not None  # turned by EXIF: same ratio, passes
    assert load(dict(img_path=path))['ori_shape'] == (20, 40)  # no entry size (mmseg, mmpretrain): nothing to check


def test_the_loader_is_registered_under_its_name_and_still_names_unreadable_files(tmp_path):
    from mmengine.registry import TRANSFORMS

    import mmkat  # noqa: F401  (registers it where mmcv is installed)
    from mmkat.datasets.transforms import KATLoadImageFromFile, UnreadableImageError, name_unreadable_images
    assert TRANSFORMS.get('KATLoadImageFromFile') is KATLoadImageFromFile
    cfg = dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='Resize')])
    assert name_unreadable_images(cfg) == 1 and cfg['pipeline'][0]['type'] == 'KATLoadImageFromFile'
    load = TRANSFORMS.build(cfg['pipeline'][0])
    (tmp_path / 'empty.jpg').write_bytes(b'')
    with pytest.raises(UnreadableImageError, match=f'could not read the image {tmp_path}/empty.jpg, 0 bytes'):
        load(dict(img_path=str(tmp_path / 'empty.jpg')))
