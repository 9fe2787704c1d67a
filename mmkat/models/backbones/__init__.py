from .kat import KAT

__all__ = ['KAT']
