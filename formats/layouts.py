"""How each safetensors-based format names and stores a canonical tensor (the writers' half of
the readers' suffix tables). Pure functions of (canonical name, kind, shape): the convert planner
computes every output's key, dtype and shape before any byte is read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Out:
    key: str
    dtype: str
    shape: tuple[int, ...]
    what: str            # "codes" | "scales" | "global" | "input" | "raw" | "int4" | "int4_scales" | "shape" | "kv:k_scale"


def _base(name: str) -> tuple[str, str]:
    """(prefix, separator): 'P.weight' -> ('P', '.'); fused 'experts.gate_up_proj' -> (itself, '_')."""
    if name.endswith(".weight"):
        return name[: -len(".weight")], "."
    return name, "_"


def _nvfp4_outs(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...], *, codes: str,
                global_: str, input_: str, kv_on_attention: bool) -> list[Out]:
    """The stored parts of one NVFP4 tensor; the two safetensors layouts differ only in the names.

    Per-tensor scalars are 0-d ([E] for stacked experts) in both: ModelOpt writes 0-d, and
    compressed-tensors' own ModelOpt converter keeps them (llm-compressor writes [1]; both load),
    so our output is byte-identical to it. A fused 3-D parameter keeps its bare name for the codes.
    """
    p, sep = _base(name)
    gshape = shape[:-2]
    outs = [Out(f"{p}{sep}{codes}" if sep == "." else p, "U8", shape[:-1] + (shape[-1] // 2,), "codes"),
            Out(f"{p}{sep}weight_scale", "F8_E4M3", shape[:-1] + (shape[-1] // 16,), "scales"),
            Out(f"{p}{sep}{global_}", "F32", gshape, "global")]
    if has_input:
        outs.append(Out(f"{p}{sep}{input_}", "F32", gshape, "input"))
    owner = p.rsplit(".", 1)[0] if kv_on_attention else p
    for k in kv:
        outs.append(Out(f"{owner}.{k}", "F32", (), f"kv:{k}"))
    return outs


class ModelOptLayout:
    name = "modelopt"

    @staticmethod
    def nvfp4(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...] = ()) -> list[Out]:
        # ModelOpt keeps k/v cache scales on k_proj / v_proj
        return _nvfp4_outs(name, shape, has_input, kv, codes="weight", global_="weight_scale_2",
                           input_="input_scale", kv_on_attention=False)


class CTLayout:
    name = "compressed-tensors"

    @staticmethod
    def nvfp4(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...] = ()) -> list[Out]:
        # compressed-tensors keeps k/v cache scales on the attention module
        return _nvfp4_outs(name, shape, has_input, kv, codes="weight_packed", global_="weight_global_scale",
                           input_="input_global_scale", kv_on_attention=True)

    @staticmethod
    def int4(name: str, shape: tuple[int, ...], group: int, scale_dtype: str) -> list[Out]:
        p, sep = _base(name)
        return [Out(f"{p}{sep}weight_packed", "I32", shape[:-1] + (-(-shape[-1] // 8),), "int4"),
                Out(f"{p}{sep}weight_scale", scale_dtype, shape[:-1] + (shape[-1] // group,), "int4_scales"),
                Out(f"{p}{sep}weight_shape", "I64", (len(shape),), "shape")]


LAYOUTS = {"modelopt": ModelOptLayout, "compressed-tensors": CTLayout}


def f32_bytes(a) -> bytes:
    import numpy as np  # (here: planning a conversion needs no numpy)

    return np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes()
