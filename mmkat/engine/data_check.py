"""Say where a config expects its data, and how to get it, before a run starts loading it."""
import os
import os.path as osp
from typing import Iterator, List, Tuple

HINTS = {
    'CocoDataset': ('COCO 2017: download train2017/, val2017/ and annotations/ (instances_*2017.json) from '
                    'https://cocodataset.org/#download and unpack them under {root}'),
    'ImageNet': ("ImageNet-1k in mmpretrain's layout: {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG "
                 '(or meta/train.txt, meta/val.txt lists); see mmpretrain\'s "Prepare dataset" guide'),
    'FashionMNIST': ("Debian's dataset-fashion-mnist: `sudo apt-get install dataset-fashion-mnist` (or "
                     '`apt-get download dataset-fashion-mnist` and --deb), then `python tools/data/fashion_mnist.py '
                     '--out {root}`'),
    'ADE20KDataset': ('ADE20K (ADEChallengeData2016): images/ and annotations/ under {root}; see mmseg\'s '
                      '"Prepare datasets" guide'),
}


def _datasets(cfg, key: str) -> Iterator[Tuple[str, dict]]:
    """(config key, dataset config) of every dataset under ``cfg``, wrappers (RepeatDataset, ConcatDataset, ...)
    unfolded; inside a list the key stops at the list."""
    stack = [(key, cfg)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend((key, sub) for sub in item)
        elif isinstance(item, dict):
            if 'dataset' in item:
                stack.append((f'{key}.dataset', item['dataset']))
            elif 'datasets' in item:
                stack.append((f'{key}.datasets', item['datasets']))
            else:
                yield key, item


def missing_data(cfg, loaders=('train_dataloader', 'val_dataloader')) -> List[str]:
    """One message per dataset of ``loaders`` whose data_root or annotation file does not exist (remote paths
    are not checked), with where it is expected and how to get it.

    The hint comes from the config's top-level ``data_hint`` string when it has one (``{root}`` is replaced by
    the dataset's data_root), else from :data:`HINTS` by dataset type."""
    messages = []
    config_hint = cfg.get('data_hint')
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg or 'dataset' not in loader_cfg:
            continue
        for key, dataset in _datasets(loader_cfg['dataset'], f'{loader}.dataset'):
            root = dataset.get('data_root') or ''
            ann = dataset.get('ann_file') or ''
            paths = [p for p in (root, osp.join(root, ann) if ann else '') if p]
            if any('://' in p for p in paths):
                continue
            missing = next((p for p in paths if not osp.exists(p)), None)
            if missing is None:
                continue
            kind = dataset.get('type', '?')
            kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '?')
            hint = config_hint or HINTS.get(kind, 'put the data there or point data_root at it with --cfg-options')
            hint = hint.format(root=root or '.')
            messages.append(f'{loader}: {kind} expects {missing!r}, which does not exist. {hint}. Data elsewhere: '
                            f'--cfg-options {key}.data_root=PATH')
    return messages


def config_copy_clash(work_dir: str, config: str) -> str:
    """mmengine's Runner writes the merged config to <work dir>/<config file name>. When that is the config
    file itself, return the message that says so (it would lose its comments and _base_); else ''."""
    if '://' in str(work_dir):
        return ''
    dump = os.path.join(work_dir, os.path.basename(config))
    if os.path.abspath(dump) != os.path.abspath(config):
        return ''
    return (f'the config {config} lies in the work dir {work_dir}, where mmengine writes its copy of the merged '
            'config under the same name (its comments and _base_ would be lost): move the config or pass another '
            '--work-dir')
