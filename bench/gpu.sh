#!/usr/bin/env bash
# The GPU figures in one run on a GPU machine: install (offline, no dependency resolution), check
# every GPU backend against the float64 reference on full-size Gemma-4 shapes (tests/test_gpu.py)
# and on the tiny fixture (verify --backend all), then time them against cuBLAS bf16
# (bench/gpu_bench_cli.py: `nvfp4tools bench`, both timing methods). Writes logs under ${OUT:-bench/out}.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || {
  echo "install failed"; tail -20 "$OUT/install.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -s 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m nvfp4tools verify "$(python3 -c 'from nvfp4tools.synth import synthesize; import tempfile; d=tempfile.mkdtemp(); synthesize(d+"/t"); print(d+"/t")')" --backend all 2>&1 | tee "$OUT/verify_all.log"
python3 bench/gpu_bench_cli.py --json-dir "$OUT" 2>&1 | tee "$OUT/gpu_bench_cli.log"
