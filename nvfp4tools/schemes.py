"""Quantization schemes as data. Readers pick one of these; nothing else invents a scheme.

Sizes per element are exact (no float bits-per-weight approximations): NVFP4 stores
4 bits per element plus one E4M3 byte per 16 elements plus a 4-byte fp32 global per tensor.
"""

from __future__ import annotations

from .model import QuantScheme

BF16 = QuantScheme("bf16", "bf16", 16, quantized=False)
FP16 = QuantScheme("fp16", "fp16", 16, quantized=False)
FP32 = QuantScheme("fp32", "fp32", 32, quantized=False)
FP64 = QuantScheme("fp64", "fp64", 64, quantized=False)
INT_PLAIN = QuantScheme("int", "int", 32, quantized=False)   # integer buffers (ids, shapes)
BOOL = QuantScheme("bool", "bool", 8, quantized=False)

# NVFP4: E2M1 elements, block 16, E4M3 block scale, fp32 per-tensor global.
# W4A4 when a static activation scale is stored (ModelOpt "NVFP4", CT NVFP4 preset);
# W4A16 otherwise (ModelOpt "W4A16_NVFP4", CT "NVFP4A16").
NVFP4 = QuantScheme("nvfp4", "e2m1", 4, 16, "e4m3", True, activations="nvfp4")
NVFP4_A16 = QuantScheme("nvfp4", "e2m1", 4, 16, "e4m3", True, activations=None)
MXFP4 = QuantScheme("mxfp4", "e2m1", 4, 32, "e8m0", False, activations=None)

FP8 = QuantScheme("fp8", "e4m3", 8, None, None, False, activations="fp8")
FP8_A16 = QuantScheme("fp8", "e4m3", 8, None, None, False, activations=None)
INT8 = QuantScheme("int8", "int8", 8, None, None, False, activations="int8")
INT8_A16 = QuantScheme("int8", "int8", 8, None, None, False, activations=None)

UNQUANTIZED_BY_DTYPE = {
    "BF16": BF16, "F16": FP16, "F32": FP32, "F64": FP64,
    "I64": INT_PLAIN, "I32": INT_PLAIN, "I16": INT_PLAIN, "I8": INT_PLAIN, "U8": INT_PLAIN,
    "U16": INT_PLAIN, "U32": INT_PLAIN, "U64": INT_PLAIN, "BOOL": BOOL,
}


def int_group(bits: int, group_size: int | None, symmetric: bool, actorder: bool = False) -> QuantScheme:
    """Integer weight-only scheme, e.g. compressed-tensors ``pack-quantized`` W4A16.

    ``group_size`` None or -1 means per-channel.
    """
    g = "ch" if group_size in (None, -1) else f"g{group_size}"
    name = f"int{bits}-{g}-{'sym' if symmetric else 'asym'}" + ("-actorder" if actorder else "")
    return QuantScheme(name, f"int{bits}", bits, None if group_size in (None, -1) else group_size,
                       "f16", False, activations=None, symmetric=symmetric)


def ggml(name: str, bits_per_element: float, block_size: int, block_scale: str | None) -> QuantScheme:
    """A GGML block type as a scheme (Q4_0, Q8_0, K-quants, ...)."""
    return QuantScheme(name.lower(), "ggml", bits_per_element, block_size, block_scale, False,
                       activations=None, quantized=True)
