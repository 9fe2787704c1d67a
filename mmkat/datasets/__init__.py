from .scenes import SCENE_CLASSES, SEG_CLASSES, make_scenes
from .shapes import KATDemoShapes
from .tensor_dataset import (FASHION_MNIST_CLASSES, KATFashionMNIST, KATTensorDataset, kat_batch_collate,
                             read_idx_ubyte)

__all__ = ['FASHION_MNIST_CLASSES', 'KATDemoShapes', 'KATFashionMNIST', 'KATTensorDataset', 'SCENE_CLASSES',
           'SEG_CLASSES', 'kat_batch_collate', 'make_scenes', 'read_idx_ubyte']
