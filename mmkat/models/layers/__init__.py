from .group_rational import GroupRational

__all__ = ['GroupRational']
