"""Does a built model with a KAT backbone fit together? The channels KAT gives against what its neck and heads
take, checked once the model is built, so that a config with a head left at a ResNet's channels stops with a
line naming the head, the channels it takes and the ones it gets, instead of a conv error deep in the first
forward (e.g. mmseg's packaged UperNet config with its auxiliary ``FCNHead`` left at 1024 input channels).

Only structures whose channel flow is known are checked (mmseg decode heads and necks, mmdet FPN-style necks,
RPN / single-stage / standard RoI heads, mmpretrain classification heads and pooling necks, mmkat's
``KATSimpleFPN``); anything else ends the check silently, so a model is never refused for what the check does
not understand. Nothing here imports mmdet, mmseg or mmpretrain: classes are recognised by their names and
modules.
"""
from typing import Callable, List, Optional, Sequence, Tuple

from torch import nn

__all__ = ['channel_mismatches', 'check_channels']


class _Feeds:
    """What the next module receives: the channels of each map, and where they come from (in words)."""

    def __init__(self, channels: Sequence[int], source: str):
        self.channels = list(channels)
        self.source = source

    def pick(self, index) -> Optional[int]:
        n = len(self.channels)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            return None
        return self.channels[index]


def _is(module, package: str, *names: str) -> bool:
    """Is ``module`` an instance of a class called one of ``names`` defined in ``package`` (or a subclass)?"""
    return any(cls.__name__ in names and cls.__module__.split('.')[0] == package for cls in type(module).__mro__)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value) -> bool:
    return isinstance(value, (list, tuple)) and all(_int(v) for v in value)


def _kat_name(backbone) -> str:
    from mmkat.models import KAT
    settings = backbone.arch_settings
    for letter, key in (('T', 'tiny'), ('S', 'small'), ('B', 'base')):
        if settings == {'mlp_ratio': 4., **KAT.arch_zoo[key]}:
            return f'KAT-{letter}'
    return f'KAT (embed_dims={backbone.embed_dims}, {backbone.num_layers} blocks)'


def _indices(indices) -> str:
    return '(' + ', '.join(str(i) for i in indices) + ')'


def _maps(channels: Sequence[int]) -> str:
    """'4 maps of 384 channels' or 'maps of [96, 192, 384, 384] channels'."""
    if len(set(channels)) == 1:
        return f'{len(channels)} map{"s" if len(channels) > 1 else ""} of {channels[0]} channels'
    return f'maps of {list(channels)} channels'


# ------------------------------------------------------------------------------------------------- necks
def _neck_inputs(neck) -> Optional[Tuple[List[int], Optional[range], str]]:
    """(the channels the neck takes, the inputs it reads (None: all, by position), the option that sets them)
    for the necks whose channel flow is known; None for others."""
    if _is(neck, 'mmkat', 'KATSimpleFPN'):
        return [neck.backbone_channel], None, 'backbone_channel'
    if _is(neck, 'mmseg', 'MultiLevelNeck') and _ints(neck.in_channels):
        return list(neck.in_channels), None, 'in_channels'
    if (_is(neck, 'mmdet', 'FPN') or _is(neck, 'mmseg', 'FPN')) and _ints(neck.in_channels):
        return list(neck.in_channels), range(neck.start_level, neck.backbone_end_level), 'in_channels'
    if _is(neck, 'mmdet', 'ChannelMapper'):
        return [conv.conv.in_channels for conv in neck.convs], None, 'in_channels'
    return None


def _neck_outputs(neck, feeds: _Feeds) -> Optional[List[int]]:
    if _is(neck, 'mmkat', 'KATSimpleFPN') or _is(neck, 'mmdet', 'FPN') or _is(neck, 'mmseg', 'FPN'):
        return [neck.out_channels] * neck.num_outs if _int(neck.out_channels) else None
    if _is(neck, 'mmseg', 'MultiLevelNeck'):
        return [neck.out_channels] * neck.num_outs if _int(neck.out_channels) else None
    if _is(neck, 'mmdet', 'ChannelMapper'):
        count = len(neck.convs) + len(neck.extra_convs or [])
        return [neck.convs[0].conv.out_channels] * count
    if _is(neck, 'mmpretrain', 'GlobalAveragePooling', 'GeneralizedMeanPooling'):
        return list(feeds.channels)  # pooling keeps the channels
    return None


