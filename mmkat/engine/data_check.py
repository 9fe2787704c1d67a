"""Say where a config expects its data, and how to get it, before a run starts loading it."""
import contextlib
import os
import os.path as osp
from typing import Callable, Iterator, List, Tuple

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
HINTS['KATFashionMNIST'] = HINTS['FashionMNIST']


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


def _evaluators(cfg, loader: str) -> Iterator[Tuple[str, dict]]:
    """(config key, metric config) of the evaluator that goes with ``loader`` (val_dataloader -> val_evaluator)."""
    key = loader.replace('_dataloader', '_evaluator')
    items = cfg.get(key)
    if isinstance(items, dict):
        yield key, items
    elif isinstance(items, (list, tuple)):
        for i, item in enumerate(items):
            if isinstance(item, dict):
                yield f'{key}.{i}', item


def missing_data(cfg, loaders=('train_dataloader', 'val_dataloader')) -> List[str]:
    """One message per dataset of ``loaders`` (and per metric of their evaluators) whose data_root or
    annotation file does not exist (remote paths are not checked), with where it is expected and how to get
    it; then one line with every path key the run reads, to point all of them elsewhere at once.

    The hint comes from the config's top-level ``data_hint`` string when it has one (``{root}`` is replaced by
    the dataset's data_root), else from :data:`HINTS` by dataset type."""
    messages = []
    config_hint = cfg.get('data_hint')
    keys = []  # (config key, its value with the loader's dataset root replaced by NEW_ROOT)
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg or 'dataset' not in loader_cfg:
            continue
        first_root = None
        for key, dataset in _datasets(loader_cfg['dataset'], f'{loader}.dataset'):
            root = dataset.get('data_root') or ''
            ann = dataset.get('ann_file') or ''
            paths = [p for p in (root, osp.join(root, ann) if ann else '') if p]
            if any('://' in p for p in paths):
                continue
            if root:
                first_root = first_root or root
                keys.append((f'{key}.data_root', 'NEW_ROOT'))
            missing = next((p for p in paths if not osp.exists(p)), None)
            if missing is None:
                continue
            kind = dataset.get('type', '?')
            kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '?')
            hint = config_hint or HINTS.get(kind, 'put the data there or point data_root at it with --cfg-options')
            hint = hint.format(root=root or '.')
            messages.append(f'{loader}: {kind} expects {missing!r}, which does not exist. {hint}. Data elsewhere: '
                            f'--cfg-options {key}.data_root=PATH')
        for key, metric in _evaluators(cfg, loader):
            ann = metric.get('ann_file')
            if not isinstance(ann, str) or not ann or '://' in ann:
                continue
            rel = osp.relpath(ann, first_root) if first_root and ann.startswith(first_root.rstrip('/')) else None
            keys.append((f'{key}.ann_file', f'NEW_ROOT/{rel}' if rel else 'PATH'))
            if not osp.exists(ann):
                kind = metric.get('type', '?')
                kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '?')
                messages.append(f'{key.split(".")[0]}: {kind} reads {ann!r}, which does not exist. Elsewhere: '
                                f'--cfg-options {key}.ann_file=PATH')
    if messages and len(keys) > 1:
        messages.append('to read all of it from NEW_ROOT instead: --cfg-options ' +
                        ' '.join(f'{k}={v}' for k, v in dict(keys).items()))
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


def _json_files(cfg) -> List[str]:
    """Local .json files a config reads: datasets' annotation files (under their data_root) and evaluators'
    ann_file entries."""
    paths = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader_cfg = cfg.get(loader)
        if loader_cfg and 'dataset' in loader_cfg:
            for _, dataset in _datasets(loader_cfg['dataset'], loader):
                ann = dataset.get('ann_file') or ''
                if ann:
                    paths.append(osp.join(dataset.get('data_root') or '', ann))
        paths += [m['ann_file'] for _, m in _evaluators(cfg, loader) if isinstance(m.get('ann_file'), str)]
    return [p for p in dict.fromkeys(paths) if p.endswith('.json') and '://' not in p and osp.isfile(p)]


def explain_data_error(cfg, error: BaseException) -> str:
    """A message naming the file behind a data error that does not name it itself, or '' when none is found.

    A JSONDecodeError while a dataset or evaluator loads its annotations: the config's annotation files are
    parsed again to find the one that is not valid JSON."""
    import json
    if not isinstance(error, json.JSONDecodeError):
        return ''
    for path in _json_files(cfg):
        try:
            with open(path) as f:
                json.load(f)
        except json.JSONDecodeError as e:
            return f'{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})'
        except (OSError, UnicodeDecodeError) as e:
            return f'{path} could not be read as JSON ({type(e).__name__}: {e})'
    return ''


@contextlib.contextmanager
def data_errors_named(cfg, fail: Callable[[str], None]):
    """For the tools: rewrite ``cfg``'s pipelines to load images with KATLoadImageFromFile, and turn data
    errors that do not name their file (a 0-byte image, an annotation file that is not JSON) into a call of
    ``fail`` with a message that does."""
    import json

    from mmkat.datasets.transforms import UnreadableImageError, name_unreadable_images
    name_unreadable_images(cfg)
    try:
        yield
    except UnreadableImageError as e:
        fail(str(e).strip())
    except json.JSONDecodeError as e:
        message = explain_data_error(cfg, e)
        if not message:
            raise
        fail(message)
