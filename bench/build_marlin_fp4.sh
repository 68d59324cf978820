#!/usr/bin/env bash
# Build vLLM's Marlin GEMM for NVFP4 (W4A16: float4_e2m1f weights, float8_e4m3fn scales per 16 elements,
# a float32 global scale; bf16 and fp16 activations) as a standalone torch extension, for the
# `vllm-marlin` verify backend (kernels_ref/vllm_marlin.py). The sources are vLLM 0.26.0's own (Apache-2.0),
# csrc/libtorch_stable/quantization/marlin: the release pinned to torch 2.11, built against torch's stable
# ABI as vLLM builds it (TORCH_TARGET_VERSION 2.11), so one build loads in torch >= 2.11.
#
#   bash bench/build_marlin_fp4.sh --fetch-src   # first make .cache/vllm-marlin-src (needs the network: pip download)
#   bash bench/build_marlin_fp4.sh               # build .cache/vllm-marlin/libnvfp4tools_marlin.so (CUDA_ARCH, default this GPU's, else 90)
#   export NVFP4TOOLS_MARLIN_LIB=$PWD/.cache/vllm-marlin/libnvfp4tools_marlin.so   # what the backend loads (that path is also its default)
#
# --fetch-src copies only what the NVFP4 GEMM and the weight repack need (about 0.2 MB) and runs vLLM's own
# kernel generator (generate_kernels.py, jinja2) there, keeping only its NVFP4 instances (15 tile configurations
# per activation type: 30 of the 330 it makes), one instance per file so that a 16-core build compiles them
# in parallel; kernel_selector.h keeps only their entries. The ops are registered under the namespace
# nvfp4tools_marlin (vLLM's sources say _C; renamed in the copy) with vLLM's schemas:
# torch.ops.nvfp4tools_marlin.marlin_gemm and .gptq_marlin_repack. Nothing is installed; prints the wall time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${MARLIN_SRC:-$ROOT/.cache/vllm-marlin-src}
OUT=${MARLIN_OUT:-$ROOT/.cache/vllm-marlin}
PY=$(command -v "${PYTHON:-python3}") || { echo "${PYTHON:-python3} not found: set PYTHON to a Python 3" >&2; exit 2; }
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, symlinks kept (a venv's python stays the venv's)
VERSION=0.26.0
SHA256=23e9fa19d7e20ce7dcc1c074d41503e2116d23f19e688f5d5ea91b741f958502
M=csrc/libtorch_stable/quantization/marlin

