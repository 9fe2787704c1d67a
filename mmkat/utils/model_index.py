"""mmkat's models by name: mmpretrain's ``get_model`` / ``list_models`` / ``inference_model``, mmdet's
``DetInferencer(model=NAME)``, mmseg's ``MMSegInferencer(model=NAME)`` and mim.

The names and their configs are in ``configs/kat/metafile.yml`` (classification) and
``configs/kat/metafile_dense.yml`` (detection, segmentation), imported by ``model-index.yml``; the package
reaches them through ``mmkat/.mim`` (links to the checkout's ``configs`` and ``model-index.yml``, the place
mim looks in). ``import mmkat`` arranges, without importing mmpretrain, mmdet or mmseg itself and in whichever
order the packages are imported, that

- mmpretrain's model hub holds the classification models as soon as ``mmpretrain.apis`` is imported;
- mmengine's ``BaseInferencer`` (which ``DetInferencer`` and ``MMSegInferencer`` build on) finds the dense
  names once ``mmengine.infer`` is imported: a name the scope's own metafiles do not hold is looked up in
  ``metafile_dense.yml`` (the scope's own names resolve exactly as before). No weights are published for the
  dense models, so ``weights`` must be given: without it the inferencer stops with a :class:`WeightsError`
  saying so (a detector with random weights is no result). A name of the other task is refused with the
  inferencer to use.
"""
import importlib.abc
import importlib.util
import os.path as osp
import sys
import warnings
from typing import Callable, Dict, Optional, Tuple

MIM_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim')
CLS_METAFILE = osp.join(MIM_DIR, 'configs', 'kat', 'metafile.yml')
DENSE_METAFILE = osp.join(MIM_DIR, 'configs', 'kat', 'metafile_dense.yml')
_HUB_MODULE = 'mmpretrain.apis.model'
_INFER_MODULE = 'mmengine.infer.infer'
# what the dense names give as their weights: mmengine's checkpoint loader hands it to load_from_unpublished
NO_WEIGHTS_PREFIX = 'mmkat-no-published-weights:'
INFERENCERS = {'mmdet': 'mmdet.apis.DetInferencer', 'mmseg': 'mmseg.apis.MMSegInferencer'}
_registered = False
_inferencer_patched = False


# ------------------------------------------------------------------------------------ mmpretrain's hub
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


# ------------------------------------------------------------------------- mmengine's inferencers (dense)
def dense_models() -> Dict[str, str]:
    """{lower-case name: absolute config path} of ``configs/kat/metafile_dense.yml`` (empty without it)."""
    if not osp.isfile(DENSE_METAFILE):
        return {}
    import yaml
    with open(DENSE_METAFILE) as f:
        models = yaml.safe_load(f).get('Models') or []
    return {m['Name'].lower(): osp.abspath(osp.join(MIM_DIR, m['Config'])) for m in models}


def find_dense_model(name: str, scope: Optional[str]):
    """(Config, weights reference) of a dense model ``name`` for an inferencer of ``scope``, None when mmkat
    has no such name. The weights reference makes mmengine's loader stop with a message unless the caller gives
    its own weights. A name of another scope raises ValueError naming the inferencer to use."""
    config = dense_models().get(name.lower())
    if config is None:
        return None
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    wanted = cfg.get('default_scope')
    if wanted != scope:
        use = INFERENCERS.get(wanted, f'an inferencer of scope {wanted!r}')
        raise ValueError(f'{name} is an {wanted} model of mmkat (configs/kat/metafile_dense.yml), not an {scope} '
                         f'one: use {use}')
    return cfg, NO_WEIGHTS_PREFIX + name


def load_from_unpublished(filename: str, map_location=None):
    """mmengine ``CheckpointLoader`` backend (logged as 'unpublished') of the dense names' weights reference:
    there are none."""
    from mmkat.hub import WeightsError
    name = filename[len(NO_WEIGHTS_PREFIX):]
    raise WeightsError(f'{name} has no published weights (configs/kat/metafile_dense.yml gives its config only) '
                       f'and predictions with random weights are no result: pass your checkpoint as weights, '
                       f"e.g. weights='work_dirs/<run>/iter_N.pth'")


def install_inferencer_names() -> None:
    """Let ``BaseInferencer._load_model_from_metafile`` (so ``DetInferencer(model=NAME)`` and
    ``MMSegInferencer(model=NAME)``) fall back to mmkat's dense names (once; needs ``mmengine.infer``)."""
    global _inferencer_patched
    if _inferencer_patched:
        return
    from mmengine.infer.infer import BaseInferencer
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes=NO_WEIGHTS_PREFIX, loader=load_from_unpublished, force=True)
    scope_lookup = BaseInferencer._load_model_from_metafile

    def _load_model_from_metafile(self, model: str) -> Tuple[object, str]:
        try:
            return scope_lookup(self, model)  # the scope's own names first, exactly as before
        except ValueError:
            found = find_dense_model(model, self.scope)
            if found is None:
                raise
            return found

    _load_model_from_metafile.__wrapped__ = scope_lookup
    _load_model_from_metafile.__doc__ = scope_lookup.__doc__
    BaseInferencer._load_model_from_metafile = _load_model_from_metafile
    _inferencer_patched = True


def _install_quietly():
    try:
        install_inferencer_names()
    except Exception as e:  # never break mmengine's own import
        warnings.warn(f'mmkat: could not add its detection and segmentation names to mmengine\'s inferencers '
                      f'({type(e).__name__}: {e})')


# ------------------------------------------------------------------------------- after a module's import
class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``module`` is about to be imported it wraps that module's loader so that
    ``callback`` runs right after the module has run, then steps aside."""

    def __init__(self, module: str, callback: Callable[[], None]):
        self.module = module
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
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
        run_module, callback = loader.exec_module, self.callback

        def exec_module(module):
            run_module(module)
            callback()

        loader.exec_module = exec_module
        return spec


def _after_import(module: str, package: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` now when ``module`` is imported, else right after its import (if ``package`` is
    installed at all)."""
    if module in sys.modules:
        callback()
    elif importlib.util.find_spec(package) is not None and \
            not any(isinstance(f, _RunAfterImport) and f.module == module for f in sys.meta_path):
        sys.meta_path.insert(0, _RunAfterImport(module, callback))


def register_model_names() -> None:
    """What ``import mmkat`` arranges: the classification names in mmpretrain's model hub, the dense names
    in mmengine's inferencers, each now or as soon as the module concerned is imported."""
    _after_import(_HUB_MODULE, 'mmpretrain', _register_quietly)
    _after_import(_INFER_MODULE, 'mmengine', _install_quietly)
