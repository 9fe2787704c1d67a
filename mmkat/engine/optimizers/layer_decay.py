"""Layer-wise learning-rate decay for any model whose backbone reports parameter depths.

``KATLayerDecayOptimWrapperConstructor`` is registered on mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``
registry, so ``constructor='KATLayerDecayOptimWrapperConstructor'`` works in mmpretrain, mmdet and mmseg
configs (their registries fall back to the root one) once ``mmkat`` is imported.
"""
import logging
from typing import Dict, List, Optional, Tuple

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm, _InstanceNorm
from torch import nn

__all__ = ['KATLayerDecayOptimWrapperConstructor']

_NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class KATLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise lr decay (BEiT / MAE / ViTDet style) for models with a depth-aware backbone.

    The model (a detector, segmentor, classifier, ...; a DDP-style wrapper is unwrapped through
    ``.module``) must have a backbone, at ``paramwise_cfg['backbone_name']`` (default ``'backbone'``; dotted
    paths such as ``'encoder.backbone'`` work), with ``get_layer_depth(name) -> (depth, num_depths)``
    taking names relative to the backbone, as :class:`mmkat.models.KAT` and mmpretrain's ViTs do.

    A backbone parameter at depth ``d`` of ``N`` gets ``lr = base_lr * layer_decay_rate ** (N - 1 - d)``;
    everything outside the backbone (neck, heads) is treated as depth ``N - 1`` (scale 1).

    ``paramwise_cfg`` keys:

    - ``layer_decay_rate`` (required): float in (0, 1].
    - ``backbone_name``: attribute path of the backbone, ``'backbone'`` by default.
    - ``custom_keys``: ``{substring: dict(lr_mult=..., decay_mult=..., **other_group_options)}``; as in
      mmengine, the longest matching key (ties: alphabetical) wins and the norm/bias/flat rules below are
      then ignored. ``lr_mult`` multiplies the layer-decayed lr, ``decay_mult`` the base weight decay;
      other entries are copied into the param group.
    - ``norm_decay_mult``: weight-decay multiplier of the parameters of norm layers (BN/IN/GN/LN).
    - ``bias_decay_mult``: weight-decay multiplier of other ``bias`` parameters.
    - ``flat_decay_mult``: weight-decay multiplier of the remaining 1-D parameters.
    - ``bias_lr_mult``: lr multiplier of ``bias`` parameters outside norm layers (on top of the layer scale).

    mmengine's ``dwconv_decay_mult``, ``dcn_offset_lr_mult`` and ``bypass_duplicate`` are not supported
    (an error says so); a parameter shared by several modules is always added once. Parameters with
    ``requires_grad=False`` are skipped. Parameters with identical settings are merged into one param group,
    which carries ``layer_id``, ``lr_scale`` and ``param_names`` for inspection.

    Example::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
            constructor='KATLayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(
                layer_decay_rate=0.7,
                flat_decay_mult=0.0,
                custom_keys={'.pos_embed': dict(decay_mult=0.0), '.cls_token': dict(decay_mult=0.0),
                             '.rel_pos_h': dict(decay_mult=0.0), '.rel_pos_w': dict(decay_mult=0.0)}))
    """

    _SUPPORTED_KEYS = ('layer_decay_rate', 'backbone_name', 'custom_keys', 'norm_decay_mult', 'bias_decay_mult',
                       'flat_decay_mult', 'bias_lr_mult')

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        name = type(self).__name__
        if not isinstance(paramwise_cfg, dict) or 'layer_decay_rate' not in paramwise_cfg:
            raise ValueError(f'{name}: paramwise_cfg must be a dict with layer_decay_rate (a float in (0, 1]), '
                             f'got {paramwise_cfg!r}')
        unknown = sorted(set(paramwise_cfg) - set(self._SUPPORTED_KEYS))
        if unknown:
            raise ValueError(f'{name}: unsupported paramwise_cfg keys {unknown}; supported: '
                             f'{list(self._SUPPORTED_KEYS)}')
        rate = paramwise_cfg['layer_decay_rate']
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'{name}: layer_decay_rate must be a number in (0, 1], got {rate!r}')
        backbone_name = paramwise_cfg.get('backbone_name', 'backbone')
        if not isinstance(backbone_name, str) or not backbone_name:
            raise ValueError(f'{name}: backbone_name must be a non-empty string, got {backbone_name!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.layer_decay_rate = float(rate)
        self.backbone_name = backbone_name

    # ------------------------------------------------------------------ helpers
    def _get_backbone(self, model: nn.Module) -> nn.Module:
        backbone = model
        for part in self.backbone_name.split('.'):
            if not hasattr(backbone, part):
                raise AttributeError(f'{type(self).__name__}: {type(model).__name__} has no backbone at '
                                     f'{self.backbone_name!r} (set paramwise_cfg.backbone_name)')
            backbone = getattr(backbone, part)
        if not callable(getattr(backbone, 'get_layer_depth', None)):
            raise NotImplementedError(f'{type(self).__name__}: the backbone {type(backbone).__name__} at '
                                      f'{self.backbone_name!r} has no get_layer_depth(param_name) method, '
                                      'which layer-wise lr decay needs')
        return backbone

    def _num_depths(self, backbone: nn.Module) -> int:
        names = [n for n, _ in backbone.named_parameters()]
        _, num_depths = backbone.get_layer_depth(names[0] if names else '')
        if not isinstance(num_depths, int) or num_depths < 1:
            raise ValueError(f'{type(self).__name__}: {type(backbone).__name__}.get_layer_depth returned '
                             f'{num_depths!r} depths')
        return num_depths

    def _group_options(self, name: str, param: nn.Parameter,
                       module: nn.Module) -> Tuple[float, Optional[float], Dict]:
        """(lr multiplier, weight decay or None, extra group options) of one parameter, before the layer
        scale."""
        cfg = self.paramwise_cfg
        custom_keys = cfg.get('custom_keys', {})
        base_wd = self.base_wd
        for key in sorted(sorted(custom_keys), key=len, reverse=True):
            if key in name:
                options = dict(custom_keys[key])
                lr_mult = options.pop('lr_mult', 1.)
                decay_mult = options.pop('decay_mult', 1.)
                return lr_mult, None if base_wd is None else base_wd * decay_mult, options
        short_name = name.rsplit('.', 1)[-1]
        is_norm = isinstance(module, _NORM_TYPES)
        lr_mult = 1.
        if short_name == 'bias' and not is_norm and cfg.get('bias_lr_mult') is not None:
            lr_mult = cfg['bias_lr_mult']
        wd = base_wd
        if base_wd is not None:
            if is_norm and cfg.get('norm_decay_mult') is not None:
                wd = base_wd * cfg['norm_decay_mult']
            elif short_name == 'bias' and cfg.get('bias_decay_mult') is not None:
                wd = base_wd * cfg['bias_decay_mult']
            elif param.ndim == 1 and cfg.get('flat_decay_mult') is not None:
                wd = base_wd * cfg['flat_decay_mult']
        return lr_mult, wd, {}

    # ------------------------------------------------------------------ mmengine hook
    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        """Fill ``params`` with the param groups of ``module``, the whole (unwrapped) model; mmengine's
        ``__call__`` calls it once, with the model. Parameter names are relative to the model."""
        if hasattr(module, 'module') and not hasattr(module, self.backbone_name.split('.')[0]):
            module = module.module  # a model wrapper (DDP and the like) handed over directly
        backbone = self._get_backbone(module)
        num_depths = self._num_depths(backbone)
        backbone_prefix = self.backbone_name + '.'

        groups: Dict[tuple, dict] = {}  # insertion-ordered: groups appear in the model's parameter order
        seen = set()
        num_frozen = 0
        for module_name, mod in module.named_modules():
            for short_name, param in mod.named_parameters(recurse=False):
                if id(param) in seen:  # shared by several modules: added once
                    continue
                seen.add(id(param))
                if not param.requires_grad:
                    num_frozen += 1
                    continue
                name = f'{module_name}.{short_name}' if module_name else short_name
                if name.startswith(backbone_prefix):
                    depth, n = backbone.get_layer_depth(name[len(backbone_prefix):])
                    if n != num_depths or not 0 <= depth < num_depths:
                        raise ValueError(f'{type(self).__name__}: get_layer_depth({name!r}) returned '
                                         f'({depth}, {n}), expected a depth in [0, {num_depths}) of {num_depths}')
                else:
                    depth = num_depths - 1
                scale = self.layer_decay_rate ** (num_depths - 1 - depth)
                lr_mult, wd, options = self._group_options(name, param, mod)
                key = (depth, lr_mult, wd, repr(sorted(options.items())))
                if key not in groups:
                    group = dict(params=[], lr=self.base_lr * scale * lr_mult, lr_scale=scale, layer_id=depth,
                                 param_names=[])
                    if wd is not None:
                        group['weight_decay'] = wd
                    group.update(options)
                    groups[key] = group
                groups[key]['params'].append(param)
                groups[key]['param_names'].append(name)
        params.extend(groups.values())
        self._log_summary(list(groups.values()), num_depths, num_frozen)

    def _log_summary(self, groups: List[dict], num_depths: int, num_frozen: int) -> None:
        by_depth: Dict[int, List[dict]] = {}
        for group in groups:
            by_depth.setdefault(group['layer_id'], []).append(group)
        lines = [f'layer-wise lr decay: rate {self.layer_decay_rate:g}, {num_depths} depths, base lr '
                 f'{self.base_lr:g}, backbone {self.backbone_name!r}'
                 + (f', {num_frozen} frozen parameters skipped' if num_frozen else '')]
        for depth in sorted(by_depth):
            tensors = sum(len(g['params']) for g in by_depth[depth])
            numel = sum(p.numel() for g in by_depth[depth] for p in g['params'])
            where = 'backbone + outside' if depth == num_depths - 1 else 'backbone'
            lines.append(f'  depth {depth:>2d} ({where}): lr scale {by_depth[depth][0]["lr_scale"]:.4g}, '
                         f'{tensors} tensors, {numel} elements')
        print_log('\n'.join(lines), logger='current', level=logging.INFO)
