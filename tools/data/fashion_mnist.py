"""Prepare Fashion-MNIST for mmpretrain's ``FashionMNIST`` dataset from Debian's ``dataset-fashion-mnist``.

The Debian package installs the four original gzip files under /usr/share/datasets/fashion-mnist. mmpretrain's
``FashionMNIST(data_root=..., download=False)`` reads them DECOMPRESSED, with the .gz suffix dropped:

    <out>/train-images-idx3-ubyte  <out>/train-labels-idx1-ubyte
    <out>/t10k-images-idx3-ubyte   <out>/t10k-labels-idx1-ubyte

Usage:
    python tools/data/fashion_mnist.py                       # from /usr/share/datasets/fashion-mnist
    python tools/data/fashion_mnist.py --src DIR --out data/fashion_mnist
    python tools/data/fashion_mnist.py --deb dataset-fashion-mnist_*_all.deb   # no root needed

Every file is validated (idx magic number, dimensions, length, labels in 0..9, as many labels as images per
split) before anything is written. Existing outputs are never silently replaced: identical files are skipped,
a differing file stops the tool unless ``--force``. Files are written to a temporary name and renamed.

Note for configs: mmpretrain 1.x picks the train or the test files from ``test_mode``, not from ``split``,
so a test dataset needs ``split='test', test_mode=True``.
"""
import argparse
import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from typing import Dict, List, Optional, Tuple

DEFAULT_SRC = '/usr/share/datasets/fashion-mnist'
DEFAULT_OUT = 'data/fashion_mnist'
DEB_MEMBER_DIR = 'usr/share/datasets/fashion-mnist/'

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
ROWS = COLS = 28
NUM_CLASSES = 10
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
           'Ankle boot')

# split -> (images file, labels file), names as mmpretrain reads them (no .gz)
SPLITS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
FILE_NAMES = [name for pair in SPLITS.values() for name in pair]

INSTALL_HINT = ('Install the Debian package with `sudo apt-get install dataset-fashion-mnist` (files land in '
                f'{DEFAULT_SRC}), or without root run `apt-get download dataset-fashion-mnist` and then '
                '`python tools/data/fashion_mnist.py --deb dataset-fashion-mnist_*_all.deb`.')


class ToolError(Exception):
    """An error reported to the user as one clear message (exit status 1)."""


