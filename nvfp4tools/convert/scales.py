"""Per-tensor scale conventions: the one place where a global or input scale changes convention.

Inside nvfp4tools every per-tensor scale is a float32 **multiplier** (docs/model.md). ModelOpt
stores multipliers (``weight_scale_2``, ``input_scale``); compressed-tensors stores their
reciprocals (``weight_global_scale``, ``input_global_scale``: compressed-tensors
``entrypoints/convert/converters/modelopt_nvfp4.py``); GGUF's ``.scale`` / ``.input_scale``
sidecars are multipliers (llama.cpp ``convert_hf_to_gguf.py``, ``_generate_nvfp4_tensors``).
An output part says which it stores (:attr:`formats.layouts.Out.convention`); this module turns
multipliers into those bytes and back, bit-exactly.

Plain Python, no numpy: a conversion handles thousands of 4-byte scalars, for which numpy's
per-call cost would dominate.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Iterable, Mapping

from nvfp4tools.model import Checkpoint, TensorPart

F32 = struct.Struct("<f")
# safetensors __metadata__ key: the original fp32 bits of scales whose reciprocal does not round-trip
EXACT_META_KEY = "nvfp4tools.exact_globals"


def f32_round(x: float) -> float:
    """A Python float rounded to the nearest float32 (ties to even), overflowing to infinity."""
    try:
        return F32.unpack(F32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def recip32(x: float) -> float:
    """The correctly rounded float32 of 1/x. Rounding 1/x to binary64 and then to binary32 is
    innocuous for division because 53 >= 2 x 24 + 2 (Figueroa, "When is double rounding
    innocuous?", 1995)."""
    return f32_round(1.0 / x) if x != 0.0 else math.copysign(math.inf, x)


def reciprocal_exact(x: float, original: float | None = None) -> float:
    """The float32 reciprocal of a float32 value, and the way back bit-exactly.

    ``fp32(1/fp32(1/s))`` is not always ``s`` (1 ulp off for some values: vLLM #42549). Writers
    emit the correctly rounded ``fp32(1/s)``, byte-identical to compressed-tensors' own converter,
    and record the original bits of every value whose reciprocal does not round-trip in the
    output's metadata (:data:`EXACT_META_KEY`); the reverse conversion takes the recorded value
    when its reciprocal equals the stored one, so ModelOpt -> compressed-tensors -> ModelOpt is
    byte-identical.
    """
    x = float(x)
    if original is not None and recip32(float(original)) == x:
        return float(original)
    return recip32(x)


def round_trips(v: float) -> bool:
    """Whether the reciprocal of the reciprocal of float32 V is V again."""
    return F32.pack(recip32(recip32(v))) == F32.pack(v)


def multipliers(part: TensorPart, stored: Iterable[float],
                exact: Mapping[str, float | list[float]]) -> list[float]:
    """A scale part's stored values as float32 multipliers (EXACT: recorded originals by key, one
    value or one per stored value)."""
    vals = list(stored)
    if part.stored_as == "divisor":
        original = exact.get(part.key)
        if isinstance(original, list) and len(original) == len(vals):
            return [reciprocal_exact(v, o) for v, o in zip(vals, original)]
        one = original if isinstance(original, float) and len(vals) == 1 else None
        return [reciprocal_exact(v, one) for v in vals]
    if part.stored_dtype not in ("F32", "BF16", "F16"):
        return [f32_round(v) for v in vals]
    return vals


def encode(mults: list[float], convention: str, n: int, what: str) -> bytes:
    """float32 multipliers as an output part stores them: as they are ("multiplier") or as the
    correctly rounded reciprocals ("divisor"); one value is broadcast over N slots."""
    vals = [recip32(v) for v in mults] if convention == "divisor" else list(mults)
    if len(vals) != n:
        if len(vals) != 1:
            raise ValueError(f"{len(vals)} {what} values for {n} slots")
        vals = vals * n
    return struct.pack(f"<{len(vals)}f", *vals)


def exact_meta(ckpt: Checkpoint) -> dict[str, float | list[float]]:
    """Original fp32 values recorded by an earlier nvfp4tools convert (see reciprocal_exact): one
    value per key, or a list (per-expert values of a fused tensor)."""
    per_file = ckpt.metadata.get("safetensors_metadata") if isinstance(ckpt.metadata, dict) else None
    out: dict[str, float | list[float]] = {}
    for meta in (per_file or {}).values():
        if isinstance(meta, dict) and EXACT_META_KEY in meta:
            try:
                for k, bits in json.loads(meta[EXACT_META_KEY]).items():
                    out[str(k)] = [F32.unpack(bytes.fromhex(b))[0] for b in bits] if isinstance(bits, list) \
                        else F32.unpack(bytes.fromhex(bits))[0]
            except (ValueError, TypeError, AttributeError, struct.error):
                pass   # a damaged record only costs the bit-exact way back, never correctness
    return out
