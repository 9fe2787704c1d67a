#!/usr/bin/env bash
# mmkat: one command that sets up a working environment on a fresh Linux machine (Python >= 3.10).
#
#   bash tools/setup_env.sh
#
# It creates a virtual environment (.venv in the repository, or $MMKAT_VENV) and installs into it:
#   torch + torchvision, ninja, pytest, "setuptools<81" (mmengine resolves `mmdet::` config bases with
#   pkg_resources at run time), mmengine 0.10.7, mmcv 2.1.0 built from source WITH its ops (PyPI has no
#   wheel for modern torch; the build is cached, see below), mmdet 3.3.0, mmsegmentation 1.2.2,
#   mmpretrain 1.2.0, pycocotools, ftfy and regex (imported by mmseg without being declared), timm (the
#   tests compare KAT with timm's ViT holding the same weights), ruff (the linter tests/test_lint.py runs),
#   onnx + onnxscript + onnxruntime (tools/export.py and its test), huggingface_hub and safetensors (weights
#   from the Hugging Face Hub and .safetensors files, mmkat/hub.py),
#   and finally mmkat itself in editable mode, which compiles mmkat._C (C++ always, CUDA when a toolkit
#   is found, even without a visible GPU).
#
# It is idempotent: a second run checks what is installed and only does what is missing.
#
# Environment knobs (all optional):
#   MMKAT_VENV            where the virtual environment lives            (default: <repo>/.venv)
#   MMKAT_CACHE           where the built mmcv wheel is cached            (default: ~/.cache/mmkat)
#   PYTHON                interpreter used to create the venv            (default: python3)
#   MMKAT_TORCH           torch requirement                              (default: torch==2.14.1)
#   MMKAT_TORCHVISION     torchvision requirement                        (default: torchvision==0.29.1)
#   MMKAT_MMCV_CUDA       1/0: build mmcv's CUDA ops (default: 1 when torch sees a GPU)
#   MMKAT_WITH_CUDA       1/0: force mmkat's CUDA kernels on/off (default: on when a toolkit is found)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (mmkat's setup.py picks a default with no GPU)
#   MAX_JOBS              parallel compile jobs (default: number of cores)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMKAT_VENV:-$ROOT/.venv}
CACHE=${MMKAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmkat}
PY=${PYTHON:-python3}
TORCH_REQ=${MMKAT_TORCH:-torch==2.14.1}
TORCHVISION_REQ=${MMKAT_TORCHVISION:-torchvision==0.29.1}
MMCV_VERSION=2.1.0
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

say() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

# ---------------------------------------------------------------------------------------------- venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment at $VENV"
  "$PY" -m venv "$VENV" || die "could not create a venv with $PY (on Debian: apt-get install python3-venv)"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || die "Python >= 3.10 is required, $VPY is $("$VPY" -V 2>&1)"
pipi() { "$VPY" -m pip install --disable-pip-version-check "$@"; }

# Are these requirements already satisfied? (a fast check, so that a second run is quick)
satisfied() {
  "$VPY" - "$@" <<'EOF'
import sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
EOF
}

# ------------------------------------------------------------------------------------ torch + tools
BASE_REQS=("$TORCH_REQ" "$TORCHVISION_REQ" "setuptools<81" "wheel" "packaging" "ninja" "pytest")
if satisfied "${BASE_REQS[@]}"; then
  say "torch, torchvision and build tools already installed"
else
  say "installing ${BASE_REQS[*]} (torch is large: a few minutes)"
  pipi -q packaging
  pipi -q "${BASE_REQS[@]}"
fi