# ------------------------------------------------------------------------------------------ reading
def _gunzip(raw: bytes, origin: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ToolError(f'{origin}: not a valid gzip file ({e})') from e


def read_src_dir(src: str) -> Dict[str, bytes]:
    """The four decompressed files from a directory holding NAME.gz (or, failing that, NAME itself)."""
    if not os.path.isdir(src):
        raise ToolError(f'source directory {src} does not exist. {INSTALL_HINT}')
    found, missing = {}, []
    for name in FILE_NAMES:
        gz_path, plain_path = os.path.join(src, name + '.gz'), os.path.join(src, name)
        if os.path.isfile(gz_path):
            with open(gz_path, 'rb') as f:
                found[name] = _gunzip(f.read(), gz_path)
        elif os.path.isfile(plain_path):
            with open(plain_path, 'rb') as f:
                found[name] = f.read()
        else:
            missing.append(name + '.gz')
    if missing:
        raise ToolError(f'Fashion-MNIST files missing from {src}: {", ".join(missing)}. {INSTALL_HINT}')
    return found


def _ar_members(path: str):
    """(name, bytes) of each member of an ar archive (the container format of a .deb)."""
    with open(path, 'rb') as f:
        if f.read(8) != b'!<arch>\n':
            raise ToolError(f'{path} is not a Debian package (no ar archive signature)')
        while True:
            header = f.read(60)
            if not header:
                return
            if len(header) < 60 or header[58:60] != b'`\n':
                raise ToolError(f'{path}: corrupt ar member header')
            name = header[0:16].decode('ascii', 'replace').strip().rstrip('/')
            size = int(header[48:58].decode('ascii').strip())
            data = f.read(size)
            if size % 2:
                f.read(1)  # members are padded to an even offset
            yield name, data


def _fsys_tar_from_deb(path: str) -> tarfile.TarFile:
    """The package's file-system tarball: through dpkg-deb when present, else by reading the ar archive."""
    dpkg_deb = shutil.which('dpkg-deb')
    if dpkg_deb:
        proc = subprocess.run([dpkg_deb, '--fsys-tarfile', path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode == 0:
            return tarfile.open(fileobj=io.BytesIO(proc.stdout), mode='r:')
        reason = proc.stderr.decode(errors='replace').strip()
        print(f'dpkg-deb could not read {path} ({reason}); trying to read it directly', file=sys.stderr)
    for name, data in _ar_members(path):
        if name.startswith('data.tar'):
            if name.endswith('.zst'):
                raise ToolError(f'{path}: {name} is zstd-compressed, which Python cannot read without extra '
                                'packages; install dpkg (dpkg-deb) or extract the package by hand and use --src')
            try:
                return tarfile.open(fileobj=io.BytesIO(data), mode='r:*')
            except tarfile.TarError as e:
                raise ToolError(f'{path}: cannot read {name} ({e})') from e
    raise ToolError(f'{path}: no data.tar member; is it a Debian package?')


def read_deb(path: str) -> Dict[str, bytes]:
    """The four decompressed files from the .gz members of a dataset-fashion-mnist .deb."""
    if not os.path.isfile(path):
        raise ToolError(f'package file {path} does not exist. {INSTALL_HINT}')
    found = {}
    with _fsys_tar_from_deb(path) as tar:
        for member in tar:
            member_path = member.name.lstrip('./')
            if not member_path.startswith(DEB_MEMBER_DIR) or not member.isfile():
                continue
            base = member_path[len(DEB_MEMBER_DIR):]
            if base.endswith('.gz') and base[:-3] in FILE_NAMES:
                data = tar.extractfile(member).read()
                found[base[:-3]] = _gunzip(data, f'{path}:{member_path}')
    missing = [n + '.gz' for n in FILE_NAMES if n not in found]
    if missing:
        raise ToolError(f'{path} does not hold {", ".join(DEB_MEMBER_DIR + m for m in missing)}; is it the '
                        f'dataset-fashion-mnist package? {INSTALL_HINT}')
    return found


# --------------------------------------------------------------------------------------- validation
def _header(data: bytes, name: str, magic: int, ndim: int) -> Tuple[int, ...]:
    size = 4 * (ndim + 1)
    if len(data) < size:
        raise ToolError(f'{name}: truncated idx header ({len(data)} bytes)')
    values = struct.unpack(f'>{ndim + 1}I', data[:size])
    if values[0] != magic:
        raise ToolError(f'{name}: bad idx magic number {values[0]} (0x{values[0]:08x}), expected {magic} '
                        f'(0x{magic:08x}); is this the right file?')
    return values[1:]


def validate_split(split: str, images: bytes, labels: bytes) -> List[int]:
    """Check one split's two files; return the per-class counts."""
    img_name, lbl_name = SPLITS[split]
    n_img, rows, cols = _header(images, img_name, IMAGE_MAGIC, 3)
    if (rows, cols) != (ROWS, COLS):
        raise ToolError(f'{img_name}: images are {rows}x{cols}, expected {ROWS}x{COLS}')
    expected = 16 + n_img * rows * cols
    if len(images) != expected:
        raise ToolError(f'{img_name}: {len(images)} bytes, expected {expected} for {n_img} images of '
                        f'{rows}x{cols}')
    (n_lbl, ) = _header(labels, lbl_name, LABEL_MAGIC, 1)
    if len(labels) != 8 + n_lbl:
        raise ToolError(f'{lbl_name}: {len(labels)} bytes, expected {8 + n_lbl} for {n_lbl} labels')
    if n_img != n_lbl:
        raise ToolError(f'{split} split: {n_img} images in {img_name} but {n_lbl} labels in {lbl_name}')
    counts = [0] * 256
    for value in labels[8:]:
        counts[value] += 1
    bad = [v for v in range(NUM_CLASSES, 256) if counts[v]]
    if bad:
        raise ToolError(f'{lbl_name}: labels must be in 0..{NUM_CLASSES - 1}, found {bad}')
    return counts[:NUM_CLASSES]


# ------------------------------------------------------------------------------------------ writing
def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(files: Dict[str, bytes], out: str, force: bool) -> None:
    """Write every file, or none when one existing file differs and --force is not given."""
    os.makedirs(out, exist_ok=True)
    actions = {}
    conflicts = []
    for name in FILE_NAMES:
        path = os.path.join(out, name)
        if os.path.lexists(path):
            if not os.path.isfile(path):
                raise ToolError(f'{path} exists and is not a regular file; remove it first')
            with open(path, 'rb') as f:
                same = f.read() == files[name]
            if same:
                actions[name] = 'skip'
            else:
                actions[name] = 'replace'
                conflicts.append(path)
        else:
            actions[name] = 'write'
    if conflicts and not force:
        raise ToolError(f'{", ".join(conflicts)} already exist{"s" if len(conflicts) == 1 else ""} with '
                        'different contents; nothing was written. Pass --force to replace, or choose another '
                        '--out.')
    for name in FILE_NAMES:
        path = os.path.join(out, name)
        if actions[name] == 'skip':
            print(f'skip     {path} (identical file exists)')
            continue
        _atomic_write(path, files[name])
        print(f'{"replaced" if actions[name] == "replace" else "wrote   "} {path} ({len(files[name])} bytes)')


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Decompress and check Debian\'s dataset-fashion-mnist files into the folder that '
        'mmpretrain\'s FashionMNIST(download=False) reads.')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--src', default=None,
                        help=f'directory holding the four *-ubyte.gz files (default {DEFAULT_SRC})')
    source.add_argument('--deb', default=None,
                        help='a dataset-fashion-mnist .deb (from `apt-get download dataset-fashion-mnist`)')
    parser.add_argument('--out', default=DEFAULT_OUT, help=f'output data_root (default {DEFAULT_OUT})')
    parser.add_argument('--force', action='store_true', help='replace existing output files that differ')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.deb:
            print(f'reading {args.deb}')
            files = read_deb(args.deb)
        else:
            src = args.src or DEFAULT_SRC
            print(f'reading {src}')
            files = read_src_dir(src)
        per_class = {split: validate_split(split, files[img], files[lbl]) for split, (img, lbl) in SPLITS.items()}
        write_outputs(files, args.out, args.force)
    except ToolError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1

    width = max(len(c) for c in CLASSES)
    print(f'\nFashion-MNIST in {args.out}:')
    print(f'  {"class":<{2 + width}} ' + ' '.join(f'{s:>7}' for s in SPLITS))
    for c, name in enumerate(CLASSES):
        print(f'  {c} {name:<{width}} ' + ' '.join(f'{per_class[s][c]:>7}' for s in SPLITS))
    print(f'  {"total":<{2 + width}} ' + ' '.join(f'{sum(per_class[s]):>7}' for s in SPLITS))
    print(f"\nuse: dict(type='KATFashionMNIST', data_root='{args.out}', split='train' or 'test') as the "
          "configs in configs/kat/fashion_mnist/ do (the split in one tensor, on the GPU when there is one), or "
          f"mmpretrain's dict(type='FashionMNIST', data_root='{args.out}', split='train', download=False) and, for "
          "the test set, split='test', test_mode=True (mmpretrain picks the files from test_mode)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
