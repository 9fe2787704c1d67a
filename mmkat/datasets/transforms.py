"""Image loading that names the file it could not read (used by mmkat's tools).

mmcv's ``LoadImageFromFile`` re-raises a decoder error as it is (a 0-byte or corrupt image gives OpenCV's
``!buf.empty()``), without the file. :func:`name_unreadable_images` makes a config's pipelines use
``KATLoadImageFromFile``, the same transform raising :class:`UnreadableImageError` with the path. mmcv is
imported only when a pipeline is rewritten, so ``import mmkat`` does not need it.
"""


class UnreadableImageError(OSError):
    """An image file that could not be read or decoded; the message names it."""


def _register():
    from mmcv.transforms import LoadImageFromFile
    from mmengine.registry import TRANSFORMS

    if 'KATLoadImageFromFile' in TRANSFORMS.module_dict:
        return

    @TRANSFORMS.register_module()
    class KATLoadImageFromFile(LoadImageFromFile):
        """mmcv's LoadImageFromFile, whose errors name the file."""

        def transform(self, results):
            try:
                out = super().transform(results)
            except Exception as e:  # noqa: BLE001  (cv2.error, OSError, AssertionError, ...)
                path = results.get('img_path')
                size = ''
                try:
                    import os
                    size = f', {os.path.getsize(path)} bytes'
                except (OSError, TypeError):
                    pass
                raise UnreadableImageError(f'could not read the image {path}{size}: '
                                           f'{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ""}'
                                           ) from None
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
    if count:
        _register()
    return count