# ------------------------------------------------------------------------------- mmcv (built once)
read -r TORCH_VERSION TORCH_CUDA PYTAG GPU_VISIBLE < <("$VPY" -c '
import sys, torch
print(torch.__version__.split("+")[0], (torch.version.cuda or "cpu").replace(".", ""),
      f"cp{sys.version_info[0]}{sys.version_info[1]}", int(torch.cuda.is_available()))')
MMKAT_MMCV_CUDA=${MMKAT_MMCV_CUDA:-$GPU_VISIBLE}
OPS_KIND=cpuops; [ "$MMKAT_MMCV_CUDA" = 1 ] && OPS_KIND=cudaops
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-cu$TORCH_CUDA-$PYTAG-$OPS_KIND"

mmcv_ok() {
  satisfied "mmcv==$MMCV_VERSION" && "$VPY" -c 'import mmcv.ops' >/dev/null 2>&1
}
if mmcv_ok; then
  say "mmcv $MMCV_VERSION with ops already installed"
else
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    say "building mmcv $MMCV_VERSION with $OPS_KIND against torch $TORCH_VERSION (once; about 5-11 min)"
    SRC_DIR="$CACHE/src"
    mkdir -p "$SRC_DIR"
    if [ ! -f "$SRC_DIR/mmcv-$MMCV_VERSION.tar.gz" ]; then
      # --no-build-isolation: pip prepares the sdist's metadata with the venv's torch.
      "$VPY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$SRC_DIR"
    fi
    BUILD_DIR=$(mktemp -d)
    trap 'rm -rf "$BUILD_DIR"' EXIT
    tar xzf "$SRC_DIR/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD_DIR"
    # torch >= 2.10's headers need C++20; mmcv 2.1.0 asks for C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$BUILD_DIR/mmcv-$MMCV_VERSION/setup.py"
    mkdir -p "$WHEEL_DIR.partial"
    # A compiler that finds only the static libstdc++ links a private copy of the C++ runtime into an extension,
    # which then breaks inside torch (docs/op.md, "Building"); mmkat's setup.py gives such a compiler the
    # system's shared libstdc++.so.6, and mmcv's build gets it here, through LDFLAGS.
    LIBSTDCXX=$(cd "$ROOT" && "$VPY" -c 'import importlib.util as u
s = u.spec_from_file_location("mmkat_setup", "setup.py"); m = u.module_from_spec(s); s.loader.exec_module(m)
print(" ".join(m._libstdcxx_link_args(m._link_drivers())))') || die "no shared C++ runtime for mmcv's build (above)"
    (
      cd "$BUILD_DIR/mmcv-$MMCV_VERSION"
      export MMCV_WITH_OPS=1
      if [ -n "$LIBSTDCXX" ]; then export LDFLAGS="${LDFLAGS:-} -Wl,--no-as-needed $LIBSTDCXX -Wl,--as-needed"; fi
      # Python's CFLAGS replace the defaults, -O3 included: give them back, without debug info.
      export CFLAGS="-DNDEBUG -O3 -g0" CXXFLAGS="-DNDEBUG -O3 -g0"
      if [ "$OPS_KIND" = cudaops ]; then export FORCE_CUDA=1; else export FORCE_CUDA=0; fi
      "$VPY" -m pip wheel -q --no-build-isolation --no-deps -w "$WHEEL_DIR.partial" .
    )
    rm -rf "$WHEEL_DIR"
    mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
    say "cached $(ls "$WHEEL_DIR"/mmcv-*.whl)"
  else
    say "using the cached mmcv wheel in $WHEEL_DIR"
  fi
  pipi -q --force-reinstall --no-deps "$WHEEL_DIR"/mmcv-*.whl
fi

# ------------------------------------------------------------------ the OpenMMLab stack and friends
MM_REQS=("mmengine==0.10.7" "mmcv==$MMCV_VERSION" "mmdet==3.3.0" "mmsegmentation==1.2.2" "mmpretrain==1.2.0"
         "pycocotools" "ftfy" "regex" "matplotlib" "numpy<2" "timm==1.0.22" "ruff==0.17.6"
         "onnx==1.23.2" "onnxscript==0.7.2" "onnxruntime==1.32.0" "huggingface_hub==2.4.0" "safetensors==0.8.0")
if satisfied "${MM_REQS[@]}"; then
  say "mmengine, mmdet, mmsegmentation, mmpretrain already installed"
else
  say "installing ${MM_REQS[*]}"
  # The torch pins keep pip from touching the installed torch while it resolves.
  pipi -q "$TORCH_REQ" "$TORCHVISION_REQ" "setuptools<81" "${MM_REQS[@]}" --find-links "$WHEEL_DIR"
fi

# ------------------------------------------------------------------------------- mmkat and its _C
build_ok() {
  # Installed (editable) from this checkout, and the extension imports with this torch. Run from / so that
  # the checkout itself is not on sys.path.
  (cd / && "$VPY" - "$ROOT" <<'EOF' >/dev/null 2>&1)
import os, sys
from importlib import metadata
metadata.version('mmkat')
import mmkat
from mmkat.ops import extension_info
info = extension_info()
assert os.path.realpath(os.path.dirname(mmkat.__file__)) == os.path.realpath(os.path.join(sys.argv[1], 'mmkat'))
assert info['loaded'], info
src = os.path.join(sys.argv[1], 'csrc')
newest = max(os.path.getmtime(os.path.join(src, f)) for f in os.listdir(src))
newest = max(newest, os.path.getmtime(os.path.join(sys.argv[1], 'setup.py')))
assert os.path.getmtime(info['path']) >= newest, 'sources changed since the build'
EOF
}
if build_ok; then
  say "mmkat and mmkat._C already built for this torch"
else
  say "building mmkat._C and installing mmkat (editable)"
  (cd "$ROOT" && pipi -q --no-build-isolation --no-deps -e .)
fi

"$VPY" - <<'EOF'
import torch, mmcv, mmengine, mmdet, mmseg, mmpretrain
import mmcv.ops  # noqa: F401  (RoIAlign / NMS are needed by Mask R-CNN)
import mmkat
from mmkat.ops import extension_info
info = extension_info()
print(f"[setup_env] torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}")
print(f"[setup_env] mmkat {mmkat.__version__}: _C loaded={info['loaded']} with_cuda={info['with_cuda']} "
      f"cuda_archs={info['cuda_archs']}")
if not info['loaded']:
    raise SystemExit(f"[setup_env] ERROR: mmkat._C did not load: {info['error']}")
EOF
say "done in $(( $(date +%s) - t0 )) s. Activate with: source ${VENV#$ROOT/}/bin/activate"
