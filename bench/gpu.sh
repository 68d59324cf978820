#!/usr/bin/env bash
# The GPU figures in one run on a GPU machine: install (offline, no dependency resolution); build
# llama.cpp's ggml with CUDA for the `ggml-cuda` backend (bench/build_ggml_cuda.sh; skipped when
# NVFP4TOOLS_GGML_LIB_DIR or .cache/ggml-cuda/lib already holds a build, or .cache/ggml-cuda-pack
# holds one packed by `build_ggml_cuda.sh --pack`) and vLLM's Marlin FP4 GEMM for `vllm-marlin`
# (bench/build_marlin_fp4.sh, from .cache/vllm-marlin-src); check every GPU backend against the
# float64 reference on full-size Gemma-4 shapes, planted faults and upstream checkpoints
# (tests/test_gpu.py, tests/test_gpu_marlin.py), `verify --backend all` on the tiny fixture and on
# the upstream checkpoints (ModelOpt NVFP4, its compressed-tensors conversion, llama.cpp's NVFP4 and
# Q4_0 GGUFs, from tests/oracles/families.py in .cache/gpu-fixtures/llama), then time them against
# cuBLAS bf16 (bench/gpu_bench_cli.py: `nvfp4tools bench`, both timing methods). Logs under
# ${OUT:-bench/out} (PACK=FILE also tars them after each step). Carry: .cache/ggml-cuda-pack (or .cache/ggml-src), .cache/vllm-marlin-src,
# .cache/gpu-fixtures, .cache/whl.
# TUNE=1 first sweeps the MMA GEMM at M = 128 on the ten Gemma-4-26B shapes (bench/tune_mma.py
# --write-table, TUNE_BUDGET_S seconds of timing per shape, 10 by default) and records this GPU's
# best configs in kernels_ref/gpu/mma_tuned.json (copied to $OUT), so that everything after it runs
# them; it times `bench` under graph timing only, to stay inside one 10-minute command.
# NVFP4TOOLS_COMMIT names the commit in the table's entries. TUNE_MS (128 by default) are the M the
# sweep records (the table is per M bucket, the power of two at or above M); TUNE_ONLY=1 then skips
# the tests and verify and benches the Triton kernel alone at BENCH_MS (1,16,128 by default).
# TUNE_LIMIT_S (240 by default) bounds the sweep; the shapes recorded before it stay.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
T0=$(date +%s)
# PACK=FILE: after every step, the logs so far as one tarball (a GPU machine that returns few files,
# or a command stopped at its time limit, still brings back everything up to the last step)
stamp() {
  echo "[gpu.sh] $1: $(( $(date +%s) - T0 )) s"
  if [[ -n "${PACK:-}" ]]; then tar czf "$PACK.part" -C "$OUT" . 2>/dev/null && mv "$PACK.part" "$PACK"; fi
}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || {
  echo "install failed"; tail -20 "$OUT/install.log"; }
if ! python3 -c "import gguf" 2>/dev/null && ls .cache/whl/gguf-*.whl >/dev/null 2>&1; then
  # gguf-py (a core dependency) from a carried wheel where the machine has no index
  python3 -m pip install -q --no-index --no-deps --target /tmp/nvfp4tools-site .cache/whl/gguf-*.whl >>"$OUT/install.log" 2>&1
  export PYTHONPATH=/tmp/nvfp4tools-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ -z "${NVFP4TOOLS_GGML_LIB_DIR:-}" || ! -f "${NVFP4TOOLS_GGML_LIB_DIR}/libggml-cuda.so" ]]; then
  if [[ ! -f .cache/ggml-cuda/lib/libggml-cuda.so ]] && ls .cache/ggml-cuda-pack/ggmllib.part.* >/dev/null 2>&1; then
    bash bench/build_ggml_cuda.sh --unpack .cache/ggml-cuda-pack   # an earlier build on this kind of GPU
  fi
  if [[ -f .cache/ggml-cuda/lib/libggml-cuda.so ]]; then
    echo "ggml-cuda: using the build in .cache/ggml-cuda/lib"
  elif [[ -f .cache/ggml-src/src/ggml-cuda/ggml-cuda.cu ]]; then
    bash bench/build_ggml_cuda.sh >"$OUT/ggml_build.log" 2>&1; tail -2 "$OUT/ggml_build.log"
  else
    echo "ggml-cuda: no sources in .cache/ggml-src (bash bench/build_ggml_cuda.sh --fetch-src); its tests skip"
  fi
  export NVFP4TOOLS_GGML_LIB_DIR=$PWD/.cache/ggml-cuda/lib
