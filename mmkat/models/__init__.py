from .backbones import KAT
from .layers import GroupRational

__all__ = ['KAT', 'GroupRational']
