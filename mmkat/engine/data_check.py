"""Say where a config expects its data, and how to get it, before a run starts loading it; refuse COCO annotation
files that do not fit their images (sizes, empty lists) and warn of annotations mmdet would drop without a word."""
import contextlib
import os
import os.path as osp
import sys
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
    parsed again to find the one that is not valid JSON. mmengine's "need at least one array to concatenate"
    (a dataset left with no samples): the dataset is found in the traceback."""
    import json
    if isinstance(error, ValueError) and 'need at least one array to concatenate' in str(error):
        return _empty_dataset(error)
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


def _worker_message(error: BaseException) -> str:
    """The message of ``error``; raised in a DataLoader worker, torch re-raises it in the main process with the
    worker's traceback in front, so only the last line (less the type) is kept."""
    text = str(error).strip()
    if 'Original Traceback' in text:
        last = text.splitlines()[-1]
        text = last.split(': ', 1)[1] if ': ' in last else last
    return text


def _empty_dataset(error: BaseException) -> str:
    """Name the dataset (type, annotation file, filter) whose frame raised ``error`` while building itself."""
    tb, dataset = error.__traceback__, None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get('self')
        if hasattr(owner, 'ann_file') and hasattr(owner, 'data_list'):
            dataset = owner
        tb = tb.tb_next
    if dataset is None:
        return ''
    filters = getattr(dataset, 'filter_cfg', None)
    return (f'the {type(dataset).__name__} of {dataset.ann_file!r} has no samples left after loading'
            + (f' and filtering (filter_cfg={dict(filters)})' if filters else '')
            + ': an empty "images" or "annotations" list, or annotations whose categories are not among the '
            "config's classes (mmengine stopped with \"need at least one array to concatenate\")")


@contextlib.contextmanager
def report_data_errors(cfg, fail: Callable[[str], None]):
    """A context manager for the tools: data errors raised inside it that do not name their file (a 0-byte
    image, an image of another size than its annotation's, an annotation file that is not JSON, a dataset left
    empty) become one call of ``fail`` with a message that does; other errors pass through unchanged. The
    config's pipelines must load images with KATLoadImageFromFile
    (:func:`mmkat.datasets.transforms.name_unreadable_images`), whose errors name the file.

    Data is read at two moments, each covered by one ``with`` block: while the runner is built (a dataset
    reads its annotation file; :func:`mmkat.engine.prepare_runner`) and while it runs (the data loaders read
    the images; around ``runner.train()`` / ``runner.test()`` in the tools). In between, the tools run checks
    of their own, whose ValueErrors are not data errors."""
    from mmkat.datasets.transforms import ImageSizeMismatchError, UnreadableImageError
    try:
        yield
    except (UnreadableImageError, ImageSizeMismatchError) as e:
        fail(_worker_message(e))
    except ValueError as e:  # json.JSONDecodeError is one
        message = explain_data_error(cfg, e)
        if not message:
            raise
        fail(message)


# --- COCO annotation files against their images ----------------------------------------------------------------

class AnnotationWarning(UserWarning):
    """Annotations that mmdet drops without a word (boxes of no extent, unknown category ids); one warning per
    kind and annotation file, with the count."""


def _coco_files(cfg, loaders: Sequence[str]) -> Dict[str, dict]:
    """The local .json annotation files the datasets (and the evaluators) of ``loaders`` read, each once:
    {normalized path: dict(path, key (the first config key that reads it), image_dirs ((folder, dataset key)
    where the datasets look for its images), annotated (a training dataset or a metric needs its annotations))}."""
    files: Dict[str, dict] = {}

    def entry(path: str, key: str) -> dict:
        return files.setdefault(osp.normpath(osp.abspath(path)),
                                dict(path=path, key=key, image_dirs=[], annotated=False))

    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if loader_cfg and 'dataset' in loader_cfg:
            for key, dataset in _datasets(loader_cfg['dataset'], f'{loader}.dataset'):
                ann = dataset.get('ann_file')
                root = dataset.get('data_root') or ''
                if not isinstance(ann, str) or not ann.endswith('.json') or '://' in osp.join(root, ann):
                    continue
                item = entry(osp.join(root, ann), key)
                prefix = dataset.get('data_prefix')
                img = (prefix.get('img') or prefix.get('img_path')) if isinstance(prefix, dict) else None
                image_dir = osp.join(root, img if isinstance(img, str) else '')
                if '://' not in image_dir and image_dir not in dict(item['image_dirs']):
                    item['image_dirs'].append((image_dir, key))
                item['annotated'] |= not dataset.get('test_mode', False)
        for key, metric in _evaluators(cfg, loader):
            ann = metric.get('ann_file')
            if isinstance(ann, str) and ann.endswith('.json') and '://' not in ann:
                entry(ann, key)['annotated'] |= not metric.get('format_only', False)
    return files


