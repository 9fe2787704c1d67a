#!/usr/bin/env bash
# Speed of the op and of KAT vs the ViT on a GPU machine with torch but no package index (the script that
# made benchmarks/results/speed_h200*): builds mmkat._C in place for the local GPU, runs the CUDA tests, the
# op benchmark and tools/benchmark.py. Run from the repository root; results and logs go to $OUT
# (default work_dirs/device). Needs mmengine's wheels in .whl (mmengine, addict, yapf, termcolor,
# platformdirs) where mmengine is not installed.
#   STAGE=eager   bash benchmarks/device_speed.sh   # build, CUDA tests, op benchmark, eager models + profile
#   STAGE=compile bash benchmarks/device_speed.sh   # build, torch.compile'd models
# ARCHS (default "tiny small base") and BENCH_ARGS (extra tools/benchmark.py options) narrow a run;
# PROFILE=0 drops the eager stage's kernel profile, HOST=0 its host-overhead table.
set -euo pipefail
OUT=${OUT:-work_dirs/device}
STAGE=${STAGE:-eager}
ARCHS=${ARCHS:-tiny small base}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! python3 -c 'import mmengine' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
t0=$(date +%s)
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c 'from mmkat.ops import extension_info; print(extension_info())'

if [ "$STAGE" = eager ]; then
  python3 -m pytest -q tests/test_ops tests/test_models -m cuda -p no:logging > "$OUT/pytest_cuda.log" 2>&1 \
    || echo "CUDA TESTS FAILED"
  grep -E "passed|failed|FAILED|Error" "$OUT/pytest_cuda.log" | tail -8
  if [ "${HOST:-1}" = 1 ]; then
    python3 tools/benchmark.py --host --device cuda --out "$OUT/host_cuda.json" 2>&1 | grep -v -i warn | tail -14
  fi
  python3 tools/benchmark_op.py --reps 30 --markdown --fused-forward --out "$OUT/op_h200.json" 2>&1 \
    | grep -v -i warn | tee "$OUT/benchmark_op.log" | tail -24
  profile=--profile
  [ "${PROFILE:-1}" = 1 ] || profile=
  # shellcheck disable=SC2086
  python3 tools/benchmark.py --archs $ARCHS --compile eager $profile ${BENCH_ARGS:-} \
    --out "$OUT/speed_eager.json" 2>&1 | grep -v -i warn | tee "$OUT/speed_eager.log" | tail -24
else
  for arch in $ARCHS; do  # one file per arch, so that a run cut short keeps what it measured
    # shellcheck disable=SC2086
    python3 tools/benchmark.py --archs "$arch" --compile default ${BENCH_ARGS:-} \
      --out "$OUT/speed_compile_$arch.json" 2>&1 | grep -v -i warn | tee "$OUT/speed_compile_$arch.log" | tail -8
  done
fi
echo "all done in $(( $(date +%s) - t0 )) s"
