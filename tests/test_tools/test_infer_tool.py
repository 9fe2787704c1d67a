"""tools/infer.py refuses, before building anything, what would overwrite a user's files."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'infer.py')
DEMO = osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')


def infer(*args, cwd):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_images_with_one_name_and_a_used_output_folder_are_refused(tmp_path):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'not read: the arguments are refused first')
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    for folder in ('a', 'b'):
        (tmp_path / folder / 'shape.png').write_bytes(b'')
    result = infer(DEMO, checkpoint, tmp_path / 'a' / 'shape.png', tmp_path / 'b' / 'shape.png', '--out',
                   tmp_path / 'out', cwd=tmp_path)
    assert result.returncode == 1 and 'several images share the name shape' in result.stderr
    assert not (tmp_path / 'out').exists()
    out = tmp_path / 'used'
    out.mkdir()
    (out / 'mine.txt').write_text('kept')
    result = infer(DEMO, checkpoint, tmp_path / 'a' / 'shape.png', '--out', out, cwd=tmp_path)
    assert result.returncode == 1 and 'already holds files' in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ['mine.txt'] and (out / 'mine.txt').read_text() == 'kept'


def test_an_unreadable_checkpoint_gets_one_line_naming_it(tmp_path):
    """A truncated file, a file that is not a checkpoint and a pickle that weights_only refuses: one line
    naming the file and exit status 1, before any model is built (no traceback)."""
    import io

    import torch

    image = tmp_path / 'shape.png'
    image.write_bytes(b'')
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.randn(64, 64)}}, buf)
    cases = {'truncated.pth': buf.getvalue()[:200], 'notes.pth': b'plain text, not a checkpoint',
             'pickled.pth': None}
    for name, data in cases.items():
        path = tmp_path / name
        if data is None:
            torch.save({'state_dict': {}, 'payload': _Unsafe()}, path)
        else:
            path.write_bytes(data)
        result = infer(DEMO, path, image, '--out', tmp_path / 'out', cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert f'{path} could not be read as a checkpoint' in result.stderr, result.stderr
        assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'out').exists()


class _Unsafe:
    pass
