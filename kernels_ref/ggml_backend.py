"""The ``ggml-cpu`` verify backend: llama.cpp's own CPU matmul over the layer's weight in its ggml type.

A small ctypes binding of the dozen ggml functions it needs, over the shared libraries that
llama-cpp-python installs (``llama_cpp/lib/libggml-base.so``, ``libggml-cpu.so``), located with
``importlib.util.find_spec`` so that llama_cpp itself is never imported. Every ggml object is an
opaque pointer; the only structs read are ``ggml_init_params`` (passed by value: mem_size,
mem_buffer, no_alloc) and the four-field ``ggml_type_traits_cpu`` (``ggml-cpu.h``), both as declared
by the ggml vendored in llama-cpp-python 0.3.36. The weight goes into a ``ggml_context`` as its raw
block bytes, the float32 activations beside it, and ``ggml_mul_mat`` runs through
``ggml_graph_compute_with_ctx``: ggml's CPU ``vec_dot`` kernels for the type (``type_traits_cpu``),
not the repacked (``Q4_0x8`` ...) GEMMs that llama.cpp's CPU backend picks for some types when it
loads a model into its "extra" buffer types.

ggml aborts the process on a failed ``GGML_ASSERT``: every precondition it asserts (type known to
this library, a CPU ``vec_dot`` for it, row length a multiple of the block, bytes matching
``ggml_row_size``) is checked here first, and a layer that fails one is skipped with the reason.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from functools import lru_cache

import numpy as np

from nvfp4tools.formats._ggml_types import BY_NAME, GGML_TYPES

from .dispatch import LayerCase, NotRunnable

_ID = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}
_F32 = 0
_STATUS = {-2: "GGML_STATUS_ALLOC_FAILED", -1: "GGML_STATUS_FAILED", 1: "GGML_STATUS_ABORTED"}
_INSTALL = "pip install llama-cpp-python (built from source, it ships libggml-base and libggml-cpu)"


class _InitParams(ctypes.Structure):
    # ggml.h struct ggml_init_params
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


_P, _S, _I64, _I = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int
# (name, restype, argtypes) of the libggml-base calls every ggml backend here uses (ggml.h)
BASE_CALLS = (
    ("ggml_init", _P, [_InitParams]),
    ("ggml_free", None, [_P]),
    ("ggml_new_tensor_2d", _P, [_P, _I, _I64, _I64]),
    ("ggml_mul_mat", _P, [_P, _P, _P]),
    ("ggml_new_graph", _P, [_P]),
    ("ggml_build_forward_expand", None, [_P, _P]),
    ("ggml_nbytes", _S, [_P]),
    ("ggml_row_size", _S, [_I, _I64]),
    ("ggml_blck_size", _I64, [_I]),
    ("ggml_type_size", _S, [_I]),
    ("ggml_type_name", ctypes.c_char_p, [_I]),
    ("ggml_tensor_overhead", _S, []),
    ("ggml_graph_overhead", _S, []),
)


def bind(obj: object, lib: ctypes.CDLL, calls) -> None:
    """Declare CALLS' signatures on LIB and set each as OBJ._<name without 'ggml_'>."""
    for name, res, args in calls:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
        setattr(obj, "_" + name[5:], f)


def table_problem(lib, name: str) -> str | None:
    """Why LIB (bound with BASE_CALLS, its folder in ``lib.path``) does not hold ggml type NAME as
    nvfp4tools' type table does (formats/_ggml_types.py): unknown, another name, another block."""
    tid = _ID.get(name)
    if tid is None:
        return f"ggml type {name} is not in nvfp4tools' type table"
    got = (lib._type_name(tid) or b"").decode()
    if got.upper() != name:
        return f"this libggml ({lib.path}) names type {tid} {got!r}, not {name}"
    block, nbytes = BY_NAME[name]
    if (lib._blck_size(tid), lib._type_size(tid)) != (block, nbytes):
        return (f"this libggml's {name} block is {lib._blck_size(tid)} elements / {lib._type_size(tid)} "
                f"bytes, not {block} / {nbytes}")
    return None


class _TraitsCPU(ctypes.Structure):
    # ggml-cpu.h struct ggml_type_traits_cpu
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


