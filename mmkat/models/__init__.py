from .layers import GroupRational

__all__ = ['GroupRational']
