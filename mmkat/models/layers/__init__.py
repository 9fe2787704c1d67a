from .attention import Attention
from .block import DropPath, KATBlock
from .group_rational import GroupRational
from .kan import KAN, Mlp

__all__ = ['Attention', 'DropPath', 'GroupRational', 'KAN', 'KATBlock', 'Mlp']
