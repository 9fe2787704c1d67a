"""Image loading that names the file it could not read, and refuses an image whose size is not its annotation's
(used by mmkat's tools).

mmcv's ``LoadImageFromFile`` re-raises a decoder error as it is (a 0-byte or corrupt image gives OpenCV's
``!buf.empty()``), without the file. :func:`name_unreadable_images` makes a config's pipelines use
:class:`KATLoadImageFromFile`, the same transform raising :class:`UnreadableImageError` with the path, and
:class:`ImageSizeMismatchError` when the decoded image is not the size its annotation entry gives (mmdet's
``CocoDataset`` puts the entry's ``height`` and ``width`` in each sample; its masks are decoded at that size and
rescaled by the image/entry ratio, so a 1x1 image whose entry says 256x256 grows every mask 256 times per side).

This module needs mmcv; ``import mmkat`` imports it only where mmcv is installed (``import mmkat`` does not need
mmcv), which registers ``KATLoadImageFromFile`` on mmengine's root ``TRANSFORMS``.
"""
import numbers
import os

from mmcv.transforms import LoadImageFromFile
from mmengine.registry import TRANSFORMS


class UnreadableImageError(OSError):
    """An image file that could not be read or decoded; the message names it."""


class ImageSizeMismatchError(ValueError):
    """An image whose decoded size is not the one its annotation entry gives; the message names the file and
    both sizes."""


def _pixels(value):
    """A side length from an annotation entry as an int (256, 256.0, numpy ints), else None."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value > 0 else None


def check_image_size(results: dict) -> None:
    """Raise :class:`ImageSizeMismatchError` when ``results`` carries its annotation's image size (``height`` and
    ``width``, as mmdet's datasets put them) and the decoded ``img`` is another size.

    The transposed size passes: OpenCV turns a JPEG by its EXIF orientation, and COCO's entries give the size
    as stored (a turned image keeps the ratio of its entry, so its masks do not grow)."""
    img = results.get('img')
    height, width = _pixels(results.get('height')), _pixels(results.get('width'))
    if img is None or height is None or width is None:
        return
    shape = tuple(getattr(img, 'shape', ())[:2])
    if len(shape) != 2 or shape in ((height, width), (width, height)):
        return
    raise ImageSizeMismatchError(
        f'the image {results.get("img_path")} is {shape[1]}x{shape[0]} (width x height) but its annotation entry '
        f'says {width}x{height}: its masks and boxes would be scaled by the wrong ratio (masks decoded at the '
        "entry's size can grow past all memory). Fix the entry's width/height, or the image")


@TRANSFORMS.register_module()
class KATLoadImageFromFile(LoadImageFromFile):
    """mmcv's LoadImageFromFile, whose errors name the file, and which refuses an image whose size is not the one
    its annotation entry gives (see :func:`check_image_size`)."""

    def transform(self, results):
        try:
            out = super().transform(results)
        except Exception as e:  # noqa: BLE001  (cv2.error, OSError, AssertionError, ...)
            path = results.get('img_path')
            size = ''
            try:
                size = f', {os.path.getsize(path)} bytes'
            except (OSError, TypeError):
                pass
            raise UnreadableImageError(f'could not read the image {path}{size}: '
                                       f'{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ""}'
                                       ) from None
        if out is not None:  # None: a missing file with ignore_empty=True
            check_image_size(out)
        return out


def name_unreadable_images(cfg) -> int:
    """Replace ``LoadImageFromFile`` by ``KATLoadImageFromFile`` in every pipeline of ``cfg`` (in place).
    Returns how many were replaced."""
    count = 0
    stack = [getattr(cfg, '_cfg_dict', cfg)]  # an mmengine Config wraps its ConfigDict
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get('type') in ('LoadImageFromFile', 'mmcv.LoadImageFromFile'):
                item['type'] = 'KATLoadImageFromFile'
                count += 1
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count
