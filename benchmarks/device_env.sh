# Sourced by the benchmarks/device_*.sh scripts on the lent GPU machine (repository root, python3 with torch):
# installs the carried OpenMMLab wheels (.whl) into /tmp/site and builds mmkat._C in place with CUDA.
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
