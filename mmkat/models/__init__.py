from .backbones import KAT
from .data_preprocessors import KATBatchClsPreprocessor
from .layers import GroupRational
from .necks import KATSimpleFPN

__all__ = ['KAT', 'GroupRational', 'KATBatchClsPreprocessor', 'KATSimpleFPN']
