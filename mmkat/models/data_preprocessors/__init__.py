from .batch_cls import KATBatchClsPreprocessor

__all__ = ['KATBatchClsPreprocessor']
