"""mmkat: the Kolmogorov-Arnold Transformer (KAT) as an OpenMMLab backbone.

``import mmkat`` (or ``custom_imports=dict(imports=['mmkat'])`` in an mmengine config) registers mmkat's
modules on mmengine's root registries, which the mmdet, mmseg and mmpretrain registries fall back to.
It never imports mmdet, mmseg or mmpretrain.

It also lets torch's default ``weights_only=True`` loading read mmengine's own training checkpoints (the
inert types their message hub holds, see :func:`mmkat.engine.allow_mmengine_checkpoints`; nothing else is
allowed, and weights_only is never switched off), so the standard OpenMMLab APIs (``init_model``,
``DetInferencer``, ``MMSegInferencer``, ``ImageClassificationInferencer``, ...) load mmkat checkpoints once an
mmkat config has been read, and lets mmengine's checkpoint loader take mmkat's weights references (weights
names, ``hf_hub:``, ``.safetensors``, digest-named URLs; see :mod:`mmkat.hub`).
"""
from . import datasets, engine, hub, models, ops  # noqa: F401  (registers the modules)
from .models import KAT, GroupRational
from .ops import group_rational
from .utils.model_index import register_model_names
from .version import __version__

engine.allow_mmengine_checkpoints()
# mmengine's load_from / load_checkpoint (and so the inferencers and get_model) read weights names, hf_hub:
# references and .safetensors files, and check digests, through mmkat.hub
hub.register_checkpoint_schemes()
# mmpretrain's get_model / list_models / inference_model know mmkat's models by name (configs/kat/metafile.yml)
register_model_names()

__all__ = ['KAT', 'GroupRational', 'group_rational', '__version__']
