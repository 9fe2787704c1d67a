from .backbones import KAT
from .layers import GroupRational
from .necks import KATSimpleFPN

__all__ = ['KAT', 'GroupRational', 'KATSimpleFPN']
