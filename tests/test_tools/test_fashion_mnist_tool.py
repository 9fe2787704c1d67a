"""tools/data/fashion_mnist.py on tiny synthetic idx files (never on /usr/share/datasets)."""
import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.conftest import idx_images, idx_labels, needs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, 'tools', 'data', 'fashion_mnist.py')
NAMES = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte']


def make_dataset(seed=0, n_train=20, n_test=10):
    """Decompressed bytes of the four files, and the arrays behind them."""
    rng = np.random.default_rng(seed)
    arrays = {
        'train': (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train)),
        'test': (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test)),
    }
    arrays['train'][1][:10] = np.arange(10)  # every class present
    files = {
        NAMES[0]: idx_images(arrays['train'][0]),
        NAMES[1]: idx_labels(arrays['train'][1]),
        NAMES[2]: idx_images(arrays['test'][0]),
        NAMES[3]: idx_labels(arrays['test'][1]),
    }
    return files, arrays


def write_src(directory, files):
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(directory, name + '.gz'), 'wb') as f:
            f.write(gzip.compress(data))
    return str(directory)


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)


def read(path):
    with open(path, 'rb') as f:
        return f.read()


@pytest.fixture
def prepared(tmp_path):
    files, arrays = make_dataset()
    src = write_src(tmp_path / 'src', files)
    out = tmp_path / 'out'
    proc = run_tool('--src', src, '--out', out)
    assert proc.returncode == 0, proc.stderr
    return dict(files=files, arrays=arrays, src=src, out=out, stdout=proc.stdout)


def test_outputs_are_the_decompressed_files(prepared):
    for name, data in prepared['files'].items():
        assert read(prepared['out'] / name) == data
    assert sorted(os.listdir(prepared['out'])) == sorted(NAMES)  # no temporary files left behind
    # the summary: per-class counts of both splits, then the totals
    rows = {}
    for line in prepared['stdout'].splitlines():
        tokens = line.split()
        if tokens and (tokens[0].isdigit() or tokens[0] == 'total') and len(tokens) >= 3:
            rows[tokens[0]] = (int(tokens[-2]), int(tokens[-1]))
    train = np.bincount(prepared['arrays']['train'][1], minlength=10)
    test = np.bincount(prepared['arrays']['test'][1], minlength=10)
    assert rows == {**{str(c): (train[c], test[c]) for c in range(10)}, 'total': (20, 10)}

@needs('mmpretrain')
def test_mmpretrain_fashion_mnist_reads_the_output(prepared):
    from mmpretrain.datasets import FashionMNIST

    for split, kwargs in (('train', {}), ('test', dict(test_mode=True))):
        images, labels = prepared['arrays'][split]
        ds = FashionMNIST(data_root=str(prepared['out']), split=split, download=False, **kwargs)
        assert len(ds) == len(labels)
        for i in (0, len(labels) - 1):
            info = ds.get_data_info(i)
            np.testing.assert_array_equal(info['img'], images[i])
            assert int(info['gt_label']) == labels[i]


def test_rerun_skips_identical_files(prepared):
    mtimes = {n: os.stat(prepared['out'] / n).st_mtime_ns for n in NAMES}
    proc = run_tool('--src', prepared['src'], '--out', prepared['out'])
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(('skip', 'wrote'))] == ['skip'] * 4
    assert {n: os.stat(prepared['out'] / n).st_mtime_ns for n in NAMES} == mtimes


def test_differing_file_stops_without_writing_anything(prepared):
    target = prepared['out'] / NAMES[1]
    other = prepared['out'] / NAMES[2]
    target.write_bytes(b'something else')
    other.unlink()  # would be written, but a conflict must stop the tool before any write
    proc = run_tool('--src', prepared['src'], '--out', prepared['out'])
    assert proc.returncode != 0
    assert str(target) in proc.stderr and '--force' in proc.stderr
    assert target.read_bytes() == b'something else'
    assert not other.exists()

    proc = run_tool('--src', prepared['src'], '--out', prepared['out'], '--force')
    assert proc.returncode == 0, proc.stderr
    assert sum(line.startswith('replaced ') for line in proc.stdout.splitlines()) == 1
    for name, data in prepared['files'].items():
        assert read(prepared['out'] / name) == data


