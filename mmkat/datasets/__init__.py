from .scenes import SCENE_CLASSES, SEG_CLASSES, make_scenes
from .shapes import KATDemoShapes

__all__ = ['KATDemoShapes', 'SCENE_CLASSES', 'SEG_CLASSES', 'make_scenes']
