#!/usr/bin/env bash
# Build llama.cpp's ggml with its CUDA backend (shared libraries libggml-base, libggml-cpu,
# libggml-cuda) for the `ggml-cuda` verify/bench backend, from the ggml that llama-cpp-python 0.3.36
# vendors (the same sources as the `ggml-cpu` backend's libraries).
#
#   bash bench/build_ggml_cuda.sh                 # sources in .cache/ggml-src, libraries to .cache/ggml-cuda/lib
#   bash bench/build_ggml_cuda.sh --fetch-src     # first make .cache/ggml-src (needs the network: pip download)
#   export NVFP4TOOLS_GGML_LIB_DIR=$PWD/.cache/ggml-cuda/lib   # what the backends load
#   bash bench/build_ggml_cuda.sh --pack DIR      # the built lib folder as xz parts of 15 MiB in DIR (a GPU
#                                                 # host's files come back in parts of at most 16 MiB)
#   bash bench/build_ggml_cuda.sh --unpack DIR    # those parts back into .cache/ggml-cuda/lib (no rebuild)
#
# Options as llama.cpp's CUDA build for one architecture (CUDA_ARCH, default: this GPU's, else 90),
# flash-attention kernels off (GGML_CUDA_FA=OFF: mul_mat needs none of them), CUDA graphs on as
# llama.cpp's own CMakeLists sets them, NCCL off (one GPU). Nothing is installed; prints the wall time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${GGML_SRC:-$ROOT/.cache/ggml-src}
BUILD=${GGML_BUILD:-$ROOT/.cache/ggml-cuda/build}
LIB=${GGML_LIB:-$ROOT/.cache/ggml-cuda/lib}
VERSION=0.3.36

if [[ "${1:-}" == "--fetch-src" ]]; then
  tmp=$(mktemp -d)
  python3 -m pip download --no-binary :all: --no-deps -d "$tmp" "llama-cpp-python==$VERSION"
  tar -xzf "$tmp"/llama_cpp_python-$VERSION.tar.gz -C "$tmp"
  g="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp/ggml"
  rm -rf "$SRC" && mkdir -p "$SRC/src"
  cp -r "$g/CMakeLists.txt" "$g"/*.in "$g/cmake" "$g/include" "$SRC/"
  cp "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp/LICENSE" "$SRC/"
  # the base library, the CPU backend and the CUDA backend; every other backend's folder dropped
  (cd "$g/src" && cp -r ./*.c ./*.cpp ./*.h ./*.in CMakeLists.txt ggml-cpu ggml-cuda "$SRC/src/")
  echo "llama-cpp-python $VERSION vendor/llama.cpp/ggml (trimmed: base, cpu, cuda)" > "$SRC/SOURCE"
  rm -rf "$tmp"
  echo "sources in $SRC ($(du -sh "$SRC" | cut -f1))"
  exit 0
fi

if [[ "${1:-}" == "--pack" ]]; then
  mkdir -p "$2" && tar -C "$(dirname "$LIB")" -cf - "$(basename "$LIB")" | xz -T0 -3 | split -b 15M - "$2/ggmllib.part."
  ls -la "$2"; exit 0
fi
if [[ "${1:-}" == "--unpack" ]]; then
  mkdir -p "$(dirname "$LIB")" && cat "$2"/ggmllib.part.* | xz -d | tar -C "$(dirname "$LIB")" -xf -
  echo "ggml-cuda unpacked from $2 into $LIB"; exit 0
fi

[[ -f "$SRC/src/ggml-cuda/ggml-cuda.cu" ]] || {
  echo "no ggml sources in $SRC: run 'bash bench/build_ggml_cuda.sh --fetch-src' on a machine with the network" >&2
  exit 2; }
# the sdist's ggml lacks ggml.pc.in, which a standalone configure writes a pkg-config file from (unused here)
[[ -f "$SRC/ggml.pc.in" ]] || echo "Name: ggml" > "$SRC/ggml.pc.in"
command -v nvcc >/dev/null || { echo "nvcc not found: the CUDA toolkit is needed" >&2; exit 2; }
if [[ -z "${CUDA_ARCH:-}" ]]; then
  CUDA_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ' || true)
  CUDA_ARCH=${CUDA_ARCH:-90}
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
EXTRA=()
# cuBLAS: from the toolkit, else from the nvidia-cublas wheel that torch installs (headers and .so.N)
TK=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
if ! ls "$TK"/include/cublas_v2.h "$TK"/targets/*/include/cublas_v2.h >/dev/null 2>&1; then
  inc=$(python3 -c '
import glob, os, site, sys
for r in site.getsitepackages() + sys.path:
    for h in sorted(glob.glob(os.path.join(r, "nvidia", "**", "cublas_v2.h"), recursive=True)):
        print(os.path.dirname(h)); raise SystemExit
')
  [[ -n "$inc" ]] || { echo "no cublas_v2.h in the CUDA toolkit ($TK) nor in a pip nvidia-cublas package" >&2; exit 2; }
  libdir=$(dirname "$inc")/lib
  cublas=$(ls "$libdir"/libcublas.so* | head -1); cublaslt=$(ls "$libdir"/libcublasLt.so* | head -1)
  echo "cuBLAS from $libdir (not in the toolkit)"
  EXTRA=(-DCUDA_cublas_LIBRARY="$cublas" -DCUDA_cublasLt_LIBRARY="$cublaslt"
         -DCMAKE_CUDA_FLAGS="-I$inc" -DCMAKE_CXX_FLAGS="-I$inc" -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-rpath,$libdir")
fi
mkdir -p "$BUILD" "$LIB"
# the driver library (VMM): the toolkit's stub, else the driver's own libcuda
if ! ls "$TK"/lib64/stubs/libcuda.so "$TK"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
  drv=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? / {print $NF; exit}') || true)
  [[ -z "$drv" ]] && drv=$(ls /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* 2>/dev/null | head -1 || true)
  [[ -n "$drv" ]] && EXTRA+=(-DCUDA_cuda_driver_LIBRARY="$drv")
fi
t0=$(date +%s)
cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DGGML_CUDA_FA=OFF -DGGML_CUDA_GRAPHS=ON \
  -DGGML_CUDA_NCCL=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF "${EXTRA[@]}" >"$BUILD/configure.log" 2>&1 || {
  tail -30 "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" --config Release -j "${JOBS:-$(nproc)}" --target ggml-base ggml-cpu ggml-cuda
mkdir -p "$LIB"
for l in ggml-base ggml-cpu ggml-cuda; do
  f=$(find "$BUILD" -name "lib$l.so*" -type f | head -1)
  [[ -n "$f" ]] || { echo "lib$l.so not built" >&2; exit 1; }
  cp -f "$f" "$LIB/"
  ln -sf "$(basename "$f")" "$LIB/lib$l.so"
  soname=$(objdump -p "$f" 2>/dev/null | awk '/SONAME/ {print $2}')
  [[ -n "$soname" && "$soname" != "$(basename "$f")" ]] && ln -sf "$(basename "$f")" "$LIB/$soname"
done
echo "ggml-cuda built for sm_$CUDA_ARCH in $(( $(date +%s) - t0 )) s on $(nproc) cores: $LIB"
