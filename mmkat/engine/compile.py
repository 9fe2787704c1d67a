"""``compile=True`` for mmkat's tools: torch.compile the KAT backbones of a runner's model.

mmengine's own ``compile=True`` compiles the whole ``train_step``, whose optimizer step and loss parsing
torch 2.11-2.14's Dynamo cannot trace through mmengine's optimizer wrapper (it stops with an internal error
in ``_get_param_groups``). mmkat's ``tools/train.py`` and ``tools/test.py`` therefore take the option out of
the config before the runner sees it and compile the forward of each ``KAT`` module of the built model
instead, in place: module names and checkpoint keys do not change. The heads, losses and data
preprocessors of mmpretrain / mmdet / mmseg stay eager.

    compile = True                                        # torch.compile defaults
    compile = dict(mode='max-autotune', dynamic=False)    # any torch.compile keyword
"""
from typing import Optional

import torch
from mmengine.logging import print_log


def take_compile_option(cfg) -> Optional[dict]:
    """Remove ``compile`` from an mmengine config; return torch.compile's keyword arguments, or None when
    compilation is off."""
    value = cfg.pop('compile', None)
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f'compile must be True, False or a dict of torch.compile arguments, got {value!r}')


def compile_kat_modules(model: torch.nn.Module, compile_kwargs: dict) -> int:
    """torch.compile the forward of every KAT module inside ``model`` (a model wrapper is looked through).
    Returns how many were compiled; a model without a KAT is left as it is, with a warning."""
    from mmengine.model import is_model_wrapper

    from mmkat.models import KAT
    if is_model_wrapper(model):
        model = model.module
    compiled = 0
    for module in model.modules():
        if isinstance(module, KAT):
            module.forward = torch.compile(module.forward, **compile_kwargs)
            compiled += 1
    if compiled:
        print_log(f'compile: torch.compile({compile_kwargs or ""}) on the forward of {compiled} KAT module(s)',
                  logger='current')
    else:
        print_log('compile: the model holds no KAT module; nothing was compiled', logger='current',
                  level=30)
    return compiled