@pytest.mark.parametrize('name,data,message', [
    (NAMES[0], idx_images(np.zeros((20, 28, 28)), magic=2052), 'magic'),
    (NAMES[1], idx_labels(np.zeros(20), magic=2051), 'magic'),
    (NAMES[1], idx_labels(np.zeros(19)), '20 images'),
    (NAMES[3], idx_labels(np.full(10, 10)), '0..9'),
    (NAMES[2], idx_images(np.zeros((10, 28, 27))), '28x28'),
    (NAMES[2], idx_images(np.zeros((10, 28, 28)))[:-1], 'bytes'),
])
def test_invalid_input_fails_clearly(tmp_path, name, data, message):
    files, _ = make_dataset()
    files[name] = data
    src = write_src(tmp_path / 'src', files)
    proc = run_tool('--src', src, '--out', tmp_path / 'out')
    assert proc.returncode != 0
    assert message in proc.stderr and name in proc.stderr
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


def test_not_gzip_fails_clearly(tmp_path):
    files, _ = make_dataset()
    src = write_src(tmp_path / 'src', files)
    (tmp_path / 'src' / (NAMES[0] + '.gz')).write_bytes(b'not gzip at all')
    proc = run_tool('--src', src, '--out', tmp_path / 'out')
    assert proc.returncode != 0 and 'gzip' in proc.stderr


@pytest.mark.parametrize('partial', [False, True])
def test_missing_source_gives_the_apt_hint(tmp_path, partial):
    src = tmp_path / 'nowhere'
    if partial:
        files, _ = make_dataset()
        del files[NAMES[3]]
        write_src(src, files)
    proc = run_tool('--src', src, '--out', tmp_path / 'out')
    assert proc.returncode != 0
    assert 'sudo apt-get install dataset-fashion-mnist' in proc.stderr
    assert 'apt-get download dataset-fashion-mnist' in proc.stderr and '--deb' in proc.stderr
    if partial:
        assert NAMES[3] + '.gz' in proc.stderr


# ------------------------------------------------------------------------------------------ --deb
def _ar_member(name: str, data: bytes) -> bytes:
    header = f'{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n'.encode()
    assert len(header) == 60
    return header + data + (b'\n' if len(data) % 2 else b'')


def _tar(entries, mode) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(path, files):
    base = './usr/share/datasets/fashion-mnist/'
    dirs = ['./', './usr/', './usr/share/', './usr/share/datasets/', base]
    data_tar = _tar([(d, None) for d in dirs] + [(base + n + '.gz', gzip.compress(d)) for n, d in files.items()] +
                    [('./usr/share/doc/dataset-fashion-mnist/copyright', b'MIT\n')], 'w:xz')
    control = b'Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\nMaintainer: t <t@t>\n' \
              b'Description: test\n test\n'
    control_tar = _tar([('./', None), ('./control', control)], 'w:gz')
    with open(path, 'wb') as f:
        f.write(b'!<arch>\n' + _ar_member('debian-binary', b'2.0\n') + _ar_member('control.tar.gz', control_tar) +
                _ar_member('data.tar.xz', data_tar))
    return str(path)


@pytest.mark.parametrize('with_dpkg_deb', [True, False])
def test_deb_source(tmp_path, with_dpkg_deb):
    if with_dpkg_deb and shutil.which('dpkg-deb') is None:
        pytest.skip('dpkg-deb is not installed')
    files, _ = make_dataset(seed=3)
    deb = make_deb(tmp_path / 'dataset-fashion-mnist_0.0-1_all.deb', files)
    env = dict(os.environ)
    if not with_dpkg_deb:  # only the pure-Python ar/tar reader can be used
        (tmp_path / 'empty').mkdir()
        env['PATH'] = str(tmp_path / 'empty')
    proc = run_tool('--deb', deb, '--out', tmp_path / 'out', env=env)
    assert proc.returncode == 0, proc.stderr
    assert 'dpkg-deb could not read' not in proc.stderr  # dpkg-deb, when used, accepted the package
    for name, data in files.items():
        assert read(tmp_path / 'out' / name) == data


def test_deb_missing_or_wrong(tmp_path):
    proc = run_tool('--deb', tmp_path / 'nope.deb', '--out', tmp_path / 'out')
    assert proc.returncode != 0 and 'apt-get download dataset-fashion-mnist' in proc.stderr
    files, _ = make_dataset()
    del files[NAMES[0]]
    deb = make_deb(tmp_path / 'other.deb', files)
    proc = run_tool('--deb', deb, '--out', tmp_path / 'out')
    assert proc.returncode != 0 and NAMES[0] + '.gz' in proc.stderr
