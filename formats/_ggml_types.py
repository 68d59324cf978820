"""GGML tensor types: id -> (name, elements per block, bytes per block). Stdlib only.

Values from ggml (``ggml.h`` ``enum ggml_type`` and ``ggml.c`` ``type_traits``), mirrored by
gguf-py ``constants.GGML_QUANT_SIZES``; a test checks this table against the installed gguf package.
:data:`BLOCK_SCALES` says where each block keeps its scales (``ggml-common.h`` structs); a test
checks it against the dequantizers (zeroing those fields zeroes the block).
Ids 4 and 5 (Q4_2, Q4_3) and 31-33, 36-38 were removed from ggml and are rejected.
"""

from __future__ import annotations

from typing import NamedTuple

# id: (name, block_size elements, bytes per block)   (block layout written as its arithmetic)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    # ggml-common.h block_q8_1: fp16 d and s, then 32 int8 (static_assert 2*sizeof(ggml_half) + QK8_1);
    # gguf-py's GGML_QUANT_SIZES says 4 + 4 + 32 (fp32 d and s, the pre-2023 layout): ggml wins
    9: ("Q8_1", 32, 2 + 2 + 32),
    10: ("Q2_K", 256, 2 + 2 + 256 // 16 + 256 // 4),
    11: ("Q3_K", 256, 2 + 256 // 4 + 256 // 8 + 12),
    12: ("Q4_K", 256, 2 + 2 + 256 // 2 + 12),
    13: ("Q5_K", 256, 2 + 2 + 256 // 2 + 256 // 8 + 12),
    14: ("Q6_K", 256, 2 + 256 // 2 + 256 // 4 + 256 // 16),
    15: ("Q8_K", 256, 4 + 256 + 256 // 8),
    16: ("IQ2_XXS", 256, 2 + 256 // 4),
    17: ("IQ2_XS", 256, 2 + 256 // 4 + 256 // 32),
    18: ("IQ3_XXS", 256, 2 + 256 // 4 + 256 // 8),
    19: ("IQ1_S", 256, 2 + 256 // 8 + 256 // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", 256, 2 + 256 // 4 + 256 // 8 + 256 // 32 + 4),
    22: ("IQ2_S", 256, 2 + 256 // 4 + 256 // 16),
    23: ("IQ4_XS", 256, 2 + 2 + 256 // 2 + 256 // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 256 // 8 + 256 // 16 + 256 // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 2 + 4 * 13),
    35: ("TQ2_0", 256, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
    40: ("NVFP4", 64, 4 + 32),
    41: ("Q1_0", 128, 2 + 16),
}
UNQUANTIZED = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}

# general.file_type (llama_ftype) -> name, for the summary line
FILE_TYPES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0", 1024: "GUESSED",
}


class ScaleField(NamedTuple):
    """Scales stored inside each block of a ggml type (``ggml-common.h`` block structs)."""

    offset: int   # byte offset inside the block
    count: int    # consecutive scales of KIND
    kind: str     # "f16"; "e8m0" (MXFP4: 2^(e-127)); "ue4m3" (NVFP4: unsigned E4M3, 0x7F decodes as 0)
    role: str     # "d" multiplies the codes; "min" is added or subtracted (Q4_1 m, K-quant dmin)


# ggml type name -> its in-block scales: what inspect --deep and verify check for non-finite and all-zero
# scales. IQ1_M is absent: its fp16 d is spread over the top nibbles of four 16-bit scale words.
BLOCK_SCALES: dict[str, tuple[ScaleField, ...]] = {
    "Q4_0": (ScaleField(0, 1, "f16", "d"),),
    "Q4_1": (ScaleField(0, 1, "f16", "d"), ScaleField(2, 1, "f16", "min")),
    "Q5_0": (ScaleField(0, 1, "f16", "d"),),
    "Q5_1": (ScaleField(0, 1, "f16", "d"), ScaleField(2, 1, "f16", "min")),
    "Q8_0": (ScaleField(0, 1, "f16", "d"),),
    "Q1_0": (ScaleField(0, 1, "f16", "d"),),
    "Q2_K": (ScaleField(256 // 16 + 256 // 4, 1, "f16", "d"), ScaleField(256 // 16 + 256 // 4 + 2, 1, "f16", "min")),
    "Q3_K": (ScaleField(256 // 8 + 256 // 4 + 12, 1, "f16", "d"),),
    "Q4_K": (ScaleField(0, 1, "f16", "d"), ScaleField(2, 1, "f16", "min")),
    "Q5_K": (ScaleField(0, 1, "f16", "d"), ScaleField(2, 1, "f16", "min")),
    "Q6_K": (ScaleField(256 // 2 + 256 // 4 + 256 // 16, 1, "f16", "d"),),
    "IQ2_XXS": (ScaleField(0, 1, "f16", "d"),),
    "IQ2_XS": (ScaleField(0, 1, "f16", "d"),),
    "IQ2_S": (ScaleField(0, 1, "f16", "d"),),
    "IQ3_XXS": (ScaleField(0, 1, "f16", "d"),),
    "IQ3_S": (ScaleField(0, 1, "f16", "d"),),
    "IQ1_S": (ScaleField(0, 1, "f16", "d"),),
    "IQ4_NL": (ScaleField(0, 1, "f16", "d"),),
    "IQ4_XS": (ScaleField(0, 1, "f16", "d"),),
    "TQ1_0": (ScaleField(4 * 13, 1, "f16", "d"),),
    "TQ2_0": (ScaleField(256 // 4, 1, "f16", "d"),),
    "MXFP4": (ScaleField(0, 1, "e8m0", "d"),),
    "NVFP4": (ScaleField(0, 4, "ue4m3", "d"),),
}

# name -> (block_size elements, bytes per block), derived from GGML_TYPES
BY_NAME: dict[str, tuple[int, int]] = {name: (block, nbytes) for name, block, nbytes in GGML_TYPES.values()}
