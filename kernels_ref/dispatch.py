"""Verification backends: an explicit, registered choice, never a silent fallback.

Each backend declares when it is available (``available()`` returns None, or the reason it is not)
and the tolerance its output is held to against the float64 reference (relative Frobenius error
``||y - y_ref|| / ||y_ref||``). ``ref`` is numpy: dequantize to float32 and accumulate in float32.
GPU backends register here too; they import torch only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from nvfp4tools.errors import BackendUnavailable, UsageError


@dataclass
class LayerCase:
    """One linear layer as every backend receives it (canonical NVFP4 parts, or a float weight)."""

    name: str
    x: np.ndarray                      # float32 activations [M, K]
    w: np.ndarray                      # float32 dequantized weight [N, K] (reference path A)
    codes: np.ndarray | None = None    # uint8 E2M1 codes [N, K] (NVFP4 only)
    scale_bytes: np.ndarray | None = None  # uint8 E4M3 [N, K/16]
    global_scale: float | None = None  # multiplier
    input_scale: float | None = None   # multiplier
    mode: str = "w4a16"                # or "w4a4"
    # the weight in a ggml block type, lossless (GGUF tensors as stored; NVFP4 / int4 / int8 repacked):
    ggml_type: str | None = None       # formats._ggml_types name ("Q4_0", "NVFP4", ...)
    ggml_bytes: np.ndarray | None = None   # uint8 [N, ggml_row_size(type, K)]
    ggml_out_scale: float = 1.0        # multiplied into the output (a GGUF NVFP4 '.scale', an NVFP4 global)
    ggml_missing: str | None = None    # why the layer has no ggml form (ggml backends skip it, saying so)


class NotRunnable(ValueError):
    """Raised by a backend's ``run`` for a layer it cannot compute (the message says why): verify
    reports the layer as skipped by that backend, not as passed or failed."""


@dataclass
class DeviceCase:
    """One layer already on the GPU, as ``bench`` times it (torch tensors; typed loosely so that
    this module stays importable without torch)."""

    x: object                          # bf16 activations [M, K]
    packed: object                     # uint8 [N, K/2], element 2i in the low nibble of byte i
    scales: object                     # uint8 E4M3 [N, K/16]
    global_scale: float                # multiplier
    input_scale: float | None = None   # multiplier (W4A4 backends need it)


@dataclass
class Backend:
    name: str
    description: str
    tolerance_rel: float
    available: Callable[[], str | None]
    run: Callable[[LayerCase], np.ndarray]
    tolerance_source: str = ""
    activations: str = "w4a16"   # "w4a4": compared with a reference over NVFP4-quantized activations
    # bench: DeviceCase -> a call that runs the GEMM on the device and nothing else (inputs
    # prepared outside it, no host transfer, no synchronisation: it is replayed from a CUDA graph).
    # Raises ValueError where this layer cannot run (say why). None: bench does not time it.
    timer: Callable[[DeviceCase], Callable[[], object]] | None = None
    timer_missing: str = "bench does not time this backend"
    # LayerCase -> the float64 reference this backend is held to, where the backend converts the
    # activations itself (ggml quantizes them to Q8): None, x @ w^T over the case's own x.
    reference: Callable[[LayerCase], np.ndarray] | None = None
    ggml_weight: bool = False    # run() needs LayerCase.ggml_type/ggml_bytes (verify fills them)
    # bench, for a backend that runs on its own CUDA stream (ggml): ([DeviceCase per weight copy],
    # timing) -> microseconds per call, measured by the backend itself. Raises ValueError where the
    # layer cannot run (say why).
    self_timer: Callable[[list, str], float] | None = None


_BACKENDS: dict[str, Backend] = {}


def register(b: Backend) -> Backend:
    if b.name in _BACKENDS:
        raise RuntimeError(f"backend {b.name!r} registered twice")
    _BACKENDS[b.name] = b
    return b


def _ref_run(case: LayerCase) -> np.ndarray:
    from .gemm import gemm_emulated, quantize_activations_nvfp4

    x = case.x
    if case.mode == "w4a4" and case.input_scale is not None:
        x = quantize_activations_nvfp4(x, case.input_scale)
    return gemm_emulated(x, case.w)


register(Backend(
    "ref", "numpy: weights dequantized to float32, float32 accumulation", 1e-5, lambda: None, _ref_run,
    "float32 accumulation over K terms: relative error ~ sqrt(K) * 2^-24 (< 1e-5 for K <= 2^16)"))


def _ggml(attr: str) -> Callable:
    def call(*args):
        from . import ggml_backend
        return getattr(ggml_backend, attr)(*args)
    return call


# ggml's CPU vec_dot kernels convert the activations to Q8_0 / Q8_1 / Q8_K first (ggml-cpu.c
# type_traits_cpu[type].vec_dot_type): 5e-3 to 8e-3 from the float64 reference on Gaussian x. The
# backend's reference mirrors that conversion bit for bit (ggml_backend.reference, from
# quantize_row_q8_0 / _q8_1 / _q8_K, with Q8_1's fp16 block sums), so what remains is ggml's
# float32 accumulation of per-block products d_w * d_x * sum(q_w * q_x) (integer sums exact):
# <= 7e-7 measured for every type up to K = 28672. 1e-5 holds that with margin and sees one code
# moved by one step in one block of a 2816 x 2112 Q4_0 layer (8e-5). llama.cpp's own bound,
# tests/test-backend-ops.cpp (max_nmse_err 5e-4 for MUL_MAT: a relative error sqrt(5e-4) = 2.2e-2),
# is against ggml's CPU backend, not against unquantized activations; it would hide such faults.
register(Backend(
    "ggml-cpu", "llama.cpp's ggml_mul_mat on the CPU (llama-cpp-python's libggml), the weight in its ggml type",
    1e-5, _ggml("available"), _ggml("run"),
    "reference over activations converted as ggml converts them (Q8_0/Q8_1/Q8_K, mirrored bit for bit): "
    "ggml's float32 accumulation of block products, <= 7e-7 measured; llama.cpp test-backend-ops' MUL_MAT "
    "bound (NMSE 5e-4, rel 2.2e-2) is against ggml's own CPU output", reference=_ggml("reference"),
    ggml_weight=True))


def _ggml_cuda(attr: str) -> Callable:
    def call(*args):
        from . import ggml_cuda
        return getattr(ggml_cuda, attr)(*args)
    return call


# llama.cpp's CUDA kernels (MMVQ for M <= 8, MMQ above) quantize the activations to Q8_1 with the
# GPU's fast-math divisions, which no numpy mirror reproduces tie for tie; the backend's reference
# reads back what ggml-cuda made of them (identity-weight mul_mats on the same kernels,
# ggml_cuda.reference) and multiplies the checkpoint's weights in float64, so that what remains
# is ggml's float32 accumulation, as for ggml-cpu: 1e-5.
register(Backend(
    "ggml-cuda", "llama.cpp's ggml_mul_mat on the CUDA backend (MMVQ for row 0, MMQ for the rest), the weight in "
    "its ggml type", 1e-5, _ggml_cuda("available"), _ggml_cuda("run"),
    "reference over the activations as ggml-cuda quantized them (read back through identity-weight mul_mats on "
    "the same kernels): ggml's float32 accumulation of block products", reference=_ggml_cuda("reference"),
    ggml_weight=True, self_timer=_ggml_cuda("time_cases")))


def _load_gpu_backends() -> None:
    try:
        from . import gpu  # noqa: F401  (registers torch/triton/triton-w4a4/scaled_mm when torch is present)
    except ImportError:
        pass


def names() -> list[str]:
    _load_gpu_backends()
    return list(_BACKENDS)


def get(name: str) -> Backend:
    _load_gpu_backends()
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}", hint=f"known: {', '.join(_BACKENDS)}, or 'all'")
    b = _BACKENDS[name]
    why = b.available()
    if why:
        raise BackendUnavailable(f"backend {name!r} is not available here: {why}")
    return b


def resolve(spec: str) -> list[Backend]:
    """'ref', 'ref,torch' or 'all' (every available backend) -> backends; unavailable is an error."""
    return select(spec)[0]


def select(spec: str) -> tuple[list[Backend], list[dict[str, str]]]:
    """The backends SPEC names that run here, and {"name", "reason"} for each it names that cannot.
    'all' names every registered backend, so a machine without CUDA reports the GPU backends it did
    not run instead of checking less in silence; a name given explicitly must run (or it is an error)."""
    _load_gpu_backends()
    if spec.strip() == "all":
        runnable, unavailable = [], []
        for b in _BACKENDS.values():
            why = b.available()
            if why:
                unavailable.append({"name": b.name, "reason": why})
            else:
                runnable.append(b)
        return runnable, unavailable
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--backend {spec!r} names no backend", hint=f"known: {', '.join(_BACKENDS)}, or 'all'")
    return [get(n) for n in names], []


def require(names: list[str]) -> None:
    """Raise unless every backend in NAMES is registered (UsageError) and runs here (BackendUnavailable)."""
    for n in names:
        get(n)


def status() -> list[dict[str, object]]:
    _load_gpu_backends()
    return [{"name": b.name, "available": b.available() is None, "reason": b.available(),
             "tolerance_rel": b.tolerance_rel, "description": b.description} for b in _BACKENDS.values()]


# vLLM's Marlin FP4 W4A16 GEMM (kernels_ref/vllm_marlin.py: a build of vLLM 0.26.0's own kernels, the weights
# prepared as vLLM prepares them); its reference rounds activations and output to bf16 as Marlin does
from . import vllm_marlin as _vllm_marlin  # noqa: E402  (it imports LayerCase / NotRunnable from here)

register(Backend(_vllm_marlin.BACKEND_NAME, _vllm_marlin.DESCRIPTION, _vllm_marlin.TOLERANCE_REL,
                 _vllm_marlin.available, _vllm_marlin.run, _vllm_marlin.TOLERANCE_SOURCE,
                 reference=_vllm_marlin.reference, timer=_vllm_marlin.timer))
