#!/usr/bin/env bash
# The README's picture of the demo detector's and segmentor's predictions (docs/demo_predictions.png):
# tools/infer.py with each checkpoint on validation scenes, then the input, the detector's drawing and the
# segmentor's drawing side by side, one scene per row.
#   bash benchmarks/demo_pictures.sh DET_CKPT SEG_CKPT OUT.png SCENE [SCENE ...]
# e.g. after training both demos (README): bash benchmarks/demo_pictures.sh \
#   work_dirs/mask_rcnn_kat_demo/epoch_4.pth work_dirs/upernet_kat_demo/iter_800.pth docs/demo_predictions.png \
#   data/kat_demo_scenes/images/val/000000.jpg
# PYTHON defaults to .venv/bin/python, else python3.
set -euo pipefail
det=${1:?usage: demo_pictures.sh DET_CKPT SEG_CKPT OUT.png SCENE...}
seg=${2:?}; out=${3:?}; shift 3
[ $# -gt 0 ] || { echo "demo_pictures.sh: no SCENE given" >&2; exit 2; }
[ ! -e "$out" ] || { echo "demo_pictures.sh: $out exists; not replacing it" >&2; exit 1; }
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" tools/infer.py configs/kat/demo/mask_rcnn_kat_demo.py "$det" "$@" --out "$tmp/det" --device cpu
"$PYTHON" tools/infer.py configs/kat/demo/upernet_kat_demo.py "$seg" "$@" --out "$tmp/seg" --device cpu
"$PYTHON" - "$tmp" "$out" "$@" <<'PY'
import os.path as osp, sys
from PIL import Image, ImageDraw
tmp, out, scenes = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = []
for scene in scenes:
    name = osp.basename(scene)
    rows.append([Image.open(p).convert('RGB') for p in (scene, osp.join(tmp, 'det', 'vis', name),
                                                         osp.join(tmp, 'seg', 'vis', name))])
w, h = rows[0][0].size
titles = ('input', 'Mask R-CNN + KAT (demo)', 'UperNet + KAT (demo)')
sheet = Image.new('RGB', (3 * w, 18 + len(rows) * h), 'white')
draw = ImageDraw.Draw(sheet)
for j, title in enumerate(titles):
    draw.text((j * w + 4, 3), title, fill='black')
for i, row in enumerate(rows):
    for j, picture in enumerate(row):
        sheet.paste(picture.resize((w, h)), (j * w, 18 + i * h))
sheet.save(out)
print(f'wrote {out}')
PY
