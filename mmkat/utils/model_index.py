"""mmkat's models by name: mmpretrain's ``get_model`` / ``list_models`` / ``inference_model`` and mim.

The names and their configs are in ``configs/kat/metafile.yml`` (classification) and
``configs/kat/metafile_dense.yml`` (detection, segmentation), imported by ``model-index.yml``; the package
reaches them through ``mmkat/.mim`` (links to the checkout's ``configs`` and ``model-index.yml``, the place
mim looks in). ``import mmkat`` arranges that mmpretrain's model hub holds the classification models as
soon as ``mmpretrain.apis`` is imported, in whichever order the two are imported, without importing
mmpretrain itself.
"""
import importlib.abc
import importlib.util
import os.path as osp
import sys
import warnings

MIM_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim')
CLS_METAFILE = osp.join(MIM_DIR, 'configs', 'kat', 'metafile.yml')
_HUB_MODULE = 'mmpretrain.apis.model'
_registered = False


def register_mmpretrain_models() -> bool:
    """Add mmkat's classification models to mmpretrain's ``ModelHub`` (once). Returns whether they are
    there; False when the metafile is missing (a package built without its configs)."""
    global _registered
    if _registered:
        return True
    if not osp.isfile(CLS_METAFILE):
        return False
    from mmpretrain.apis.model import ModelHub
    ModelHub.register_model_index(CLS_METAFILE, config_prefix=MIM_DIR)
    _registered = True
    return True


def _register_quietly():
    try:
        register_mmpretrain_models()
    except Exception as e:  # never break mmpretrain's own import
        warnings.warn(f'mmkat: could not add its models to mmpretrain\'s model hub ({type(e).__name__}: {e})')


class _RegisterAfterHubImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``mmpretrain.apis.model`` is about to be imported it wraps that module's
    loader so that mmkat's models are registered right after the module has run, then steps aside."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _HUB_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        loader = spec.loader
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        run_module = loader.exec_module

        def exec_module(module):
            run_module(module)
            _register_quietly()

        loader.exec_module = exec_module
        return spec


def register_when_mmpretrain_loads():
    """Register now when mmpretrain's model hub is already imported, else as soon as it is."""
    if _HUB_MODULE in sys.modules:
        _register_quietly()
    elif importlib.util.find_spec('mmpretrain') is not None and \
            not any(isinstance(f, _RegisterAfterHubImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterHubImport())
