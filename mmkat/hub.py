"""Where weights come from: local files, URLs, the Hugging Face Hub and mmkat's weight names.

A weights reference (``init_cfg=dict(type='Pretrained', checkpoint=REF)``, ``load_from = REF``, the tools'
CHECKPOINT argument, mmpretrain's ``get_model(name, pretrained=REF)``) is one of:

- a local file: ``.pth`` / ``.bin`` read with ``torch.load(weights_only=True)``, or ``.safetensors`` read
  with ``safetensors`` (no pickle at all; the format is recognised by its content, not its name);
- an ``http://`` / ``https://`` URL: downloaded once, with a progress bar, into the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/<file name>``, the place torch and mmengine use) and read from there after;
- ``hf_hub:OWNER/REPO[/FILE][@REVISION]`` (or timm's spelling ``hf-hub:``): through ``huggingface_hub``,
  which honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and its cache (``HF_HOME``); without FILE,
  ``model.safetensors`` and then ``pytorch_model.bin`` are tried;
- a weights name of ``configs/kat/metafile.yml`` (``kat-small-p16_3rdparty_in1k``, ...): its ``Weights`` URL.
  ``MMKAT_WEIGHTS_MIRROR=BASE_URL`` fetches named weights from ``BASE_URL/<file name>`` instead (a mirror
  that serves the same files).

A file whose name carries a digest is checked before use, downloaded or cached: the authors' names end in
``_<64 hex>.pth`` (taken as the sha256 of the file), torch.hub's in ``-<8 or more hex>.pth`` (a prefix of
it). A mismatch is refused naming the URL, both digests and the opt-out (``check_digest=False``).
A file already in the cache is used without any network access; a download that fails names the URL and
the path to put the file at by hand.

``import mmkat`` also registers these references with mmengine's ``CheckpointLoader`` (weights names,
``hf_hub:``, URLs whose file name carries a full sha256, the named weights' URLs and ``.safetensors``
files), so ``load_from``, mmpretrain's ``get_model`` and the OpenMMLab inferencers take them too; a
released (timm-layout) state dict read that way is given the OpenMMLab layout (``backbone.`` + the
classifier as ``head.fc``).
"""
import contextlib
import hashlib
import os
import os.path as osp
import re
import urllib.error
import urllib.parse
from typing import Dict, Optional, Tuple

import torch

ENV_MIRROR = 'MMKAT_WEIGHTS_MIRROR'
HF_PREFIXES = ('hf_hub:', 'hf-hub:')
HF_DEFAULT_FILES = ('model.safetensors', 'pytorch_model.bin')
_FULL_DIGEST = re.compile(r'_([0-9a-f]{64})\.[A-Za-z0-9]+$')     # the authors' file names
_PREFIX_DIGEST = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')  # torch.hub's convention
_names: Optional[Dict[str, str]] = None


class WeightsError(RuntimeError):
    """Weights that could not be found, downloaded or verified; the message says what to do."""


# ------------------------------------------------------------------------------------------------ names
def weight_names() -> Dict[str, str]:
    """mmkat's weights names and their URLs (the ``Weights`` entries of ``configs/kat/metafile.yml``)."""
    global _names
    if _names is None:
        names = {}
        from mmkat.utils.model_index import CLS_METAFILE
        if osp.isfile(CLS_METAFILE):
            import yaml
            with open(CLS_METAFILE) as f:
                index = yaml.safe_load(f) or {}
            for model in index.get('Models', []):
                if model.get('Weights'):
                    names[model['Name']] = model['Weights']
        _names = names
    return _names


def name_url(name: str) -> str:
    """The URL a weights name is fetched from (its ``Weights`` URL, or the mirror's copy of that file)."""
    return mirrored(weight_names()[name])


def mirrored(url: str) -> str:
    """A named weights' URL moved to ``$MMKAT_WEIGHTS_MIRROR`` when that is set; other URLs unchanged."""
    mirror = os.environ.get(ENV_MIRROR, '').strip()
    if mirror and url in weight_names().values():
        return mirror.rstrip('/') + '/' + url_file_name(url)
    return url


def url_file_name(url: str) -> str:
    return osp.basename(urllib.parse.urlparse(url).path)


# ----------------------------------------------------------------------------------------------- digests
def expected_digest(file_name: str) -> Optional[str]:
    """The sha256 (or a prefix of it) that a file name carries, else None."""
    match = _FULL_DIGEST.search(file_name) or _PREFIX_DIGEST.search(file_name)
    return match.group(1) if match else None


