#!/usr/bin/env bash
# One run on a GPU machine: install (offline, no dependency resolution), check every GPU backend
# against the float64 reference on the tiny fixture and on full-size Gemma-4 shapes, then time them.
# Writes logs under ${OUT:-bench/out}.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || {
  echo "install failed"; tail -20 "$OUT/install.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -s 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m nvfp4tools verify "$(python3 -c 'from nvfp4tools.synth import synthesize; import tempfile; d=tempfile.mkdtemp(); synthesize(d+"/t"); print(d+"/t")')" --backend all 2>&1 | tee "$OUT/verify_all.log"
python3 bench/gpu_bench.py --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
python3 bench/gpu_stream_bench.py --json "$OUT/gpu_stream_bench.json" 2>&1 | tee "$OUT/gpu_stream_bench.log"
python3 bench/gpu_bench_cli.py --json-dir "$OUT" 2>&1 | tee "$OUT/gpu_bench_cli.log"
python3 bench/gpu_gemv.py --no-sweep --json "$OUT/gpu_gemv.json" 2>&1 | tee "$OUT/gpu_gemv.log"
python3 bench/gpu_gemv_mma.py --configs "1,1,0;4,1,0;4,2,0" --json "$OUT/gpu_gemv_mma.json" 2>&1 | tee "$OUT/gpu_gemv_mma.log"
python3 bench/gpu_skinny.py --ms 8,2,16 --small-sweep --json "$OUT/gpu_skinny.json" 2>&1 | tee "$OUT/gpu_skinny.log"
python3 bench/gpu_tma_sweep.py --configs "128,64,128,1,4,4,2,0,0;128,64,128,1,4,4,2,0,1;128,64,128,3,4,4,2,0,0;128,64,128,3,4,4,2,0,1" --json "$OUT/gpu_tma.json" 2>&1 | tee "$OUT/gpu_tma.log"
