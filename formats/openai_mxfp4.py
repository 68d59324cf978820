"""gpt-oss's own MXFP4 checkpoints (``quantization_config.quant_method == "mxfp4"``, as OpenAI
published openai/gpt-oss-20b and -120b and transformers' Mxfp4HfQuantizer saves them).

Only the MoE experts are quantized (transformers ``integrations/mxfp4.py`` replaces the
``GptOssExperts`` modules only; vLLM's ``Mxfp4Config`` leaves every other linear unquantized).
Each fused expert parameter ``experts.gate_up_proj`` / ``experts.down_proj`` is stored as

* ``<param>_blocks``: uint8 ``[E, out, in/32, 16]``, two E2M1 codes per byte, element 2i in the
  low nibble (``convert_moe_packed_tensors``: ``lut[blk & 0x0F]`` then ``lut[blk >> 4]``);
* ``<param>_scales``: uint8 ``[E, out, in/32]``, E8M0 exponents with bias 127 (``scales - 127``);
* ``<param>_bias``: bf16 ``[E, out]``, unquantized.

Rows are ``[out, in]`` (transformers transposes to its ``[E, in, out]`` parameter after
dequantizing), so the bytes of one row are the ``[out, in/2]`` packing every MXFP4 consumer in
nvfp4tools reads: the logical tensor is ``[E, out, in]`` with the OCP MX scheme (block 32, E8M0).
"""

from __future__ import annotations

from nvfp4tools import schemes
from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint, Finding, QuantScheme

from . import register
from ._assemble import Suffix
from ._safetensors import declaration, discover
from ._stfamily import build, config_quant_method
from .base import FormatSpec

# "_blocks" / "_scales" follow the fused parameter's name with "_" and have no bare sibling
SUFFIXES = (Suffix("blocks", "data", fused=True), Suffix("scales", "block_scale", fused=True),
            Suffix("weight", "data"))


def sniff(path: str) -> bool:
    decl = declaration(path)
    return decl is not None and config_quant_method(decl[0]) == "mxfp4"


def read(path: str) -> Checkpoint:
    src = discover(path)
    if src is None or config_quant_method(src.config) != "mxfp4":
        raise UnsupportedError(f"{path}: not a gpt-oss MXFP4 checkpoint (config.json quant_method is not 'mxfp4')")
    qc = src.config.get("quantization_config") or {}
    keep = tuple(x for x in (qc.get("modules_to_not_convert") or []) if isinstance(x, str))

    def expect(module: str) -> QuantScheme | None:
        return schemes.MXFP4 if ".experts." in module + "." else None

    return build(
        src, format_name="mxfp4", suffixes=SUFFIXES, expect=expect,
        config_label="config.json quantization_config (quant_method mxfp4: the MoE experts)",
        producer="transformers" if src.config.get("transformers_version") else None,
        producer_version=str(src.config["transformers_version"]) if src.config.get("transformers_version") else None,
        quant_method="mxfp4", algorithm="MXFP4", kv_cache_scheme=None,
        # modules_to_not_convert names what the quantizer leaves alone, by module substring; it is
        # not an exclusion list over quantized tensors, so it is recorded, not matched
        patterns=(), pattern_label="", findings=list[Finding](),
        metadata={"modules_to_not_convert": ", ".join(keep)} if keep else None,
    )


SPEC = register(FormatSpec("mxfp4", sniff, read, "gpt-oss MXFP4 (quant_method mxfp4: experts as _blocks/_scales)"))
