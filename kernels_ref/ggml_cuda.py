"""The ``ggml-cuda`` verify/bench backend: llama.cpp's own CUDA matmul (MMVQ / MMQ) over the layer's
weight in its ggml type.

A ctypes binding of the ggml-backend API (``ggml_backend_cuda_init``, tensors allocated in the
backend's buffer, ``ggml_backend_tensor_set`` / ``_get``, ``ggml_backend_graph_compute``) over a
ggml CUDA build: ``libggml-base`` and ``libggml-cuda`` from ``$NVFP4TOOLS_GGML_LIB_DIR``
(``bash bench/build_ggml_cuda.sh`` builds them from the ggml that llama-cpp-python 0.3.36 vendors,
the sources of the ``ggml-cpu`` backend's libraries), or from llama-cpp-python's own ``lib`` folder
where it was installed as a CUDA build. Every ggml object is an opaque pointer; the only struct is
``ggml_init_params``, as in ``ggml_backend``.

Which kernel runs is ggml's choice (``ggml_cuda_mul_mat``): MMVQ for M <= 8 rows, MMQ above (on
a GPU with MMA, compute capability >= 7.5). :func:`run` puts row 0 through one ``mul_mat`` (M = 1,
MMVQ: decode) and the other rows through another (MMQ for M - 1 > 8: prefill), so both kernels
see every layer.

*The reference.* Both kernels quantize the float32 activations to Q8_1 first, each its own way:
MMVQ ``quantize_q8_1`` (d = amax / 127, q = roundf(x / d), d and the block sum s = sum(x) stored as
fp16), MMQ ``quantize_mmq_q8_1`` (q = roundf(x * (127 / amax)), d = 1 / (127 / amax) kept in float32
or, for Q4_0's DS4 layout, fp16). ggml-cuda is compiled with ``-use_fast_math``, so those divisions
are the GPU's approximate ones, and a numpy mirror cannot reproduce each rounding tie (one code off
by one step in one block moves a layer's output by ~1e-4 relative). So the reference reads back
what ggml-cuda made of the activations, through ``mul_mat`` of the same rows with an identity
weight on the same kernel: a Q8_0 identity (d = 1, q = 1 on the diagonal: the output is d_x * q_x,
exact) for MMVQ and for MMQ's float-d types, a Q4_0 identity (nibble 9 on the diagonal, 8 elsewhere)
for MMQ's Q4_0; and for Q4_0 under MMVQ, which subtracts the 8-offset as ``8 * s`` with s the fp16
sum of the unquantized block, a probe with every nibble 8 and d = 1 on one block, whose output is
8 (d_x sum(q) - s). The reference is then the float64 product of those activations with the
checkpoint's weights (plus, for Q4_0 MMVQ, the per-block offset term d_w * probe), and only ggml's
float32 accumulation is left: the tolerance is 1e-5, as for ``ggml-cpu``. The identity probes
check the activations they return against the unquantized rows (within half a Q8 step per block);
a weight fault (a flipped nibble, a wrong global scale) is not in them.

Types mirrored: Q4_0, Q8_0, NVFP4, MXFP4 (their MMVQ and MMA-MMQ dot products use only the
activations' d, except Q4_0's offset above); other ggml types are skipped with the reason, as are
NVFP4 / MXFP4 rows that take Blackwell's native FP4 MMQ (activations quantized to FP4).
"""

from __future__ import annotations

import ctypes
import os
import time
from functools import lru_cache

import numpy as np

from nvfp4tools.formats._ggml_types import BY_NAME, GGML_TYPES

from . import ggml_backend as G
from .dispatch import LayerCase, NotRunnable

_ID = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}
_F32 = 0
ENV = "NVFP4TOOLS_GGML_LIB_DIR"
BUILD_HINT = (f"build one with `bash bench/build_ggml_cuda.sh` (ggml of llama-cpp-python 0.3.36, -DGGML_CUDA=ON for "
              f"this GPU only, flash attention off: about 3 min on 16 cores) and set {ENV} to its "
              f".cache/ggml-cuda/lib, or install llama-cpp-python built with CMAKE_ARGS=-DGGML_CUDA=on")
MMVQ_MAX_ROWS = 8          # ggml-cuda mmvq.cuh MMVQ_MAX_BATCH_SIZE (NVIDIA, for the types mirrored here)
MIRRORED = ("Q4_0", "Q8_0", "NVFP4", "MXFP4")
_PROBE_ROWS = 4096         # identity probes are built and run this many output columns at a time