_checked: Dict[Tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: each file is hashed once a process


def sha256sum(path: str) -> str:
    """The sha256 of the file at ``path``; a file whose size and modification time are unchanged is not read
    again (the tools check a file before the model loads it)."""
    stat = os.stat(path)
    key = (osp.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 22), b''):
                digest.update(block)
        _checked[key] = digest.hexdigest()
    return _checked[key]


def verify_digest(path: str, origin: str, file_name: Optional[str] = None) -> None:
    """Refuse ``path`` when its name (or ``file_name``) carries a digest its bytes do not have."""
    expected = expected_digest(file_name or osp.basename(path))
    if expected is None:
        return
    actual = sha256sum(path)
    if not actual.startswith(expected):
        raise WeightsError(
            f'{origin}: the file does not have the sha256 its name carries (expected {expected}, got {actual}; '
            f'file {path}). It is not the published file, or it was damaged on the way. If you have verified '
            "it another way, pass check_digest=False (init_cfg=dict(type='Pretrained', checkpoint=..., "
            'check_digest=False), or mmkat.hub.resolve(..., check_digest=False)).')


# ------------------------------------------------------------------------------------------------- cache
def cache_dir() -> str:
    """Where downloaded weights are kept: torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


@contextlib.contextmanager
def _file_lock(path: str):
    """One download of a file at a time on this machine (ranks and runs that start together wait for it)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: downloads may repeat, the atomic rename keeps the file whole
        yield
        return
    with open(path, 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(url: str, check_digest: bool = True, progress: bool = True) -> str:
    """The local copy of ``url`` in :func:`cache_dir`, downloaded when it is not there yet."""
    name = url_file_name(url)
    if not name:
        raise WeightsError(f'{url}: the URL names no file (expected .../<file name>.pth or .safetensors)')
    folder = cache_dir()
    dst = osp.join(folder, name)
    if not osp.isfile(dst):
        os.makedirs(folder, exist_ok=True)
        with _file_lock(osp.join(folder, f'.{name}.lock')):
            if not osp.isfile(dst):  # another process may have fetched it while this one waited
                _fetch(url, dst, progress)
    if check_digest:
        verify_digest(dst, url)
    return dst


def _fetch(url: str, dst: str, progress: bool) -> None:
    # torch.hub writes to a temporary file beside dst, moves it into place when complete and removes it on failure
    try:
        torch.hub.download_url_to_file(url, dst, progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as err:
        if isinstance(err, urllib.error.HTTPError):
            reason = f'HTTP {err.code} {err.reason}'
        else:
            reason = f'{type(err).__name__}: {getattr(err, "reason", None) or err}'
        raise WeightsError(
            f'could not download {url} ({reason}). Without network access, download it '
            f'elsewhere and put it at {dst} (the cache folder is $TORCH_HOME/hub/checkpoints); a file there is '
            'used without any network access.') from None


def parse_hf_reference(ref: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``hf_hub:OWNER/REPO[/FILE][@REVISION]`` -> (repo id, file or None, revision or None)."""
    body = ref.split(':', 1)[1]
    revision = None
    if '@' in body:
        body, revision = body.rsplit('@', 1)
    parts = [p for p in body.split('/') if p]
    if len(parts) < 2 or revision == '':
        raise WeightsError(f'{ref!r}: expected hf_hub:OWNER/REPO[/FILE][@REVISION]')
    return '/'.join(parts[:2]), '/'.join(parts[2:]) or None, revision


def hf_download(ref: str, check_digest: bool = True) -> str:
    """The local copy of a Hugging Face Hub file (``hf_hub:`` reference) in huggingface_hub's cache."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as err:
        raise WeightsError(f'{ref}: reading weights from the Hugging Face Hub needs huggingface_hub '
                           f'(pip install huggingface_hub): {err}') from None
    repo_id, file_name, revision = parse_hf_reference(ref)
    candidates = (file_name, ) if file_name else HF_DEFAULT_FILES
    for i, candidate in enumerate(candidates):
        try:
            path = huggingface_hub.hf_hub_download(repo_id, candidate, revision=revision)
        except LocalEntryNotFoundError as err:  # offline, or the endpoint cannot be reached, and not cached
            endpoint = huggingface_hub.constants.ENDPOINT
            raise WeightsError(
                f'{ref}: {candidate} of {repo_id} is not in the Hugging Face cache and could not be downloaded from '
                f'{endpoint} ({type(err).__name__}). Without network access, download it elsewhere (e.g. '
                f'`hf download {repo_id} {candidate}`) into this machine\'s Hugging Face cache '
                f'({huggingface_hub.constants.HF_HUB_CACHE}), or put the file on disk and pass its path.') from None
        except EntryNotFoundError:
            if i + 1 < len(candidates):
                continue
            raise WeightsError(f'{ref}: the repository {repo_id} has no {" or ".join(candidates)}') from None
        except Exception as err:  # noqa: BLE001  (repository not found, revision not found, HTTP errors)
            raise WeightsError(f'{ref}: could not fetch {candidate} of {repo_id}'
                               f'{"@" + revision if revision else ""} ({type(err).__name__}: '
                               f'{str(err).splitlines()[0] if str(err) else ""})') from None
        if check_digest:
            verify_digest(path, ref, candidate)
        return path
    raise AssertionError('unreachable')


# ------------------------------------------------------------------------------------------------- resolve
def is_remote(ref) -> bool:
    """Does ``ref`` name weights that :func:`resolve` fetches (URL, ``hf_hub:``, weights name)?"""
    return isinstance(ref, str) and (ref.startswith(('http://', 'https://') + HF_PREFIXES) or ref in weight_names())


def resolve(ref: str, check_digest: bool = True, progress: bool = True) -> str:
    """The local file of a weights reference (see the module doc), downloading and verifying it if needed."""
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f'a weights reference must be a path, URL, hf_hub: name or weights name, got {ref!r}')
    ref = os.fspath(ref)
    if osp.isfile(ref):
        if check_digest:
            verify_digest(ref, ref)
        return ref
    if ref.startswith(HF_PREFIXES):
        return hf_download(ref, check_digest)
    if ref.startswith(('http://', 'https://')):
        return download(mirrored(ref), check_digest, progress)
    if ref in weight_names():
        return download(name_url(ref), check_digest, progress)
    hint = ''
    if '/' not in ref and not ref.endswith(('.pth', '.pt', '.bin', '.safetensors')):  # looks like a name
        hint = f'; the weights names are {", ".join(sorted(weight_names()))} (configs/kat/metafile.yml)'
    raise FileNotFoundError(f'checkpoint file not found: {ref!r}, and it is neither an http(s) URL, '
                            f'hf_hub:OWNER/REPO nor an mmkat weights name{hint}')


def read_weights(ref: str, map_location='cpu', check_digest: bool = True):
    """Resolve ``ref`` and read it: a ``.safetensors`` file as a dict of tensors, any other file with
    ``torch.load(weights_only=True)`` (see :func:`mmkat.models.checkpoint.load_state_dict_file`)."""
    from mmkat.models.checkpoint import load_state_dict_file
    return load_state_dict_file(resolve(ref, check_digest), map_location=map_location)


def load_checkpoint(ref: str, map_location=None, check_digest: bool = True) -> dict:
    """A checkpoint as mmengine's loaders return one: an OpenMMLab checkpoint as it is, a released KAT or timm
    ViT state dict in the OpenMMLab layout (``backbone.`` keys, the classifier as ``head.fc``)."""
    from mmkat.models.checkpoint import openmmlab_layout
    return openmmlab_layout(read_weights(ref, map_location or 'cpu', check_digest), source=str(ref))


# ------------------------------------------------------------------------------- mmengine's CheckpointLoader
def handled_by_mmkat(ref) -> bool:
    """Does mmengine's ``CheckpointLoader`` give ``ref`` to mmkat's loader (:func:`load_checkpoint`)?"""
    if not isinstance(ref, str):
        return False
    register_checkpoint_schemes()
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader._get_checkpoint_loader(ref) is load_from_mmkat_hub


def load_from_mmkat_hub(filename: str, map_location=None) -> dict:
    """mmengine CheckpointLoader backend (mmengine logs it as 'mmkat_hub')."""
    return load_checkpoint(filename, map_location)


_registered = False


def register_checkpoint_schemes() -> None:
    """Let mmengine's ``CheckpointLoader`` (``load_from``, ``load_checkpoint``, the inferencers, mmpretrain's
    ``get_model``) read weights names, ``hf_hub:``, ``.safetensors`` files and URLs whose file name carries a
    sha256. Other URLs and local ``.pth`` files keep mmengine's own loaders."""
    global _registered
    if _registered:
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    prefixes = list(HF_PREFIXES)
    prefixes += [r'https?://.*\.safetensors$', r'.*\.safetensors$', r'https?://.*_[0-9a-f]{64}\.[A-Za-z0-9]+$']
    prefixes += [re.escape(url) + '$' for url in weight_names().values()]
    if weight_names():
        prefixes.append('(?:' + '|'.join(re.escape(n) for n in weight_names()) + ')$')
    CheckpointLoader.register_scheme(prefixes=prefixes, loader=load_from_mmkat_hub, force=True)
    _registered = True


__all__ = ['WeightsError', 'weight_names', 'resolve', 'read_weights', 'load_checkpoint', 'download', 'hf_download',
           'cache_dir', 'expected_digest', 'register_checkpoint_schemes', 'is_remote', 'handled_by_mmkat']
