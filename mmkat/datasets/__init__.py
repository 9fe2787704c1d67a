from .shapes import KATDemoShapes

__all__ = ['KATDemoShapes']
