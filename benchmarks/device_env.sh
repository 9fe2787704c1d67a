# Sourced by the benchmarks/device_*.sh scripts on the lent GPU machine (repository root, python3 with torch):
# installs the carried OpenMMLab wheels (.whl) into /tmp/site and builds mmkat._C in place with CUDA.
# Making .whl here (the GPU machine has no package index):
#   PYTHON=.venv/bin/python bash ../shared/tools/gpu_wheels.sh .whl      # the OpenMMLab set for Python 3.12
#   R=$PWD; (cd /tmp && tar xzf $R/.whl/mmcv-2.1.0.tar.gz && cd mmcv-2.1.0 && \
#     MMCV_WITH_OPS=0 $R/.venv/bin/pip wheel --no-deps --no-build-isolation . -w $R/.whl)    # mmcv-lite
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl importlib_metadata==8.7.0 model-index    # mmpretrain's imports
# (classification needs no mmcv ops; detection/segmentation need mmcv built with CUDA ops there.)
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
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