def _check_neck(path: str, neck, feeds: _Feeds) -> Tuple[List[str], Optional[_Feeds]]:
    """The mismatches of one neck and what it passes on (None where that is not known)."""
    name = type(neck).__name__
    if isinstance(neck, nn.Sequential):  # a list of necks in the config
        messages = []
        for i, part in enumerate(neck):
            found, feeds = _check_neck(f'{path}[{i}]', part, feeds)
            messages += found
            if feeds is None:
                break
        return messages, feeds
    messages = []
    taken = _neck_inputs(neck)
    if taken is not None:
        want, used, option = taken
        if option == 'backbone_channel':  # the last input only
            got = feeds.channels[-1]
            if want[0] != got:
                messages.append(f'{feeds.source}; {path} ({name}) takes backbone_channel={want[0]} for the last of '
                                f'them: set {path}.backbone_channel={got}')
        else:
            used = range(len(want)) if used is None else used
            if len(want) != len(feeds.channels) or any(want[i] != feeds.channels[i] for i in used
                                                       if i < len(feeds.channels)):
                messages.append(f'{feeds.source}; {path} ({name}) takes {len(want)} input'
                                f'{"s" if len(want) > 1 else ""} with in_channels={want}: '
                                f'set {path}.in_channels={feeds.channels}')
    out = _neck_outputs(neck, feeds)
    if out is None:
        return messages, None
    if out == feeds.channels and taken is None:
        return messages, _Feeds(out, f'{feeds.source} (through {path}, {name})')
    return messages, _Feeds(out, f'{feeds.source}, {path} ({name}) turns them into {_maps(out)}')


# ------------------------------------------------------------------------------------------------- heads
def _check_seg_head(path: str, head, feeds: _Feeds) -> List[str]:
    """An mmseg decode head: ``in_channels`` / ``in_index`` / ``input_transform`` against the maps it gets."""
    name, n = type(head).__name__, len(feeds.channels)
    transform, index, taken = head.input_transform, head.in_index, head.in_channels
    where = f'{feeds.source}; {path} ({name})'
    if transform is None:
        if not _int(index) or not _int(taken):
            return []
        got = feeds.pick(index)
        if got is None:
            return [f'{where} reads in_index={index}, but gets {n} map{"s" if n > 1 else ""}: set {path}.in_index '
                    f'to one of 0..{n - 1}']
        if taken != got:
            return [f'{where} takes in_channels={taken} at in_index={index}: set {path}.in_channels={got}']
        return []
    if not _ints(index):
        return []
    got = [feeds.pick(i) for i in index]
    if any(c is None for c in got):
        return [f'{where} reads in_index={list(index)}, but gets {n} map{"s" if n > 1 else ""}: set '
                f'{path}.in_index to indices in 0..{n - 1}']
    if transform == 'multiple_select' and _ints(taken) and list(taken) != got:
        return [f'{where} takes in_channels={list(taken)} at in_index={list(index)}: set {path}.in_channels={got}']
    if transform == 'resize_concat' and _int(taken) and taken != sum(got):
        return [f'{where} takes in_channels summing to {taken} at in_index={list(index)} (resize_concat): set '
                f'{path}.in_channels={got}']
    return []


def _check_in_channels(path: str, head, got: Optional[int], where: str, option: str = 'in_channels') -> List[str]:
    taken = getattr(head, option, None)
    if got is None or not _int(taken) or taken == got:
        return []
    return [f'{where}; {path} ({type(head).__name__}) takes {option}={taken}: set {path}.{option}={got}']


def _same(channels: Sequence[int]) -> Optional[int]:
    return channels[0] if channels and len(set(channels)) == 1 else None


