"""Stored dtypes, one table: the safetensors dtype names (safetensors ``src/tensor.rs`` ``Dtype``),
which the GGUF reader also uses for ggml's unquantized types (F32, F16, BF16, ...). Stdlib only:
``inspect`` reads it and never imports numpy.

Per dtype: bits per element; the numpy dtype an array of its values is read as (8-bit floats as
their bytes, decoded by ``kernels_ref``; None where numpy has no plain view: BF16 is read as its
uint16 bits and widened, F4/F6 are sub-byte, C64 is not read); the ``struct`` code of one
little-endian scalar, for the dtypes a per-tensor scale may have (None: not read as a scale).
The readers (``_safetensors``, ``hub``, ``nvfp4tools.io``, ``nvfp4tools.convert.canon``), the writers
(``_st_writer``, ``layouts``) and ``synth`` size and read tensors from it.
"""

from __future__ import annotations

from typing import NamedTuple


class Dtype(NamedTuple):
    bits: int
    numpy: str | None
    struct: str | None


DTYPES: dict[str, Dtype] = {
    "BOOL": Dtype(8, "bool", None),
    "U8": Dtype(8, "uint8", "B"),
    "I8": Dtype(8, "int8", "b"),
    "U16": Dtype(16, "uint16", None),
    "I16": Dtype(16, "int16", "h"),
    "U32": Dtype(32, "uint32", None),
    "I32": Dtype(32, "int32", "i"),
    "U64": Dtype(64, "uint64", None),
    "I64": Dtype(64, "int64", "q"),
    "F16": Dtype(16, "float16", "e"),
    "BF16": Dtype(16, None, None),
    "F32": Dtype(32, "float32", "f"),
    "F64": Dtype(64, "float64", "d"),
    "C64": Dtype(64, None, None),
    "F8_E4M3": Dtype(8, "uint8", None),
    "F8_E5M2": Dtype(8, "uint8", None),
    "F8_E8M0": Dtype(8, "uint8", None),
    "F4": Dtype(4, None, None),
    "F6_E2M3": Dtype(6, None, None),
    "F6_E3M2": Dtype(6, None, None),
}

# dtype -> bits per element
DTYPE_BITS: dict[str, int] = {name: d.bits for name, d in DTYPES.items()}
# dtype -> struct code of one scalar, for the dtypes a per-tensor scale may have (BF16 aside)
SCALAR_STRUCT: dict[str, str] = {name: d.struct for name, d in DTYPES.items() if d.struct}
