from .scenes import SCENE_CLASSES, SEG_CLASSES, make_scenes
from .shapes import KATDemoShapes
from .tensor_dataset import FASHION_MNIST_CLASSES, KATFashionMNIST, KATTensorDataset, kat_batch_collate, read_idx_ubyte

try:  # registers KATLoadImageFromFile where mmcv is installed (mmkat itself does not need mmcv)
    from . import transforms  # noqa: F401
except ModuleNotFoundError as e:
    if (e.name or '').split('.')[0] != 'mmcv':
        raise

__all__ = ['FASHION_MNIST_CLASSES', 'KATDemoShapes', 'KATFashionMNIST', 'KATTensorDataset', 'SCENE_CLASSES',
           'SEG_CLASSES', 'kat_batch_collate', 'make_scenes', 'read_idx_ubyte']