# -- the driver: is there a CUDA device at all (torch-free) --------------------------------------------

@lru_cache(maxsize=1)
def _driver() -> tuple[str | None, tuple[int, int] | None]:
    """(why there is no CUDA device, or None; compute capability of device 0)."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver here (libcuda.so.1 cannot be loaded): ggml-cuda needs a CUDA GPU", None
    if cu.cuInit(0) != 0:
        return "the NVIDIA driver is present but cuInit failed (no usable CUDA device)", None
    n = ctypes.c_int(0)
    if cu.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value < 1:
        return "no CUDA device (cuDeviceGetCount = 0)", None
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cu.cuDeviceGetAttribute(ctypes.byref(major), 75, 0)   # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0)   # ..._MINOR
    return None, (major.value, minor.value)


def lib_dir() -> str | None:
    """The folder holding libggml-cuda (``$NVFP4TOOLS_GGML_LIB_DIR``, else llama-cpp-python's lib), or None."""
    sfx = G._suffix()
    for d in (os.environ.get(ENV), G.llama_cpp_lib_dir()):
        if d and os.path.isfile(os.path.join(d, "libggml-cuda" + sfx)):
            return d
    return None


_InitParams = G._InitParams


class GGMLCuda:
    """The bound functions and one CUDA backend on device 0 (one instance per process: :func:`library`)."""

    def __init__(self, d: str, cc: tuple[int, int]) -> None:
        sfx = G._suffix()
        # RTLD_LOCAL (ctypes' default): the backend library finds libggml-base through its own
        # DT_NEEDED (by soname, already loaded); loaded globally, a ggml build that links libstdc++
        # statically (nvcc 13's CUDA build does) would interpose its uninitialised std::ostream on
        # every extension imported later (ml_dtypes' str() crashed in it on an H100)
        self.base = ctypes.CDLL(os.path.join(d, "libggml-base" + sfx))
        self.cuda = ctypes.CDLL(os.path.join(d, "libggml-cuda" + sfx))
        self.path, self.cc = d, cc
        P, S, I, B = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_bool
        G.bind(self, self.base, G.BASE_CALLS + (
            ("ggml_backend_alloc_ctx_tensors", P, [P, P]),
            ("ggml_backend_buffer_free", None, [P]),
            ("ggml_backend_tensor_set", None, [P, P, S, S]),
            ("ggml_backend_tensor_get", None, [P, P, S, S]),
            ("ggml_backend_graph_compute", I, [P, P]),
            ("ggml_backend_supports_op", B, [P, P]),
            ("ggml_backend_free", None, [P])))
        G.bind(self, self.cuda, (("ggml_backend_cuda_init", P, [I]),
                                 ("ggml_backend_cuda_get_device_count", I, []),
                                 ("ggml_backend_cuda_get_device_description", None, [I, ctypes.c_char_p, S])))
        if self._backend_cuda_get_device_count() < 1:
            raise OSError("ggml-cuda sees no CUDA device")
        self.backend = self._backend_cuda_init(0)
        if not self.backend:
            raise OSError("ggml_backend_cuda_init(0) failed")
        buf = ctypes.create_string_buffer(256)
        self._backend_cuda_get_device_description(0, buf, 256)
        self.device = buf.value.decode(errors="replace")

    # -- the checks ggml would GGML_ASSERT (and abort the process on) -------------------------------
    def type_problem(self, name: str, k: int, rows: int) -> str | None:
        why = G.table_problem(self, name)
        if why:
            return why
        block = BY_NAME[name][0]
        if k % block:
            return f"row length {k} is not a multiple of the {name} block ({block})"
        if name not in MIRRORED:
            return (f"ggml-cuda's reference mirrors the activation handling of {', '.join(MIRRORED)} only "
                    f"(not {name})")
        if self.cc < (7, 5) and rows > MMVQ_MAX_ROWS:
            return f"MMQ without tensor-core MMA (compute capability {self.cc[0]}.{self.cc[1]}) is not mirrored"
        if self.cc[0] >= 10 and rows > MMVQ_MAX_ROWS and name in ("NVFP4", "MXFP4"):
            return "Blackwell's native FP4 MMQ (activations quantized to FP4) is not mirrored"
        return None

    def mul_mats(self, weights: list[tuple[str, np.ndarray]], xs: list[np.ndarray],
                 pairs: list[tuple[int, int]]) -> list[np.ndarray]:
        """ggml_mul_mat(W_i, x_j) for each (i, j) in PAIRS on the CUDA backend, one graph: W_i of ggml
        type NAME as raw rows [N, row bytes], x_j float32 [M, K] -> float32 [M, N] each."""
        over = self._tensor_overhead()
        ctx = self._init(_InitParams(over * (len(weights) + len(xs) + len(pairs) + 4) + self._graph_overhead(),
                                     None, True))
        if not ctx:
            raise MemoryError("ggml_init failed")
        buf = None
        try:
            wt, xt = [], []
            for name, raw in weights:
                tid = _ID[name]
                k = raw.shape[1] // BY_NAME[name][1] * BY_NAME[name][0]
                if raw.shape[1] != self._row_size(tid, k):
                    raise NotRunnable(f"{name} rows of {raw.shape[1]} bytes, ggml_row_size says {self._row_size(tid, k)}")
                wt.append(self._new_tensor_2d(ctx, tid, k, raw.shape[0]))
            for x in xs:
                xt.append(self._new_tensor_2d(ctx, _F32, x.shape[1], x.shape[0]))
            g = self._new_graph(ctx)
            outs = []
            for i, j in pairs:
                c = self._mul_mat(ctx, wt[i], xt[j])
                if not self._backend_supports_op(self.backend, c):
                    raise NotRunnable(f"ggml-cuda does not support mul_mat of {weights[i][0]} here")
                self._build_forward_expand(g, c)
                outs.append(c)
            buf = self._backend_alloc_ctx_tensors(ctx, self.backend)
            if not buf:
                raise MemoryError("ggml_backend_alloc_ctx_tensors failed (GPU memory)")
            for t, (_, raw) in zip(wt, weights):
                raw = np.ascontiguousarray(raw, np.uint8)
                self._backend_tensor_set(t, raw.ctypes.data, 0, raw.nbytes)
            for t, x in zip(xt, xs):
                x = np.ascontiguousarray(x, np.float32)
                self._backend_tensor_set(t, x.ctypes.data, 0, x.nbytes)
            status = self._backend_graph_compute(self.backend, g)
            if status != 0:
                raise RuntimeError(f"ggml_backend_graph_compute failed: {G._STATUS.get(status, status)}")
            ys = []
            for c, (i, j) in zip(outs, pairs):
                y = np.empty((xs[j].shape[0], weights[i][1].shape[0]), np.float32)
                if self._nbytes(c) != y.nbytes:
                    raise RuntimeError(f"ggml_mul_mat returned {self._nbytes(c)} bytes, expected {y.nbytes}")
                self._backend_tensor_get(c, y.ctypes.data, 0, y.nbytes)
                ys.append(y)
            return ys
        finally:
            if buf:
                self._backend_buffer_free(buf)
            self._free(ctx)

    def time_mul_mat(self, name: str, raw: np.ndarray, x: np.ndarray, copies: int, replays: int = 20) -> float:
        """Median microseconds per mul_mat: COPIES copies of the weight (each its own tensor, as
        successive layers) times the same activations in one ggml graph, computed on the CUDA backend
        (``ggml_backend_graph_compute``: ggml's stream, its CUDA graph once warm, synchronized at the
        end), wall clock per compute / COPIES, after 3 warm-up computes."""
        tid = _ID[name]
        k = x.shape[1]
        over = self._tensor_overhead()
        ctx = self._init(_InitParams(over * (2 * copies + 4) + self._graph_overhead(), None, True))
        buf = None
        try:
            wt = [self._new_tensor_2d(ctx, tid, k, raw.shape[0]) for _ in range(copies)]
            xt = self._new_tensor_2d(ctx, _F32, k, x.shape[0])
            g = self._new_graph(ctx)
            for w in wt:
                c = self._mul_mat(ctx, w, xt)
                if not self._backend_supports_op(self.backend, c):
                    raise ValueError(f"ggml-cuda does not support mul_mat of {name} here")
                self._build_forward_expand(g, c)
            buf = self._backend_alloc_ctx_tensors(ctx, self.backend)
            if not buf:
                raise MemoryError("ggml_backend_alloc_ctx_tensors failed (GPU memory)")
            raw = np.ascontiguousarray(raw, np.uint8)
            for w in wt:
                self._backend_tensor_set(w, raw.ctypes.data, 0, raw.nbytes)
            x = np.ascontiguousarray(x, np.float32)
            self._backend_tensor_set(xt, x.ctypes.data, 0, x.nbytes)
            times = []
            for i in range(3 + replays):
                t0 = time.perf_counter()
                status = self._backend_graph_compute(self.backend, g)
                dt = time.perf_counter() - t0
                if status != 0:
                    raise RuntimeError(f"ggml_backend_graph_compute failed: {G._STATUS.get(status, status)}")
                if i >= 3:
                    times.append(dt * 1e6 / copies)
            return float(np.median(times))
        finally:
            if buf:
                self._backend_buffer_free(buf)
            self._free(ctx)


@lru_cache(maxsize=1)
def _load() -> tuple[GGMLCuda | None, str | None]:
    why, cc = _driver()
    if why:
        return None, why
    d = lib_dir()
    if d is None:
        src = os.environ.get(ENV)
        where = f"{ENV}={src} has no libggml-cuda{G._suffix()}" if src else f"{ENV} is not set"
        lc = G.llama_cpp_lib_dir()
        where += "; llama-cpp-python here is a CPU-only build" if lc else "; llama-cpp-python is not installed"
        return None, f"no ggml CUDA library ({where}): {BUILD_HINT}"
    try:
        return GGMLCuda(d, cc), None
    except (OSError, AttributeError) as e:
        return None, f"cannot bind ggml-cuda in {d}: {e}"


def library() -> GGMLCuda:
    return G.loaded(_load())


def available() -> str | None:
    return _load()[1]


# -- the identity probes: what ggml-cuda made of the activations ----------------------------------------

def _q8_0_identity(k: int, r0: int, r1: int) -> np.ndarray:
    """Rows R0..R1 of the K x K identity as Q8_0 (d = 1.0, q = 1 on the diagonal)."""
    out = np.zeros((r1 - r0, k // 32, 34), np.uint8)
    out[..., :2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    j = np.arange(r0, r1)
    out[j - r0, j // 32, 2 + j % 32] = 1
    return out.reshape(r1 - r0, -1)


def _q4_0_identity(k: int, r0: int, r1: int) -> np.ndarray:
    """Rows R0..R1 of the K x K identity as Q4_0 (d = 1.0, nibble 9 = +1 on the diagonal, 8 = 0 elsewhere;
    element i < 16 of a block is byte i's low nibble, i >= 16 byte i - 16's high nibble)."""
    out = np.full((r1 - r0, k // 32, 18), 0x88, np.uint8)
    out[..., :2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    j = np.arange(r0, r1)
    i = j % 32
    out[j - r0, j // 32, 2 + i % 16] = np.where(i < 16, 0x89, 0x98)
    return out.reshape(r1 - r0, -1)


def _q4_0_sum_probe(k: int) -> np.ndarray:
    """K/32 rows of Q4_0: row b has every nibble 8 and d = 1.0 on block b, d = 0 elsewhere. Under MMVQ
    its output is 8 * (d_x * sum(q_x) - s_x) for block b (vec_dot_q4_0_q8_1_impl)."""
    nb = k // 32
    out = np.full((nb, nb, 18), 0x88, np.uint8)
    out[..., :2] = 0
    out[np.arange(nb), np.arange(nb), :2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    return out.reshape(nb, -1)


def _probe(lib: GGMLCuda, kind: str, x: np.ndarray) -> np.ndarray:
    k = x.shape[1]
    if kind == "sum":
        return lib.mul_mats([("Q4_0", _q4_0_sum_probe(k))], [x], [(0, 0)])[0].astype(np.float64)
    make, name = (_q8_0_identity, "Q8_0") if kind == "q8_0" else (_q4_0_identity, "Q4_0")
    cols = [lib.mul_mats([(name, make(k, r0, min(k, r0 + _PROBE_ROWS)))], [x], [(0, 0)])[0]
            for r0 in range(0, k, _PROBE_ROWS)]
    return np.concatenate(cols, axis=1).astype(np.float64)


# half a Q8 step, plus what an fp16 d (relative error 2^-11) moves the largest code (127) by
_HALF_STEP = 0.5 + 127 * 2.0 ** -10


def _check_activations(x: np.ndarray, xq: np.ndarray, what: str) -> None:
    """XQ is a Q8 quantization of X: within half a step (amax / 127 per 32-block) everywhere, up to
    the fp16 rounding of the block's d."""
    b = np.asarray(x, np.float64).reshape(x.shape[0], -1, 32)
    step = np.max(np.abs(b), axis=-1, keepdims=True) / 127
    off = np.abs(xq.reshape(b.shape) - b) / np.where(step > 0, step, 1)
    if not np.all(np.isfinite(xq)) or float(np.max(off)) > _HALF_STEP:
        raise RuntimeError(f"ggml-cuda's {what} activations are not a Q8 quantization of the input "
                           f"(worst {float(np.max(off)):.3g} steps off)")


def split_rows(m: int) -> list[tuple[int, int]]:
    """Row 0 alone (MMVQ, decode), the rest together (MMQ when more than 8)."""
    return [(0, 1)] + ([(1, m)] if m > 1 else [])


def _weight(case: LayerCase) -> tuple[str, np.ndarray]:
    if case.ggml_type is None or case.ggml_bytes is None:
        raise NotRunnable(case.ggml_missing or "no ggml form of this layer's weight")
    return case.ggml_type, np.ascontiguousarray(case.ggml_bytes, np.uint8)


def _checked(case: LayerCase) -> tuple[GGMLCuda, str, np.ndarray]:
    lib = library()
    name, raw = _weight(case)
    k = case.x.shape[1]
    for r0, r1 in split_rows(case.x.shape[0]):
        why = lib.type_problem(name, k, r1 - r0)
        if why:
            raise NotRunnable(why)
    return lib, name, raw


def run(case: LayerCase) -> np.ndarray:
    lib, name, raw = _checked(case)
    x = np.ascontiguousarray(case.x, np.float32)
    parts = split_rows(x.shape[0])
    ys = lib.mul_mats([(name, raw)], [x[a:b] for a, b in parts], [(0, j) for j in range(len(parts))])
    y = np.concatenate(ys, axis=0)
    if case.ggml_out_scale != 1.0:
        y = y * np.float32(case.ggml_out_scale)   # llama.cpp: ggml_mul by the '.scale' after ggml_mul_mat
    return y


def reference(case: LayerCase) -> np.ndarray:
    """Float64: the activations as ggml-cuda quantized them for each row part (identity probes on the
    kernel that part runs) times the layer's weights; for Q4_0 under MMVQ plus the per-block offset
    term d_w * 8 (d_x sum(q_x) - s_x) that its dot product carries."""
    from .gemm import gemm_reference

    lib, name, raw = _checked(case)
    x = np.ascontiguousarray(case.x, np.float32)
    out = []
    for a, b in split_rows(x.shape[0]):
        xp = x[a:b]
        mmvq = b - a <= MMVQ_MAX_ROWS
        xq = _probe(lib, "q4_0" if (name == "Q4_0" and not mmvq) else "q8_0", xp)
        _check_activations(xp, xq, "MMVQ" if mmvq else "MMQ")
        y = gemm_reference(xq, case.w)
        if name == "Q4_0" and mmvq:
            d = raw.reshape(raw.shape[0], -1, 18)[..., :2].copy().view("<f2")[..., 0].astype(np.float64)
            y = y + (_probe(lib, "sum", xp) @ d.T) * case.ggml_out_scale
        out.append(y)
    return np.concatenate(out, axis=0)


# -- bench -----------------------------------------------------------------------------------------

def time_cases(cases: list, timing: str) -> float:
    """Microseconds per call of ggml-cuda's mul_mat on an NVFP4 layer given as bench's DeviceCases (one
    per rotating weight copy): the weight repacked to block_nvfp4 (its global applied after, as
    llama.cpp does, outside the timing), the bf16 activations as float32. ``graph``: one ggml graph
    over every copy (weights beyond L2; ggml captures it as a CUDA graph once warm); ``single``: one
    copy per compute (launch and synchronisation included)."""
    from .fp4 import gguf_nvfp4_blocks

    lib = library()
    dc = cases[0]
    packed = dc.packed.cpu().numpy()
    k = packed.shape[1] * 2
    if k % 64:
        raise ValueError(f"K = {k} is not a multiple of the GGUF NVFP4 block (64)")
    raw = gguf_nvfp4_blocks(packed, dc.scales.cpu().numpy())
    x = dc.x.float().cpu().numpy()
    why = lib.type_problem("NVFP4", k, x.shape[0])
    if why:
        raise ValueError(why)
    return lib.time_mul_mat("NVFP4", raw, x, len(cases) if timing == "graph" else 1)
