"""The ``vllm-marlin`` verify backend: vLLM's own Marlin FP4 GEMM (W4A16), the kernel vLLM runs for NVFP4
checkpoints on GPUs of compute capability 8.0-9.x (an A100, an L40S, an H100), on a layer's real weights,
prepared as vLLM prepares them.

*Which vLLM.* 0.26.0 (Apache-2.0), the release pinned to torch 2.11. ``bash bench/build_marlin_fp4.sh``
builds its ``csrc/libtorch_stable/quantization/marlin`` sources (the NVFP4 kernel instances only, for this
GPU's architecture) into one shared library registering ``torch.ops.nvfp4tools_marlin.marlin_gemm`` and
``.gptq_marlin_repack`` with vLLM's schemas. The library is ``$NVFP4TOOLS_MARLIN_LIB``, else
``.cache/vllm-marlin/libnvfp4tools_marlin.so`` in the source tree this module is in (where the script puts it).

*Which kernel vLLM picks.* ``vllm/model_executor/kernels/linear/__init__.py`` ``_POSSIBLE_NVFP4_KERNELS``
tries FlashInfer (CuTe DSL, CUTLASS), vLLM's CUTLASS FP4 GEMM, then ``MarlinNvFp4LinearKernel``
(``kernels/linear/nvfp4/marlin.py``). The first three need FP4 tensor cores (compute capability 10.x /
12.x: ``cutlass_fp4_supported``, ``is_device_capability_family(100)``), so below that, from 7.5
(``is_fp4_marlin_supported``), Marlin runs: weight-only, the activations in the model's dtype (bf16 for
these models), a ModelOpt W4A4 checkpoint's input scale unused. This backend runs where that is the case
and the library was built for: 8.0-9.x.

*The weight preparation* (``vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py``
``prepare_fp4_layer_for_marlin``, with ``marlin_utils.py``), reimplemented step by step below:
:func:`marlin_padded_nk` (zero padding to a Marlin tile family), the packed weight viewed as int32 and
transposed, then ``gptq_marlin_repack`` (the library's, vLLM's kernel); the E4M3 block scales transposed,
converted to the activation dtype, :func:`permute_scales` (``marlin_permute_scales``),
:func:`process_scales` (``nvfp4_marlin_process_scales``: to the S0E5M3 byte format Marlin dequantizes,
with a power-of-two rescale for bf16); the global scale through :func:`process_global_scale`
(``nvfp4_marlin_process_global_scale``) and divided by that rescale; a zeroed int32 workspace of one
entry per SM (``marlin_make_workspace_new``). The GEMM is called as ``apply_fp4_marlin_linear`` calls it:
no bias, no activation scales, ``use_atomic_add`` False (vLLM's default: ``VLLM_MARLIN_USE_ATOMIC_ADD``
unset), ``use_fp32_reduce`` True (``USE_FP32_REDUCE_DEFAULT``).

*The arithmetic, the reference and the tolerance.* Marlin rounds the activations to bf16, dequantizes each
weight to bf16 exactly (an E2M1 value times an E4M3 scale has at most 5 significant bits; the powers of two
folded into the scale bytes and the global are exact), accumulates bf16 x bf16 products in fp32 on the
tensor cores (split-K partial sums reduced in fp32), multiplies by the float32 global scale and rounds the
result to bf16 (``marlin_template.h`` ``write_result``). :func:`reference` is the float64 product of the
activations rounded to bf16 and the dequantized weight, rounded to bf16 as Marlin's output is. What
remains is fp32 accumulation (relative ~1e-6 per sum) moving a result across a bf16 rounding boundary,
one bf16 step (2^-8 relative) on a small share of the outputs: about 1e-4 relative Frobenius error;
:data:`TOLERANCE_REL` is 1e-3. Against the unrounded product the bf16 output rounding alone is up to 2^-8
(3.9e-3) per element, ~1.5e-3 in norm: the ``triton`` backend, whose reference rounds neither activations
nor output, is held to 5e-3 for that reason. Rounding the reference as the kernel rounds keeps a flipped
code nibble in a full-size layer (2e-3 to 8e-3 relative for the largest weight of a 2816 x 8192 to
704 x 2816 layer) above the tolerance.

Where vLLM's preparation itself departs from the checkpoint, the reference (the checkpoint's values) shows
it: ``nvfp4_marlin_process_scales`` zeroes every block scale below 2^-6 after its rescale (E4M3 subnormals
when the largest scale is near 448) and every negative one.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # dispatch imports this module to register it: no import back at load time
    from .dispatch import LayerCase

BACKEND_NAME = "vllm-marlin"
DESCRIPTION = ("vLLM 0.26.0's Marlin FP4 W4A16 GEMM (marlin_gemm, what vLLM runs for NVFP4 on compute capability "
               "8.0-9.x), weights prepared as prepare_fp4_layer_for_marlin does, bf16 activations")
TOLERANCE_REL = 1e-3
TOLERANCE_SOURCE = ("reference: float64 product of the bf16-rounded activations and the dequantized weight, rounded "
                    "to bf16 as Marlin's output is; what remains is Marlin's fp32 accumulation moving an output "
                    "across a bf16 rounding boundary (~1e-4 relative)")
VLLM_VERSION = "0.26.0"
ENV = "NVFP4TOOLS_MARLIN_LIB"
LIB_NAME = "libnvfp4tools_marlin.so"
DEFAULT_LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "vllm-marlin",
                           LIB_NAME)
BUILD_HINT = (f"build it with `bash bench/build_marlin_fp4.sh` (vLLM {VLLM_VERSION}'s Marlin NVFP4 kernels for this "
              f"GPU: about 1 min on 16 cores; the sources come from `bash bench/build_marlin_fp4.sh --fetch-src` on a "
              f"machine with the network) and set {ENV} to the .so, or leave it at {DEFAULT_LIB}")
NAMESPACE = "nvfp4tools_marlin"

GROUP_SIZE = 16                # FP4_MARLIN_SUPPORTED_GROUP_SIZES (marlin_utils_fp4.py), NVFP4's block
TILE = 16                      # GPTQ_MARLIN_TILE (marlin_utils.py), marlin.cuh tile_size


# -- vLLM's ScalarType id (vllm/scalar_type.py ScalarType.id; csrc/core/scalar_type.hpp) -----------------

def scalar_type_id(exponent: int, mantissa: int, signed: bool, bias: int, finite_values_only: bool,
                   nan_repr: int) -> int:
    """The int64 vLLM passes for a ScalarType: the fields packed from bit 0 in the order exponent (8 bits),
    mantissa (8), signed (1), bias (32), finite_values_only (1), nan_repr (8)."""
    val, offset = 0, 0
    for member, width in ((exponent, 8), (mantissa, 8), (int(signed), 1), (bias, 32), (int(finite_values_only), 1),
                          (nan_repr, 8)):
        val |= (int(member) & ((1 << width) - 1)) << offset
        offset += width
    return val


# scalar_types.float4_e2m1f = ScalarType.float_(2, 1, True, NanRepr.NONE): signed, bias 0, finite only, NaN none (0)
FLOAT4_E2M1F_ID = scalar_type_id(2, 1, True, 0, True, 0)


# -- the weight preparation (marlin_utils.py / marlin_utils_fp4.py), torch on any device ------------------

def marlin_padded_nk(size_n: int, size_k: int, group_size: int = GROUP_SIZE) -> tuple[int, int]:
    """marlin_utils.py ``marlin_padded_nk``: the smallest of (N up to 64, K up to lcm(128, group)) and (N up to
    128, K up to lcm(64, group)) by area, then by N + K; Marlin's GEMM and repack need one of the two."""
    import math

    def up(v: int, m: int) -> int:
        return -(-v // m) * m

    group = group_size if group_size > 0 else 1
    candidates = ((up(size_n, 64), up(size_k, math.lcm(128, group))),
                  (up(size_n, 128), up(size_k, math.lcm(64, group))))
    return min(candidates, key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))


