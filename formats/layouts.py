"""How each format names and stores a canonical tensor: the writers' half of the readers' suffix
tables. Pure functions of (canonical name, shape): the planner knows every output's key, dtype,
shape and byte count before any byte is read.

An :class:`Out` says *what* it holds (``what``) and, for per-tensor scales, in which convention
(multiplier or divisor, see :mod:`nvfp4tools.convert.scales`); the one encoder
(:mod:`nvfp4tools.convert.encode`) turns canonical tensors into those bytes, so no writer
encodes anything itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ._ggml_types import GGML_TYPES
from ._dtypes import DTYPE_BITS

_GGML_BLOCKS = {name: (elems, nbytes) for name, elems, nbytes in GGML_TYPES.values()}

# what an output part holds
#   codes        HF-order packed E2M1 nibbles (U8 [.., out, in/2])
#   scales       E4M3 block-scale bytes
#   nvfp4_blocks ggml block_nvfp4 (codes and block scales together)
#   q4_0_blocks  ggml block_q4_0
#   int4, int4_scales, shape   compressed-tensors pack-quantized parts
#   global, input              per-tensor multipliers (``convention`` says how they are stored)
#   kv:<name>                  k/v-cache scales riding on an attention projection
#   raw                        any other tensor, cast to ``dtype`` exactly or refused
SCALAR_WHATS = ("global", "input", "shape")   # written once per action, never per row block


@dataclass(frozen=True)
class Out:
    key: str
    dtype: str                 # safetensors dtype, or the ggml type name for GGUF outputs
    shape: tuple[int, ...]     # logical, row-major (for block types: in elements, not bytes)
    what: str
    convention: str = "multiplier"   # for global/input: "multiplier" or "divisor"

    @functools.cached_property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        blk = _GGML_BLOCKS.get(self.dtype)
        if blk is not None and self.dtype not in DTYPE_BITS:
            return n // blk[0] * blk[1]
        return n * DTYPE_BITS[self.dtype] // 8

    @property
    def rows(self) -> int:
        """Rows across every leading dimension (experts included): the unit of row blocks."""
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n

    @property
    def is_scalar(self) -> bool:
        return self.what in SCALAR_WHATS or self.what.startswith("kv:")


def _base(name: str) -> tuple[str, str]:
    """(prefix, separator): 'P.weight' -> ('P', '.'); fused 'experts.gate_up_proj' -> (itself, '_')."""
    if name.endswith(".weight"):
        return name[: -len(".weight")], "."
    return name, "_"


def _nvfp4_outs(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...], *, codes: str,
                global_: str, input_: str, convention: str, kv_on_attention: bool,
                scalar_shape: tuple[int, ...] | None = None) -> list[Out]:
    """The stored parts of one NVFP4 tensor; the two safetensors layouts differ in names and the
    scale convention. Per-tensor scalars are 0-d ([E] for stacked experts) in both: ModelOpt
    writes 0-d, and compressed-tensors' own ModelOpt converter keeps them, so our output is
    byte-identical to it (llm-compressor writes [1]: SCALAR_SHAPE overrides). A fused 3-D
    parameter keeps its bare name for the codes."""
    p, sep = _base(name)
    gshape = shape[:-2] if scalar_shape is None else scalar_shape
    outs = [Out(f"{p}{sep}{codes}" if sep == "." else p, "U8", shape[:-1] + (shape[-1] // 2,), "codes"),
            Out(f"{p}{sep}weight_scale", "F8_E4M3", shape[:-1] + (shape[-1] // 16,), "scales"),
            Out(f"{p}{sep}{global_}", "F32", gshape, "global", convention)]
    if has_input:
        outs.append(Out(f"{p}{sep}{input_}", "F32", gshape, "input", convention))
    owner = p.rsplit(".", 1)[0] if kv_on_attention else p
    for k in kv:
        outs.append(Out(f"{owner}.{k}", "F32", (), f"kv:{k}"))
    return outs


class ModelOptLayout:
    """ModelOpt's ``export_hf_checkpoint`` names (modelopt/torch/export/unified_export_hf.py)."""

    name = "modelopt"
    int4 = None   # ModelOpt's safetensors export has no int4 group layout nvfp4tools writes

    @staticmethod
    def nvfp4(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...] = ()) -> list[Out]:
        # ModelOpt keeps k/v cache scales on k_proj / v_proj
        return _nvfp4_outs(name, shape, has_input, kv, codes="weight", global_="weight_scale_2",
                           input_="input_scale", convention="multiplier", kv_on_attention=False)

    @staticmethod
    def out_name(key: str) -> str:
        return key


class CTLayout:
    """compressed-tensors' names (compressed_tensors/compressors: nvfp4-pack-quantized and
    pack-quantized)."""

    name = "compressed-tensors"

    @staticmethod
    def nvfp4(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...] = (),
              scalar_shape: tuple[int, ...] | None = None) -> list[Out]:
        # compressed-tensors keeps k/v cache scales on the attention module
        return _nvfp4_outs(name, shape, has_input, kv, codes="weight_packed", global_="weight_global_scale",
                           input_="input_global_scale", convention="divisor", kv_on_attention=True,
                           scalar_shape=scalar_shape)

    @staticmethod
    def int4(name: str, shape: tuple[int, ...], group: int, scale_dtype: str) -> list[Out]:
        p, sep = _base(name)
        # a fused 3-D parameter keeps its bare name for the codes, as for NVFP4 (the reader's rule)
        return [Out(f"{p}.weight_packed" if sep == "." else p, "I32", shape[:-1] + (-(-shape[-1] // 8),), "int4"),
                Out(f"{p}{sep}weight_scale", scale_dtype, shape[:-1] + (shape[-1] // group,), "int4_scales"),
                Out(f"{p}{sep}weight_shape", "I64", (len(shape),), "shape")]

    @staticmethod
    def int8(name: str, shape: tuple[int, ...], group: int, scale_dtype: str) -> list[Out]:
        """Weight-only int8, pack-quantized as compressed-tensors packs 8 bits (four per int32 word;
        ``pack_to_int32``): the only weight-only int layout vLLM and SGLang load (their WNA16 schemes
        require pack-quantized; an int-quantized int8 weight with no input activations has no
        scheme there, docs/engine-compat.md)."""
        p, sep = _base(name)
        return [Out(f"{p}.weight_packed" if sep == "." else p, "I32", shape[:-1] + (shape[-1] // 4,), "int8"),
                Out(f"{p}{sep}weight_scale", scale_dtype, shape[:-1] + (shape[-1] // group,), "int8_scales"),
                Out(f"{p}{sep}weight_shape", "I64", (len(shape),), "shape")]

    @staticmethod
    def out_name(key: str) -> str:
        """The canonical name the compressed-tensors reader gives the tensor stored under KEY."""
        return key[: -len(".weight_packed")] + ".weight" if key.endswith(".weight_packed") else key


class PlainLayout:
    """Plain safetensors: unquantized tensors under their own names, nothing else."""

    name = "safetensors"
    nvfp4 = None
    int4 = None

    @staticmethod
    def out_name(key: str) -> str:
        return key

