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