def _check_det_heads(model, feeds: _Feeds) -> List[str]:
    """mmdet: the RPN head and RoI extractors of a two-stage detector, the head of a single-stage one: each
    takes every pyramid level with the same channels."""
    level = _same(feeds.channels)
    messages = []
    if _is(model, 'mmdet', 'SingleStageDetector'):
        head = getattr(model, 'bbox_head', None)
        if head is not None and _is(head, 'mmdet', 'BaseDenseHead'):
            messages += _check_in_channels('model.bbox_head', head, level, feeds.source)
    if not _is(model, 'mmdet', 'TwoStageDetector'):
        return messages
    rpn = getattr(model, 'rpn_head', None)
    if rpn is not None and _is(rpn, 'mmdet', 'BaseDenseHead'):
        messages += _check_in_channels('model.rpn_head', rpn, level, feeds.source)
    roi = getattr(model, 'roi_head', None)
    if roi is None or type(roi).__name__ != 'StandardRoIHead' or not _is(roi, 'mmdet', 'StandardRoIHead'):
        return messages
    for kind in ('bbox', 'mask'):
        extractor = getattr(roi, f'{kind}_roi_extractor', None)
        if extractor is None or not _is(extractor, 'mmdet', 'BaseRoIExtractor') or level is None:
            continue
        path = f'model.roi_head.{kind}_roi_extractor'
        found = _check_in_channels(path, extractor, level, feeds.source, option='out_channels')
        messages += found
        head = getattr(roi, f'{kind}_head', None)
        if not found and head is not None and (_is(head, 'mmdet', 'BBoxHead') or _is(head, 'mmdet', 'FCNMaskHead')):
            messages += _check_in_channels(f'model.roi_head.{kind}_head', head, level,
                                           f'{feeds.source} ({path} passes them on)')
    return messages


def _check_heads(model, feeds: _Feeds) -> List[str]:
    messages = []
    for attr in ('decode_head', 'auxiliary_head'):  # mmseg
        heads = getattr(model, attr, None)
        if heads is None:
            continue
        listed = isinstance(heads, nn.ModuleList)
        for i, head in enumerate(heads if listed else [heads]):
            if _is(head, 'mmseg', 'BaseDecodeHead'):
                messages += _check_seg_head(f'model.{attr}[{i}]' if listed else f'model.{attr}', head, feeds)
    head = getattr(model, 'head', None)  # mmpretrain: the heads read the last output
    if head is not None and _is(head, 'mmpretrain', 'ClsHead', 'MultiLabelClsHead'):
        messages += _check_in_channels('model.head', head, feeds.channels[-1], feeds.source)
    messages += _check_det_heads(model, feeds)
    return messages


# ------------------------------------------------------------------------------------------------- entry
def _unwrap(model):
    from mmengine.model import is_model_wrapper
    while is_model_wrapper(model) or (type(model).__name__ == 'SegTTAModel' and hasattr(model, 'module')):
        model = model.module
    return model


def channel_mismatches(model) -> List[str]:
    """One line per place where ``model`` (built, possibly wrapped in DDP) would get other channels from its KAT
    backbone than it takes: the neck, then the heads (against the neck's outputs where there is a neck).
    Empty when everything fits, when the backbone is not a KAT, or when the structure is not one this check
    knows."""
    from mmkat.models import KAT
    if not isinstance(model, nn.Module):
        return []
    model = _unwrap(model)
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, KAT):
        return []
    indices = backbone.out_indices
    feeds = _Feeds([backbone.embed_dims] * len(indices),
                   f'{_kat_name(backbone)} gives {backbone.embed_dims} channels at out_indices {_indices(indices)}')
    messages = []
    neck = getattr(model, 'neck', None)
    if isinstance(neck, nn.Module):
        messages, feeds = _check_neck('model.neck', neck, feeds)
        if feeds is None:  # a neck this check does not know: what the heads get is unknown
            return messages
    return messages + _check_heads(model, feeds)


def check_channels(model, fail: Callable[[str], None]) -> None:
    """Call ``fail`` with every line of :func:`channel_mismatches` (the tools' refusal), if there is one."""
    messages = channel_mismatches(model)
    if messages:
        fail("the model's neck or heads do not take the channels its KAT backbone gives (the first forward would "
             'stop on them):\n  ' + '\n  '.join(messages))
