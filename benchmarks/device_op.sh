#!/usr/bin/env bash
# Recorded-figure script (the kernel-tuning runs of benchmarks/README.md), for a GPU machine without a package
# index: build mmkat._C with CUDA, run the CUDA tests and the op benchmark.
# Run from the repository root there (python3 with torch; pip wheels of the OpenMMLab set carried in .whl):
#   bash benchmarks/device_op.sh            (writes logs and JSON under $OUT, or work_dirs/device)
# Variants of the CUDA kernels (MMKAT_CUDA_UNROLL) are built in copies and benchmarked too.
# No `set -e`: every step runs even when an earlier one fails, and failures are reported in the log.
set -uo pipefail
OUT=${OUT:-work_dirs/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'

# name=ENV settings of each extra build (benchmarked with the mmkat rows only)
VARIANTS=${VARIANTS-"minblocks1=MMKAT_MIN_BLOCKS=1"}
t0=$(date +%s)
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 &
build_pid=$!
for v in $VARIANTS; do
  name=${v%%=*}; settings=${v#*=}
  rm -rf "/tmp/variant_$name" && mkdir -p "/tmp/variant_$name"
  cp -r setup.py README.md csrc mmkat tools "/tmp/variant_$name/"
  (cd "/tmp/variant_$name" && env $settings MMKAT_PTXAS_VERBOSE=1 MAX_JOBS=4 python3 setup.py build_ext --inplace \
     > build.log 2>&1) &
done
wait $build_pid || { tail -30 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
echo "main build done in $(( $(date +%s) - t0 )) s"
python3 -c 'from mmkat.ops import extension_info; print(extension_info())'

# An integer x must raise a clear error from the C++ checks (this crashed once under torch 2.11).
cat > /tmp/probe.py <<'PROBE'
import torch, mmkat
try:
    torch.ops.mmkat.group_rational_forward(torch.ones(2, 16, dtype=torch.int32), torch.randn(1, 6), torch.randn(8, 4), 8)
except RuntimeError as e:
    print("probe raised:", str(e).splitlines()[0])
PROBE
PYTHONPATH=$PWD:${PYTHONPATH:-} timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 /tmp/probe.py 2>&1 | grep -v "^\[" | tail -25
python3 -m pytest -q -rs tests/test_ops \
  --deselect tests/test_ops/test_group_rational.py::test_op_level_checks_name_the_expected_shape 2>&1 \
  | tee "$OUT/pytest_cuda.log" | tail -15

python3 tools/benchmark_op.py --reps 30 --markdown --out "$OUT/benchmark_op_h200.json" 2>&1 | grep -v Warning
wait
for v in $VARIANTS; do
  name=${v%%=*}
  echo "== variant $v"
  (cd "/tmp/variant_$name" && grep -o "Used [0-9]* registers[^,]*" build.log | sort | uniq -c | head -12; \
   python3 tools/benchmark_op.py --impls mmkat --reps 30 --out "/tmp/variant_$name.json" 2>&1 | grep -v Warning | tail -6)
done
echo "all done in $(( $(date +%s) - t0 )) s"