if [[ "${1:-}" == "--fetch-src" ]]; then
  "$PY" -c "import jinja2" 2>/dev/null || { echo "$PY has no jinja2, which vLLM's generate_kernels.py needs: pip install jinja2" >&2; exit 2; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # --no-binary vllm, not :all: (which would build cmake and ninja from source for the metadata step)
  "$PY" -m pip download --no-binary vllm --no-deps -d "$tmp" "vllm==$VERSION"
  echo "$SHA256  $tmp/vllm-$VERSION.tar.gz" | sha256sum -c - >/dev/null || {
    echo "vllm-$VERSION.tar.gz does not have the pinned sha256 $SHA256: check the download" >&2; exit 1; }
  tar -xzf "$tmp/vllm-$VERSION.tar.gz" -C "$tmp"
  v="$tmp/vllm-$VERSION"
  grep -q "Apache License" "$v/LICENSE" || { echo "vllm-$VERSION's LICENSE is not Apache-2.0: stop" >&2; exit 1; }
  rm -rf "$SRC" && mkdir -p "$SRC/$M" "$SRC/csrc/core" "$SRC/csrc/libtorch_stable" "$SRC/python"
  cp "$v/LICENSE" "$SRC/"
  cp "$v/csrc/core/scalar_type.hpp" "$SRC/csrc/core/"
  cp "$v/csrc/libtorch_stable/torch_utils.h" "$SRC/csrc/libtorch_stable/"
  for f in kernel.h marlin.cu marlin.cuh marlin_dtypes.cuh marlin_mma.h marlin_template.h dequant.h \
           gptq_marlin_repack.cu generate_kernels.py; do
    cp "$v/$M/$f" "$SRC/$M/"
  done
  # the Python side the backend reimplements (read, not imported): prepare_fp4_layer_for_marlin and helpers
  cp "$v/vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py" \
     "$v/vllm/model_executor/layers/quantization/utils/marlin_utils.py" "$SRC/python/"
  # the op namespace: _C -> nvfp4tools_marlin (no clash with a vLLM loaded in the same process)
  sed -i 's/STABLE_TORCH_LIBRARY_IMPL(_C, CUDA, m)/STABLE_TORCH_LIBRARY_IMPL(nvfp4tools_marlin, CUDA, m)/' \
    "$SRC/$M/marlin.cu" "$SRC/$M/gptq_marlin_repack.cu"
  grep -q "STABLE_TORCH_LIBRARY_IMPL(nvfp4tools_marlin" "$SRC/$M/marlin.cu" || {
    echo "marlin.cu has no STABLE_TORCH_LIBRARY_IMPL(_C, CUDA, m) to rename: sources changed" >&2; exit 1; }
  # vLLM's generator writes next to itself: run it on a scratch copy (arch 8.0: the sm80 instances every
  # GPU from 8.0 to 9.x runs), keep the NVFP4 ones
  gen="$tmp/gen" && mkdir -p "$gen" && cp "$v/$M"/*.py "$v/$M"/*.h "$v/$M"/*.cuh "$gen/"
  (cd "$gen" && "$PY" generate_kernels.py 8.0)
  "$PY" - "$gen" "$SRC/$M" <<'EOF'
import re, sys
gen, dst = sys.argv[1], sys.argv[2]
NVFP4 = "vllm::kFE2M1f.id(), {c}, vllm::kFE4M3fn.id()"
n = 0
for dt in ("float16", "bfloat16"):
    text = open(f"{gen}/sm80_kernel_{dt}_fe2m1f_{dt}.cu").read()
    head = text[:text.index("namespace MARLIN_NAMESPACE_NAME {")]
    c = "vllm::kFloat16.id()" if dt == "float16" else "vllm::kBFloat16.id()"
    inst = [l for l in text.splitlines() if l.startswith("template __global__ void Marlin<") and NVFP4.format(c=c) in l]
    assert len(inst) == 15, (dt, len(inst))
    for i, line in enumerate(inst):
        with open(f"{dst}/nvfp4_{dt}_{i:02d}.cu", "w") as f:
            f.write(head + "namespace MARLIN_NAMESPACE_NAME {\n\n" + line + "\n\n}\n")
        n += 1
sel = open(f"{gen}/kernel_selector.h").read()
entries = re.findall(r"(?:else )?if \((.*?)\)\n  kernel = (.*?);\n", sel)
keep = [(c, k) for c, k in entries if "b_type == vllm::kFE2M1f" in c and "s_type == vllm::kFE4M3fn" in c]
assert len(keep) == n, (len(keep), n)
out = sel[:sel.index("if (")] + "".join(
    f"{'if' if i == 0 else 'else if'} ({c})\n  kernel = {k};\n" for i, (c, k) in enumerate(keep))
open(f"{dst}/kernel_selector.h", "w").write(out)
print(f"{n} NVFP4 Marlin instances of {len(entries)} generated")
EOF
  cat > "$SRC/SOURCE" <<EOF
vllm $VERSION sdist from PyPI (vllm-$VERSION.tar.gz, sha256 $SHA256), Apache-2.0 (LICENSE)
$M: kernel.h marlin.cu marlin.cuh marlin_dtypes.cuh marlin_mma.h marlin_template.h dequant.h gptq_marlin_repack.cu generate_kernels.py
csrc/core/scalar_type.hpp csrc/libtorch_stable/torch_utils.h; python/: marlin_utils_fp4.py marlin_utils.py (read only)
changes: STABLE_TORCH_LIBRARY_IMPL(_C, ...) -> (nvfp4tools_marlin, ...) in marlin.cu and gptq_marlin_repack.cu;
generated by generate_kernels.py 8.0, kept: the kFE2M1f x kFE4M3fn instances (nvfp4_*.cu, one per file) and their kernel_selector.h entries
EOF
  echo "sources in $SRC ($(du -sh "$SRC" | cut -f1))"
  exit 0
fi

[[ -f "$SRC/$M/marlin.cu" && -f "$SRC/$M/kernel_selector.h" ]] || {
  echo "no vLLM Marlin sources in $SRC: run 'bash bench/build_marlin_fp4.sh --fetch-src' on a machine with the network" >&2
  exit 2; }
command -v nvcc >/dev/null || { echo "nvcc not found: the CUDA toolkit is needed" >&2; exit 2; }
"$PY" -c "import torch" 2>/dev/null || { echo "$PY cannot import torch: run with the Python that has it (PYTHON=...)" >&2; exit 2; }
command -v ninja >/dev/null || { echo "ninja not found: torch.utils.cpp_extension needs it (pip install ninja)" >&2; exit 2; }
if [[ -z "${CUDA_ARCH:-}" ]]; then
  CUDA_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ' || true)
  CUDA_ARCH=${CUDA_ARCH:-90}
fi
CUDA_ARCH=${CUDA_ARCH//./}
[[ "$CUDA_ARCH" =~ ^(8[0-9]|9[0-9])$ ]] || {
  echo "CUDA_ARCH=$CUDA_ARCH: vLLM runs Marlin for NVFP4 on compute capability 8.0-9.x; set CUDA_ARCH to one of those" >&2; exit 2; }
BUILD="$OUT/build"
mkdir -p "$BUILD/stub"
# torch_utils.h includes cublas_v2.h for a handle getter Marlin never calls; the toolkit may have no cuBLAS
# headers, so the build sees only the handle type (as cuBLAS declares it)
printf '#pragma once\nstruct cublasContext;\ntypedef struct cublasContext* cublasHandle_t;\n' > "$BUILD/stub/cublas_v2.h"
# the op schemas (vLLM 0.26.0 csrc/libtorch_stable/torch_bindings.cpp); the implementations are registered by
# marlin.cu and gptq_marlin_repack.cu
cat > "$BUILD/nvfp4tools_marlin_ops.cpp" <<'EOF'
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(nvfp4tools_marlin, m) {
  m.def("marlin_gemm(Tensor a, Tensor? c_or_none, Tensor b_q_weight, Tensor? b_bias_or_none, Tensor b_scales, "
        "Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none, Tensor? g_idx_or_none, "
        "Tensor? perm_or_none, Tensor workspace, int b_type_id, SymInt size_m, SymInt size_n, SymInt size_k, "
        "bool is_k_full, bool use_atomic_add, bool use_fp32_reduce, bool is_zp_float) -> Tensor");
  m.def("gptq_marlin_repack(Tensor b_q_weight, Tensor perm, SymInt size_k, SymInt size_n, int num_bits, "
        "bool is_a_8bit) -> Tensor");
}
EOF
t0=$(date +%s)
export TORCH_CUDA_ARCH_LIST="${CUDA_ARCH:0:1}.${CUDA_ARCH:1}"
export MAX_JOBS=${JOBS:-$(nproc)}
"$PY" - "$SRC" "$BUILD" "$OUT" <<'EOF'
import glob, os, shutil, sys
from torch.utils.cpp_extension import load

src, build, out = sys.argv[1:4]
m = os.path.join(src, "csrc/libtorch_stable/quantization/marlin")
sources = ([os.path.join(build, "nvfp4tools_marlin_ops.cpp"), os.path.join(m, "marlin.cu"),
            os.path.join(m, "gptq_marlin_repack.cu")] + sorted(glob.glob(os.path.join(m, "nvfp4_*.cu"))))
common = ["-O3", "-std=c++17", "-DUSE_CUDA", "-DTORCH_TARGET_VERSION=0x020B000000000000ULL"]
# as vLLM's CMake: torch's nvcc flags without the __CUDA_NO_HALF* ones (CUDA >= 12), -DENABLE_FP8, and
# -static-global-template-stub=false (CUDA >= 12.8: the kernels are referenced from another translation unit)
cuda = common + ["-DENABLE_FP8", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                 "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
                 "-static-global-template-stub=false"]
print(f"{len(sources)} sources, {os.environ['MAX_JOBS']} jobs, sm_{os.environ['TORCH_CUDA_ARCH_LIST'].replace('.', '')}", flush=True)
load(name="nvfp4tools_marlin", sources=sources, extra_cflags=common, extra_cuda_cflags=cuda,
     extra_include_paths=[os.path.join(build, "stub"), os.path.join(src, "csrc"), m],
     build_directory=build, is_python_module=False, verbose=bool(os.environ.get("VERBOSE")))
import torch
ops = torch.ops.nvfp4tools_marlin
assert hasattr(ops, "marlin_gemm") and hasattr(ops, "gptq_marlin_repack"), "ops not registered"
shutil.copy(os.path.join(build, "nvfp4tools_marlin.so"), os.path.join(out, "libnvfp4tools_marlin.so"))
EOF
echo "$CUDA_ARCH" > "$OUT/libnvfp4tools_marlin.so.arch"   # the backend refuses a GPU of another architecture
echo "vllm-marlin built for sm_$CUDA_ARCH in $(( $(date +%s) - t0 )) s on $(nproc) cores: $OUT/libnvfp4tools_marlin.so"
