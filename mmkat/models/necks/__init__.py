from .simple_fpn import KATSimpleFPN, LayerNorm2d

__all__ = ['KATSimpleFPN', 'LayerNorm2d']