def scale_perms() -> tuple[list[int], list[int]]:
    """marlin_utils.py ``get_scale_perms``: (scale_perm, scale_perm_single)."""
    scale_perm = [i + 8 * j for i in range(8) for j in range(8)]
    scale_perm_single = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
    return scale_perm, scale_perm_single


def permute_scales(s, size_k: int, size_n: int, group_size: int = GROUP_SIZE):
    """marlin_utils.py ``marlin_permute_scales`` (16-bit activations): S [K/group, N] -> the same shape, every
    64 consecutive entries (row-major) permuted by scale_perm when the layer has several groups along K."""
    scale_perm, scale_perm_single = scale_perms()
    if group_size < size_k and group_size != -1:
        s = s.reshape((-1, len(scale_perm)))[:, scale_perm]
    else:
        s = s.reshape((-1, len(scale_perm_single)))[:, scale_perm_single]
    return s.reshape((-1, size_n)).contiguous()


def scale_factor(marlin_scales, a_dtype) -> float:
    """marlin_utils_fp4.py ``_nvfp4_compute_scale_factor``: for bf16 activations the power of two (>= 1) that
    brings the largest scale * 2^7 up to at most 448 * 2^7; 1 for fp16."""
    import torch

    if a_dtype == torch.half:
        return 1.0
    ws = marlin_scales.float() * (2 ** 7)
    nonzero = ws > 0
    if nonzero.any():
        max_val = ws[nonzero].max()
        if max_val < 448 * (2 ** 7):
            return float((448 * (2 ** 7) / max_val).log2().floor().exp2().item())
    return 1.0