fi
if [[ -z "${NVFP4TOOLS_MARLIN_LIB:-}" && ! -f .cache/vllm-marlin/libnvfp4tools_marlin.so ]]; then
  if [[ -d .cache/vllm-marlin-src/csrc ]]; then
    bash bench/build_marlin_fp4.sh >"$OUT/marlin_build.log" 2>&1; tail -2 "$OUT/marlin_build.log"
  else
    echo "vllm-marlin: no sources in .cache/vllm-marlin-src (bash bench/build_marlin_fp4.sh --fetch-src); its tests skip"
  fi
fi
stamp "installed and built"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
TIMINGS=graph,single
if [[ "${TUNE:-0}" == 1 ]]; then
  # the shared split-K sum waits on its peers: a first launch of it under a time limit, and the
  # sweep leaves it out if that does not come back
  NR=
  timeout 60 python3 bench/tune_mma.py --ms 128 --shapes 2816x2112 --confirm 0 \
    --configs "128,64,128,3,4,3,2,0,0,1;128,128,64,6,8,3,2,1,0,1" >"$OUT/tune_smoke.log" 2>&1 || NR=--no-reduce1
  echo "shared split-K sum smoke: ${NR:-ok}"
  export NVFP4TOOLS_COMMIT=${NVFP4TOOLS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted tree")}
  # the shapes below 1.0x cuBLAS bf16 first: a sweep cut off by the limit has recorded those
  timeout "${TUNE_LIMIT_S:-240}" python3 bench/tune_mma.py --ms "${TUNE_MS:-128}" --budget-s "${TUNE_BUDGET_S:-10}" \
    --ab-scales --write-table $NR \
    --shapes 2816x704,704x2816,1024x2816,2816x2112,2112x2816,2048x2816,4096x2816,2816x4096,8192x2816,2816x8192 \
    --json "$OUT/tune.json" >"$OUT/tune.log" 2>&1
  echo "tune_mma.py exit $? (124: cut off at ${TUNE_LIMIT_S:-240} s; the shapes recorded before it stay)"
  grep -E "^[0-9]+x[0-9]+ M=|compiled|confirmed|recorded|word-read" "$OUT/tune.log"
  cp kernels_ref/gpu/mma_tuned.json "$OUT/"
  TIMINGS=graph
  stamp "tune_mma.py --write-table"
fi
if [[ "${TUNE_ONLY:-0}" == 1 ]]; then
  python3 bench/gpu_bench_cli.py --json-dir "$OUT" --timings graph --backend triton --ms "${BENCH_MS:-1,16,128}" 2>&1 \
    | tee "$OUT/gpu_bench_cli.log"
  rc=${PIPESTATUS[0]}
  stamp "bench"
  exit "$rc"
fi
python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_gpu_marlin.py -s 2>&1 | tee "$OUT/gpu_tests.log"
stamp "tests/test_gpu.py"
tiny=$(python3 -c 'from nvfp4tools.synth import synthesize; import tempfile; d=tempfile.mkdtemp(); synthesize(d+"/t"); print(d+"/t")')
echo "\$ nvfp4tools verify <tiny Gemma-4 NVFP4> --backend all" | tee "$OUT/verify_all.log"
python3 -m nvfp4tools verify "$tiny" --backend all 2>&1 | tee -a "$OUT/verify_all.log"
FIX=${NVFP4TOOLS_GPU_FIXTURES:-.cache/gpu-fixtures/llama}
if [[ -d "$FIX/modelopt_nvfp4" ]]; then
  ct=$(mktemp -d)/ct
  python3 -m nvfp4tools convert "$FIX/modelopt_nvfp4" "$ct" --to compressed-tensors >/dev/null
  for p in "$FIX/modelopt_nvfp4" "$ct" "$FIX/nvfp4.gguf" "$FIX/q4_0.gguf"; do
    echo "\$ nvfp4tools verify $p --backend all" | tee -a "$OUT/verify_all.log"
    python3 -m nvfp4tools verify "$p" --backend all 2>&1 | tee -a "$OUT/verify_all.log"
  done
fi
stamp "verify --backend all"
python3 bench/gpu_bench_cli.py --json-dir "$OUT" --timings "$TIMINGS" 2>&1 | tee "$OUT/gpu_bench_cli.log"
stamp "bench"