def _suffix() -> str:
    return {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")


def lib_dir() -> str | None:
    """The folder of libggml-base / libggml-cpu: ``$NVFP4TOOLS_GGML_LIB_DIR`` when it holds them (a
    ggml build such as ``bench/build_ggml_cuda.sh`` makes: then ``ggml-cpu`` and ``ggml-cuda`` share
    one libggml-base), else llama-cpp-python's ``lib`` folder, or None."""
    env = os.environ.get("NVFP4TOOLS_GGML_LIB_DIR")
    if env and os.path.isfile(os.path.join(env, "libggml-cpu" + _suffix())):
        return env
    return llama_cpp_lib_dir()


def llama_cpp_lib_dir() -> str | None:
    """llama-cpp-python's ``lib`` folder (found without importing llama_cpp), or None."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = os.path.join(root, "lib")
        if os.path.isfile(os.path.join(d, "libggml-cpu" + _suffix())):
            return d
    return None


class GGML:
    """The bound functions (one instance per process: :func:`library`)."""

    def __init__(self, d: str) -> None:
        sfx = _suffix()
        # RTLD_LOCAL (ctypes' default): the backend library finds libggml-base through its own
        # DT_NEEDED (by soname, already loaded); loaded globally, a ggml build that links libstdc++
        # statically (nvcc 13's CUDA build does) would interpose its uninitialised std::ostream on
        # every extension imported later (ml_dtypes' str() crashed in it on an H100)
        self.base = ctypes.CDLL(os.path.join(d, "libggml-base" + sfx))
        self.cpu = ctypes.CDLL(os.path.join(d, "libggml-cpu" + sfx))
        self.path = d
        P, I = ctypes.c_void_p, ctypes.c_int
        bind(self, self.base, BASE_CALLS + (("ggml_get_data", P, [P]),))
        bind(self, self.cpu, (("ggml_cpu_init", None, []),
                              ("ggml_get_type_traits_cpu", ctypes.POINTER(_TraitsCPU), [I]),
                              ("ggml_graph_compute_with_ctx", I, [P, P, I])))
        self._cpu_init()
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        self.n_threads = max(1, len(cores))

    def type_problem(self, name: str) -> str | None:
        """Why this library cannot multiply a weight of ggml type NAME on the CPU, or None."""
        why = table_problem(self, name)
        if why:
            return why
        if not self._get_type_traits_cpu(_ID[name]).contents.vec_dot:
            return f"ggml's CPU backend has no vec_dot kernel for {name}"
        return None

    def vec_dot_type(self, name: str) -> str:
        """The type ggml's CPU mul_mat converts float32 activations to for a weight of type NAME."""
        return GGML_TYPES[self._get_type_traits_cpu(_ID[name]).contents.vec_dot_type][0]

    def from_float(self, name: str, x: np.ndarray) -> np.ndarray:
        """One float32 row X quantized by ggml-cpu's own ``from_float`` for type NAME (the conversion
        mul_mat applies to activations): its block bytes. Tests hold the mirror below to it."""
        tid = _ID[name]
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        fn = self._get_type_traits_cpu(tid).contents.from_float
        if not fn or x.size % self._blck_size(tid):
            raise NotRunnable(f"ggml-cpu has no from_float for {name} rows of {x.size}")
        out = np.zeros(self._row_size(tid, x.size), np.uint8)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
        proto(fn)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def mul_mat(self, name: str, w_bytes: np.ndarray, x: np.ndarray) -> np.ndarray:
        """y [M, N] = ggml_mul_mat(W, x): W of type NAME as raw rows [N, row bytes], x float32 [M, K]."""
        why = self.type_problem(name)
        if why:
            raise NotRunnable(why)
        tid = _ID[name]
        x = np.ascontiguousarray(x, dtype=np.float32)
        w_bytes = np.ascontiguousarray(w_bytes, dtype=np.uint8)
        (m, k), n = x.shape, w_bytes.shape[0]
        if k % self._blck_size(tid):
            raise NotRunnable(f"row length {k} is not a multiple of the {name} block ({self._blck_size(tid)})")
        if w_bytes.ndim != 2 or w_bytes.shape[1] != self._row_size(tid, k):
            raise NotRunnable(f"{name} rows of {w_bytes.shape[1:]} bytes, ggml_row_size says {self._row_size(tid, k)}")
        vdt = _ID[self.vec_dot_type(name)]
        over = self._tensor_overhead()
        # the context holds W, x, y, the graph and the work buffer graph_compute allocates in it
        # (activations converted to the vec_dot type, plus a cache line per thread); 1 MiB of slack
        mem = (w_bytes.nbytes + x.nbytes + 4 * m * n + self._row_size(vdt, m * k) + self._graph_overhead()
               + 8 * over + 256 * self.n_threads + (1 << 20))
        ctx = self._init(_InitParams(mem, None, False))
        if not ctx:
            raise MemoryError(f"ggml_init could not allocate {mem} bytes")
        try:
            a = self._new_tensor_2d(ctx, tid, k, n)
            b = self._new_tensor_2d(ctx, _F32, k, m)
            ctypes.memmove(self._get_data(a), w_bytes.ctypes.data, w_bytes.nbytes)
            ctypes.memmove(self._get_data(b), x.ctypes.data, x.nbytes)
            c = self._mul_mat(ctx, a, b)
            g = self._new_graph(ctx)
            self._build_forward_expand(g, c)
            status = self._graph_compute_with_ctx(ctx, g, self.n_threads)
            if status != 0:
                raise RuntimeError(f"ggml_graph_compute failed: {_STATUS.get(status, status)}")
            if self._nbytes(c) != 4 * m * n:
                raise RuntimeError(f"ggml_mul_mat returned {self._nbytes(c)} bytes, expected {4 * m * n}")
            y = np.empty((m, n), np.float32)   # result ne0 = N (contiguous), ne1 = M
            ctypes.memmove(y.ctypes.data, self._get_data(c), y.nbytes)
            return y
        finally:
            self._free(ctx)


@lru_cache(maxsize=1)
def _load() -> tuple[GGML | None, str | None]:
    d = lib_dir()
    if d is None:
        return None, (f"llama-cpp-python's libggml not found (no llama_cpp/lib/libggml-cpu{_suffix()}, and "
                      f"NVFP4TOOLS_GGML_LIB_DIR names no ggml build); {_INSTALL}")
    try:
        return GGML(d), None
    except (OSError, AttributeError) as e:
        return None, f"cannot bind libggml in {d}: {e}"


def loaded(load: tuple[object | None, str | None]):
    """The library of a backend's ``_load()`` result (library, why not), or RuntimeError(why)."""
    lib, why = load
    if lib is None:
        raise RuntimeError(why)
    return lib


def library() -> GGML:
    return loaded(_load())


def available() -> str | None:
    return _load()[1]


# -- the reference's activations: ggml's quantize_row_q8_* mirrored ------------------------------------

def _f16_round(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


def _q8_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """Q8_0 / Q8_1 (ggml-cpu quantize_row_q8_0 / _q8_1): per 32 values d = amax/127 stored in fp16,
    q = round(x * 127/amax) (the float32 product ggml's AVX path rounds to nearest-even)."""
    b = x.reshape(x.shape[0], -1, block)
    amax = np.max(np.abs(b), axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(b * inv)
    d = _f16_round(amax / np.float32(127.0))
    return (q * d).reshape(x.shape)


def _q8_k(x: np.ndarray) -> np.ndarray:
    """Q8_K (ggml quantize_row_q8_K_ref): per 256 values iscale = -127/max (max: the value of largest
    magnitude, signed), q = min(127, nearest_int(iscale * x)), d = 1/iscale in float32."""
    b = x.reshape(x.shape[0], -1, 256)
    i = np.argmax(np.abs(b), axis=-1)[..., None]
    mx = np.take_along_axis(b, i, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127.0) / mx, np.float32(0.0)).astype(np.float32)
        q = np.minimum(np.rint(iscale * b), 127)
        d = np.where(mx != 0, np.float32(1.0) / iscale, np.float32(0.0)).astype(np.float32)
    return (q * d).reshape(x.shape)


def _bf16_round(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def activations_as_ggml(x: np.ndarray, vec_dot_type: str) -> np.ndarray:
    """X float32 [M, K] as ggml's CPU mul_mat sees it after converting it to VEC_DOT_TYPE, as float32."""
    x = np.asarray(x, np.float32)
    if vec_dot_type in ("Q8_0", "Q8_1"):
        return _q8_blocks(x, 32)
    if vec_dot_type == "Q8_K":
        return _q8_k(x)
    if vec_dot_type == "F16":
        return _f16_round(x)
    if vec_dot_type == "BF16":
        return _bf16_round(x)
    if vec_dot_type == "F32":
        return x
    raise ValueError(f"no mirror of ggml's activation conversion to {vec_dot_type}")


# -- the backend ------------------------------------------------------------------------------------

def _weight(case: LayerCase) -> tuple[str, np.ndarray]:
    if case.ggml_type is None or case.ggml_bytes is None:
        raise NotRunnable(case.ggml_missing or "no ggml form of this layer's weight")
    return case.ggml_type, case.ggml_bytes


def run(case: LayerCase) -> np.ndarray:
    name, raw = _weight(case)
    y = library().mul_mat(name, raw, case.x)
    if case.ggml_out_scale != 1.0:
        # llama.cpp applies an NVFP4 tensor's '.scale' with ggml_mul after ggml_mul_mat (float32)
        y = y * np.float32(case.ggml_out_scale)
    return y


def _q8_1_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 32-block of X: ggml's Q8_1 ``s`` (fp16 of the float32 product d * sum(q), d = amax/127
    unrounded: quantize_row_q8_1) and the d16 * sum(q) the mirrored activations carry, [M, K/32]."""
    b = x.reshape(x.shape[0], -1, 32)
    amax = np.max(np.abs(b), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    qsum = np.rint(b * inv[..., None]).sum(axis=-1)
    d = (amax / np.float32(127.0)).astype(np.float32)
    return _f16_round((d * qsum.astype(np.float32)).astype(np.float32)), _f16_round(d) * qsum


def reference(case: LayerCase) -> np.ndarray:
    """The float64 product ggml-cpu computes up to its float32 accumulation: the activations as
    ggml converts them (Q8_0 / Q8_1 / Q8_K, mirrored bit for bit) times the layer's weights; for
    the Q8_1 types (Q4_1, Q5_1) the block minimum multiplies ggml's fp16 sum ``s`` of the
    activations, as ``ggml_vec_dot_q4_1_q8_1`` does, not the sum of the quantized values."""
    from nvfp4tools.formats._ggml_types import BLOCK_SCALES

    from .gemm import gemm_reference

    name, raw = _weight(case)
    vdt = library().vec_dot_type(name)
    y = gemm_reference(activations_as_ggml(case.x, vdt), case.w)
    mins = [f for f in BLOCK_SCALES.get(name, ()) if f.role == "min"]
    if vdt == "Q8_1" and mins:
        s16, carried = _q8_1_sums(np.asarray(case.x, np.float32))
        blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], -1, BY_NAME[name][1])
        m = blocks[..., mins[0].offset:mins[0].offset + 2].copy().view("<f2")[..., 0].astype(np.float64)
        y = y + (s16.astype(np.float64) - carried) @ m.T * case.ggml_out_scale
    return y


# -- weights into ggml blocks (lossless) ---------------------------------------------------------------

def nvfp4_blocks(codes: np.ndarray, scale_bytes: np.ndarray) -> np.ndarray:
    """Canonical NVFP4 (E2M1 codes [N, K], E4M3 bytes [N, K/16]) -> GGUF ``block_nvfp4`` rows
    [N, K/64 * 36]: the byte-wise repack of kernels_ref.fp4 (K % 64 == 0, else NotRunnable)."""
    from .fp4 import gguf_nvfp4_blocks, pack_nibbles_hf

    k = codes.shape[-1]
    if k % 64:
        raise NotRunnable(f"row length {k} is not a multiple of the GGUF NVFP4 block (64)")
    return gguf_nvfp4_blocks(pack_nibbles_hf(codes), scale_bytes)


def _fp16_exact(s: np.ndarray, what: str) -> np.ndarray:
    s = np.asarray(s, np.float32)
    h = s.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), s, equal_nan=True):
        raise NotRunnable(f"{what} group scales are not all fp16 values; no ggml block holds them exactly")
    return h


def int_sym_blocks(q: np.ndarray, group_scales: np.ndarray, bits: int) -> tuple[str, np.ndarray]:
    """Symmetric integer codes Q [N, K] (int4: -8..7, int8: -128..127) with one scale per group of
    K / group_scales.shape[-1] -> Q4_0 / Q8_0 rows, exactly (d = the group scale in fp16, repeated
    over the 32-element blocks of a 64/128 group; ggml quantize_row_q4_0_ref / q8_0_ref layouts)."""
    from .ggml_quants import q4_0_join

    n, k = q.shape
    group = k // group_scales.shape[-1]
    if group % 32 or k % 32:
        raise NotRunnable(f"int{bits} group {group} is not a multiple of 32; no ggml block holds it exactly")
    d = np.repeat(_fp16_exact(group_scales, f"int{bits}").reshape(n, -1), group // 32, axis=-1)
    if bits == 4:
        return "Q4_0", q4_0_join((np.asarray(q).astype(np.int16) + 8).astype(np.uint8), d).reshape(n, -1)
    if bits == 8:
        out = np.empty((n, k // 32, 34), np.uint8)
        out[..., :2] = d.astype("<f2")[..., None].view(np.uint8)
        out[..., 2:] = np.asarray(q).astype(np.int8).reshape(n, k // 32, 32).view(np.uint8)
        return "Q8_0", out.reshape(n, -1)
    raise NotRunnable(f"int{bits}: no ggml block type holds it exactly")
