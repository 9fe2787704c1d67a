# Sourced by the benchmarks/device_*.sh scripts on a GPU machine without a package index (repository root, python3 with torch):
# installs the carried OpenMMLab wheels (.whl) into /tmp/site and builds mmkat._C in place with CUDA.
# Making .whl here (the GPU machine has no package index):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl mmengine==0.10.7 addict yapf termcolor platformdirs   # and so on
#   R=$PWD; (cd /tmp && tar xzf $R/.whl/mmcv-2.1.0.tar.gz && cd mmcv-2.1.0 && \
#     MMCV_WITH_OPS=0 $R/.venv/bin/pip wheel --no-deps --no-build-isolation . -w $R/.whl)    # mmcv-lite
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl importlib_metadata==8.7.0 model-index    # mmpretrain's imports
# (classification needs no mmcv ops; detection/segmentation need mmcv built with CUDA ops there.)
# MMCV_OPS=1: also provide mmcv 2.1.0 with its CUDA ops (RoIAlign, NMS, ...; mmdet and mmseg import them), ahead of
# the mmcv-lite wheel on PYTHONPATH: unpacked from a carried build (.whl/mmcv_ops_*.tgz.part-*, made by an earlier
# run: the parts of $OUT/mmcv_ops_<torch>_sm<arch>.tgz.part-*), else built from .whl/mmcv-2.1.0.tar.gz in the
# background while mmkat builds (~5 min on 16 cores), and then packed into $OUT in parts of 15 MB for later runs.
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-work_dirs/device}
mkdir -p "$OUT"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  2>&1 | grep -v "already exists"
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # mmkat is built in place
# mmpretrain 1.2.0 imports its BLIP models when it sees transformers >= 4.28; with the machine's transformers 5
# that import fails (PreTrainedModel changed) and mmpretrain's registry never loads. Shadow transformers' version
# for mmpretrain's check only (an empty dist-info that sorts first on the path); transformers itself is untouched.
mkdir -p /tmp/site/transformers-0.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: transformers\nVersion: 0.0.0\n' > /tmp/site/transformers-0.0.0.dist-info/METADATA
python3 -c 'import mmpretrain.registry, mmpretrain.models' > /tmp/import.log 2>&1 || { tail -5 /tmp/import.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$(date +%s)
MMCV_DIR=/tmp/mmcv-2.1.0
mmcv_key=mmcv_ops_$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')_sm${TORCH_CUDA_ARCH_LIST//./}
mmcv_pid=
if [ -n "${MMCV_OPS:-}" ]; then
  mkdir -p $MMCV_DIR
  if ls .whl/${mmcv_key}.tgz.part-* > /dev/null 2>&1; then
    cat .whl/${mmcv_key}.tgz.part-* | tar xzf - -C $MMCV_DIR && echo "mmcv ops: unpacked the carried $mmcv_key"
  else
    ( tar xzf .whl/mmcv-2.1.0.tar.gz -C /tmp && cd $MMCV_DIR && sed -i 's/-std=c++17/-std=c++20/g' setup.py &&
      MMCV_WITH_OPS=1 FORCE_CUDA=1 python3 setup.py build_ext --inplace > /tmp/mmcv_build.log 2>&1 ) &
    mmcv_pid=$!
  fi
fi
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
if [ -n "$mmcv_pid" ]; then
  wait $mmcv_pid || { tail -30 /tmp/mmcv_build.log; exit 1; }
  echo "mmcv ops build: $(( $(date +%s) - t0 )) s"
  tar czf - -C $MMCV_DIR mmcv | split -b 15m - "$OUT/${mmcv_key}.tgz.part-"
fi
if [ -n "${MMCV_OPS:-}" ]; then
  export PYTHONPATH=$MMCV_DIR:$PYTHONPATH
  python3 -c 'import mmcv, mmcv.ops, torch; from mmcv.ops import nms; print("mmcv", mmcv.__version__, "ops ok")' || exit 1
fi