def process_scales(marlin_scales, a_dtype):
    """marlin_utils_fp4.py ``nvfp4_marlin_process_scales``: permuted scales [K/16, N] in the activation dtype ->
    (float8 bytes [K/16, N] in Marlin's S0E5M3 format, the rescale factor). In half precision: columns
    permuted [0, 2, 1, 3] within each 4, times the factor, times 2^7, below 2 (negatives included) set to 0,
    the 16 bits shifted left by one and the high byte kept: 5 exponent bits (bias 15) and 3 mantissa bits."""
    import torch

    s = marlin_scales.to(torch.half)
    s = s.view(-1, 4)[:, [0, 2, 1, 3]].view(s.size(0), -1)
    sf = scale_factor(s, a_dtype)
    if sf > 1.0:
        s = (s.float() * sf).to(torch.half)
    s = s * (2 ** 7)
    s[s < 2] = 0
    s = s.view(torch.int16) << 1
    s = s.view(torch.float8_e4m3fn)
    return s[:, 1::2].contiguous(), sf


def process_global_scale(global_scale, a_dtype):
    """marlin_utils_fp4.py ``nvfp4_marlin_process_global_scale``: the float32 global times
    2^(exponent bias difference FP4 -> activation dtype - 7): 2^(126 - 7) for bf16, 2^(14 - 7) for fp16."""
    import torch

    assert a_dtype in (torch.half, torch.bfloat16)
    target_exponent = 5 if a_dtype == torch.half else 8
    exponent_bias = 2 ** (target_exponent - 1) - 2 ** (2 - 1)
    return global_scale * (2.0 ** (exponent_bias - 7))


