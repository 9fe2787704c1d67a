"""mmkat: the Kolmogorov-Arnold Transformer (KAT) as an OpenMMLab backbone.

``import mmkat`` (or ``custom_imports=dict(imports=['mmkat'])`` in an mmengine config) registers mmkat's
modules on mmengine's root registries, which the mmdet, mmseg and mmpretrain registries fall back to.
It never imports mmdet, mmseg or mmpretrain.
"""
from . import datasets, engine, models, ops  # noqa: F401  (registers the modules)
from .models import KAT, GroupRational
from .ops import group_rational
from .version import __version__

__all__ = ['KAT', 'GroupRational', 'group_rational', '__version__']