_MISSING = 'missing'


def _header_size(path: str, width: int, height: int):
    """None when the image at ``path`` is ``width`` x ``height`` (or its header cannot be read: the loader names
    such a file), :data:`_MISSING` when there is no such file, else its (width, height).

    Only the header is read: PIL's ``Image.open`` parses the format's header and leaves the pixels undecoded
    until ``load()``. The transposed size passes for an image turned by its EXIF orientation (5 to 8)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            size = image.size
            if size == (width, height):
                return None
            if size == (height, width) and image.getexif().get(0x0112) in (5, 6, 7, 8):
                return None
            return size
    except FileNotFoundError:
        return _MISSING
    except Exception:  # not an image PIL knows, unreadable, ...: the loader reports what it cannot decode
        return None


def _header_sizes(jobs: List[Tuple[str, int, int]]) -> list:
    """:func:`_header_size` of each (path, width, height); large sets in threads (opening files waits on the
    disk, which threads overlap; parsing a header is a few microseconds of Python)."""
    from PIL import Image
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # no DecompressionBomb warnings on headers
    try:
        if len(jobs) < 2048:
            return [_header_size(*job) for job in jobs]
        from concurrent.futures import ThreadPoolExecutor
        chunks = [jobs[i:i + 512] for i in range(0, len(jobs), 512)]
        with ThreadPoolExecutor(min(16, 4 * (os.cpu_count() or 1))) as pool:
            done = pool.map(lambda chunk: [_header_size(*job) for job in chunk], chunks)
            return [result for chunk in done for result in chunk]
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _side(value) -> Optional[int]:
    """A positive side length of an ``images`` entry as an int, else None (not checked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value > 0 else None


def _listed(names: List[str], shown: int) -> str:
    return '; '.join(names[:shown]) + (f'; and {len(names) - shown} more' if len(names) > shown else '')


def _count(count: int, total: int) -> str:
    return f'{count} of the {total} images' if total > 1 else 'the image'


def _be(count: int) -> str:
    return 'are' if count > 1 else 'is'


def _has(count: int) -> str:
    return 'have' if count > 1 else 'has'


def _size_problems(path: str, images: list, image_dir: str, key: str, shown: int) -> List[str]:
    jobs = []
    for image in images:
        if isinstance(image, dict) and isinstance(image.get('file_name'), str):
            width, height = _side(image.get('width')), _side(image.get('height'))
            if width and height:
                jobs.append((osp.join(image_dir, image['file_name']), width, height))
    missing, wrong = [], []
    for (file, width, height), size in zip(jobs, _header_sizes(jobs)):
        if size == _MISSING:
            missing.append(file)
        elif size is not None:
            wrong.append(f'{file} is {size[0]}x{size[1]} (width x height), its entry says {width}x{height}')
    problems = []
    if missing:
        problems.append(f'{key}: {_count(len(missing), len(jobs))} that {path} lists {_be(len(missing))} not in '
                        f'{image_dir or "."}: {_listed(missing, shown)}. Images elsewhere: '
                        f'--cfg-options {key}.data_prefix.img=DIR')
    if wrong:
        problems.append(f'{key}: {_count(len(wrong), len(jobs))} that {path} lists {_be(len(wrong))} not the size '
                        f'of {"their entries" if len(wrong) > 1 else "its entry"}: {_listed(wrong, shown)}. mmdet '
                        "would decode the masks at the entry's size and scale them by the image/entry ratio, which "
                        "can take all the memory: fix the entries' width/height, or the images")
    return problems


def _id_order(value) -> tuple:
    """Numbers first, in order, then the rest by their text."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, '') if number else (1, 0, str(value))


def _warn_dropped(path: str, annotations: list, categories) -> None:
    """One :class:`AnnotationWarning` per kind of annotation that mmdet's CocoDataset drops without a word."""
    known = ({c.get('id') for c in categories if isinstance(c, dict)} if isinstance(categories, list) else None)
    flat, strangers = [], []
    for ann in annotations:
        if not isinstance(ann, dict) or ann.get('ignore', False):
            continue
        box = ann.get('bbox')
        if isinstance(box, (list, tuple)) and len(box) == 4:
            try:
                if box[2] <= 0 or box[3] <= 0:
                    flat.append(ann)
            except TypeError:
                pass
        if known is not None and 'category_id' in ann:
            try:
                if ann['category_id'] not in known:
                    strangers.append(ann)
            except TypeError:  # an unhashable id (a list, ...): mmdet would fail on it, naming it
                pass
    total = len(annotations)
    if flat:
        first = flat[0]
        warnings.warn(f'{path}: {len(flat)} of its {total} annotations {_has(len(flat))} a box of width or height '
                      f'<= 0 (the first: id {first.get("id")}, bbox {first.get("bbox")}); mmdet drops them without '
                      'a word', AnnotationWarning, stacklevel=2)
    if strangers:
        ids = [str(i) for i in sorted({a['category_id'] for a in strangers}, key=_id_order)]
        cats = [str(i) for i in sorted(known, key=_id_order)]
        warnings.warn(f'{path}: {len(strangers)} of its {total} annotations {_has(len(strangers))} a category_id '
                      f'that is not among its categories ({", ".join(ids[:5])}{", ..." if len(ids) > 5 else ""}; '
                      f'its categories: {", ".join(cats[:10])}{", ..." if len(cats) > 10 else ""}); mmdet drops '
                      'them without a word',
                      AnnotationWarning, stacklevel=2)


def annotation_problems(cfg, loaders: Sequence[str] = ('train_dataloader', 'val_dataloader'),
                        shown: int = 3) -> List[str]:
    """One message per problem of the COCO-format annotation files (.json with an ``images`` list: mmdet's
    CocoDataset and its kin) that the datasets and evaluators of ``loaders`` read, each file parsed once:

    - an empty ``images`` list, or no ``annotations`` where a training dataset or a metric needs them (mmengine
      would stop with "need at least one array to concatenate", which names no file);
    - images that are not where the file says (the first ``shown`` named, and the count);
    - images whose size is not their entry's ``width`` x ``height`` (the first ``shown`` named with both sizes,
      and the count): mmdet decodes masks at the entry's size and rescales them by the image/entry ratio, so a
      1x1 image whose entry says 256x256 takes all the memory. Sizes come from the image headers, not from
      decoding (about 30-50 us an image with the file cache warm).

    Boxes of width or height <= 0 and category ids not among the file's categories, which mmdet drops without a
    word, give one :class:`AnnotationWarning` per kind and file, with the count. Files that do not exist, are
    not JSON or not COCO-like are left to :func:`missing_data` and the dataset.

    ``check_annotations=False`` at the top of the config skips all of it (the loader still refuses an image
    whose size is not its entry's, when it comes to it), and so does a process of torchrun's whose LOCAL_RANK
    is not 0 (each machine checks once). Cost, for a COCO train2017-sized set (118k images, a 460 MB file) on
    2 CPU cores: 18 s (parsing the JSON once, 11 s; the header reads, 4 s with the file cache warm), against
    33 s for mmdet's own load of it; for the demo scenes (400 + 60 images), 40 ms."""
    if cfg.get('check_annotations', True) is False or os.environ.get('LOCAL_RANK', '0') != '0':
        return []
    import gc
    collecting = gc.isenabled()
    gc.disable()  # the millions of objects of a large annotation file would make every collection long
    try:
        return _annotation_problems(cfg, loaders, shown)
    finally:
        if collecting:
            gc.enable()


def _annotation_problems(cfg, loaders: Sequence[str], shown: int) -> List[str]:
    import json
    problems = []
    for item in _coco_files(cfg, loaders).values():
        path, key = item['path'], item['key']
        try:
            if os.path.getsize(path) > 50 << 20:
                print(f'mmkat: checking {path} against its images (its JSON is parsed once more and the image '
                      'headers are read: seconds per 100k images; --cfg-options check_annotations=False skips '
                      'this)', file=sys.stderr, flush=True)
            with open(path, 'rb') as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get('images'), list):
            continue
        images, annotations = data['images'], data.get('annotations')
        if not images:
            problems.append(f'{key}: {path} lists no images (its "images" list is empty); mmengine would stop '
                            'with "need at least one array to concatenate"')
            continue
        if annotations is not None and not isinstance(annotations, list):
            continue
        if not annotations and item['annotated']:
            problems.append(f'{key}: {path} has no annotations (its "annotations" list is '
                            f'{"empty" if annotations == [] else "missing"}) for its {len(images)} images: nothing '
                            'to train on or evaluate against (a training set would stop with "need at least one '
                            'array to concatenate")')
        if annotations:
            _warn_dropped(path, annotations, data.get('categories'))
        for image_dir, dataset_key in item['image_dirs']:
            problems += _size_problems(path, images, image_dir, dataset_key, shown)
        del data, images, annotations
    return problems