def prepare(codes: np.ndarray, scale_bytes: np.ndarray, global_scale: float, device, a_dtype):
    """Canonical NVFP4 parts -> what ``prepare_fp4_layer_for_marlin`` leaves on the layer: (marlin weight,
    scales, processed global, workspace, N, K, padded N, padded K)."""
    import torch

    from .fp4 import pack_nibbles_hf

    n, k = codes.shape
    pn, pk = marlin_padded_nk(n, k)
    ops = getattr(torch.ops, NAMESPACE)
    # WORKSPACE: marlin_make_workspace_new (one int32 per SM, zeroed)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    workspace = torch.zeros(sms, dtype=torch.int, device=device)
    # WEIGHT: layer.weight [N, K/2] uint8 (element 2i in the low nibble) .view(int32).T, padded, repacked
    weight = torch.from_numpy(np.ascontiguousarray(pack_nibbles_hf(codes))).to(device)
    qweight = weight.view(torch.int32).T.contiguous()
    if (pn, pk) != (n, k):         # marlin_pad_qweight: zero codes decode to 0.0
        qweight = torch.nn.functional.pad(qweight, (0, pn - n, 0, (pk - k) // 8))
    perm = torch.empty(0, dtype=torch.int, device=device)
    marlin_qweight = ops.gptq_marlin_repack(qweight, perm, pk, pn, 4, False)
    # WEIGHT SCALES: layer.weight_scale [N, K/16] E4M3 .T, to the activation dtype, padded, permuted, processed
    s = torch.from_numpy(np.ascontiguousarray(scale_bytes, np.uint8)).to(device).view(torch.float8_e4m3fn)
    s = s.T.contiguous().to(a_dtype)
    if (pn, pk) != (n, k):         # marlin_pad_scales
        s = torch.nn.functional.pad(s, (0, pn - n, 0, pk // GROUP_SIZE - s.size(0)))
    s = permute_scales(s, pk, pn)
    s, sf = process_scales(s, a_dtype)
    # GLOBAL: weight_global_scale (the multiplier) as float32, processed, divided by the rescale
    g = process_global_scale(torch.tensor(global_scale, dtype=torch.float32, device=device), a_dtype) / sf
    return marlin_qweight, s, g, workspace, n, k, pn, pk


def marlin_gemm(x, prepared):
    """``apply_fp4_marlin_linear``: X [M, K] (bf16 or fp16, on the GPU) -> Marlin's output [M, N] in X's dtype."""
    import torch

    qweight, s, g, workspace, n, k, pn, pk = prepared
    if pk != k:
        x = torch.nn.functional.pad(x, (0, pk - k))
    ops = getattr(torch.ops, NAMESPACE)
    y = ops.marlin_gemm(x.contiguous(), None, qweight, None, s, None, g, None, None, None, workspace,
                        FLOAT4_E2M1F_ID, x.shape[0], pn, pk, True, False, True, False)
    return y[:, :n] if pn != n else y


# -- availability ----------------------------------------------------------------------------------------

def lib_path() -> str:
    return os.environ.get(ENV) or DEFAULT_LIB


@lru_cache(maxsize=4)
def _load(path: str) -> str | None:
    """Load the library into torch (once per path); None, or why it cannot be."""
    import torch

    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as e:
        return f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}: rebuild it ({BUILD_HINT})"
    ops = getattr(torch.ops, NAMESPACE)
    for op in ("marlin_gemm", "gptq_marlin_repack"):
        if not hasattr(ops, op):
            return f"{path} registers no torch.ops.{NAMESPACE}.{op}: rebuild it with `bash bench/build_marlin_fp4.sh`"
    return None


def _built_arch(path: str) -> str | None:
    try:
        with open(path + ".arch") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _device_reason() -> tuple[str | None, tuple[int, int] | None]:
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'nvfp4tools[gpu]')", None
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)", None
    major, minor = torch.cuda.get_device_capability()
    if major >= 10:
        return (f"compute capability {major}.{minor}: vLLM does not run Marlin for NVFP4 there (it takes its "
                f"FlashInfer / CUTLASS FP4 GEMM on FP4 tensor cores); use the scaled_mm backend"), (major, minor)
    if major < 8:
        return (f"compute capability {major}.{minor}: this build of vLLM's Marlin targets 8.0-9.x (vLLM runs Marlin "
                f"FP4 on 7.5 with fp16 activations and 2 pipeline stages only)"), (major, minor)
    return None, (major, minor)


def available() -> str | None:
    why, cc = _device_reason()
    if why:
        return why
    path = lib_path()
    if not os.path.isfile(path):
        where = f"{ENV}={path} is not a file" if os.environ.get(ENV) else f"{ENV} is not set and {path} does not exist"
        return f"no vllm-marlin library ({where}): {BUILD_HINT}"
    arch = _built_arch(path)
    if arch and arch != f"{cc[0]}{cc[1]}":
        return (f"{path} was built for sm_{arch}, this GPU is sm_{cc[0]}{cc[1]}: rebuild it with "
                f"`CUDA_ARCH={cc[0]}{cc[1]} bash bench/build_marlin_fp4.sh`")
    return _load(path)


def _require() -> None:
    why = available()
    if why:
        raise RuntimeError(why)


# -- run and reference -------------------------------------------------------------------------------------

def _check(case: LayerCase) -> tuple[int, int]:
    from .dispatch import NotRunnable

    if case.codes is None or case.scale_bytes is None or case.global_scale is None:
        raise NotRunnable("not an NVFP4 layer: vLLM's Marlin FP4 path takes NVFP4 weights (E2M1 codes, E4M3 scales "
                          "per 16, a global scale) only")
    n, k = case.codes.shape
    if k % GROUP_SIZE or case.scale_bytes.shape != (n, k // GROUP_SIZE):
        raise NotRunnable(f"K = {k} with scales {tuple(case.scale_bytes.shape)}: Marlin FP4 needs K a multiple of 16 "
                          f"and one E4M3 scale per 16 elements")
    if case.x.shape[1] != k:
        raise NotRunnable(f"activations have {case.x.shape[1]} columns, the weight {k}")
    return n, k


def run_dtype(case: LayerCase, a_dtype) -> np.ndarray:
    """Marlin on CASE with activations of A_DTYPE (torch.bfloat16 or torch.half) -> float32 [M, N]."""
    import torch

    _check(case)
    _require()
    dev = torch.device("cuda")
    prepared = prepare(case.codes, case.scale_bytes, float(case.global_scale), dev, a_dtype)
    x = torch.from_numpy(np.ascontiguousarray(case.x, np.float32)).to(dev).to(a_dtype)
    y = marlin_gemm(x, prepared)
    torch.cuda.synchronize()
    return y.float().cpu().numpy()


def run(case: LayerCase) -> np.ndarray:
    """vLLM's Marlin FP4 GEMM on CASE with bf16 activations (vLLM's dtype for these models) -> float32 [M, N]
    (bf16 values). NotRunnable for a layer that is not NVFP4 (ModelOpt W4A4 layers run, as in vLLM on these
    GPUs, without their input scale)."""
    import torch

    return run_dtype(case, torch.bfloat16)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float -> the nearest bf16 value (ties to even), as float64 (through float32: a float64 value is first
    rounded to float32, as Marlin's fp32 result is)."""
    from .bf16 import bf16_bits_to_f32, f32_to_bf16_bits

    return bf16_bits_to_f32(f32_to_bf16_bits(np.asarray(x, np.float32))).astype(np.float64)


def reference(case: LayerCase) -> np.ndarray:
    """float64: the activations rounded to bf16, times the dequantized weight (case.w), rounded to bf16."""
    from .gemm import gemm_reference

    _check(case)
    return round_bf16(gemm_reference(round_bf16(case.x), case.w))


# -- bench ---------------------------------------------------------------------------------------------

def timer(dc):
    """``bench``: the layer prepared once as vLLM prepares it at load time (outside the timing), then a call
    of ``marlin_gemm`` on the bf16 activations (what vLLM's forward pass runs; graph-capturable, as vLLM
    captures it). ValueError where Marlin cannot take the layer."""
    import torch

    from .fp4 import unpack_nibbles_hf

    _require()
    packed = dc.packed.cpu().numpy()
    codes = unpack_nibbles_hf(packed)
    if codes.shape[1] % GROUP_SIZE:
        raise ValueError(f"K = {codes.shape[1]} is not a multiple of 16")
    prepared = prepare(codes, dc.scales.cpu().numpy(), float(dc.global_scale), dc.x.device, torch.bfloat16)
    x = dc.x.to(torch.bfloat16).contiguous()
    return lambda: marlin_gemm(x, prepared)
