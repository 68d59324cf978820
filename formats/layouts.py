"""How each safetensors-based format names and stores a canonical tensor (the writers' half of
the readers' suffix tables). Pure functions of (canonical name, kind, shape): the convert planner
computes every output's key, dtype and shape before any byte is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


class ModelOptLayout:
    name = "modelopt"

    @staticmethod
    def nvfp4(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...] = ()) -> list[Out]:
        p, sep = _base(name)
        lead = shape[:-2]
        gshape = lead if lead else ()        # ModelOpt: 0-d per tensor; [E] for stacked experts
        outs = [Out(f"{p}{sep}weight" if sep == "." else p, "U8", shape[:-1] + (shape[-1] // 2,), "codes"),
                Out(f"{p}{sep}weight_scale", "F8_E4M3", shape[:-1] + (shape[-1] // 16,), "scales"),
                Out(f"{p}{sep}weight_scale_2", "F32", gshape, "global")]
        if has_input:
            outs.append(Out(f"{p}{sep}input_scale", "F32", gshape, "input"))
        for k in kv:  # ModelOpt keeps k/v cache scales on k_proj / v_proj
            outs.append(Out(f"{p}.{k}", "F32", (), f"kv:{k}"))
        return outs


class CTLayout:
    name = "compressed-tensors"

    @staticmethod
    def nvfp4(name: str, shape: tuple[int, ...], has_input: bool, kv: tuple[str, ...] = ()) -> list[Out]:
        p, sep = _base(name)
        lead = shape[:-2]
        # compressed-tensors' own ModelOpt converter keeps ModelOpt's 0-d scalars; we do the same so
        # our output is byte-identical to it (llm-compressor writes [1]; both load)
        gshape = lead if lead else ()
        # a fused 3-D parameter keeps its bare name for the packed codes (as ModelOpt's layout does)
        outs = [Out(f"{p}{sep}weight_packed" if sep == "." else p, "U8", shape[:-1] + (shape[-1] // 2,), "codes"),
                Out(f"{p}{sep}weight_scale", "F8_E4M3", shape[:-1] + (shape[-1] // 16,), "scales"),
                Out(f"{p}{sep}weight_global_scale", "F32", gshape, "global")]
        if has_input:
            outs.append(Out(f"{p}{sep}input_global_scale", "F32", gshape, "input"))
        attn = p.rsplit(".", 1)[0]  # compressed-tensors keeps k/v cache scales on the attention module
        for k in kv:
            outs.append(Out(f"{attn}.{k}", "F32", (), f"kv:{k}"))
        return outs

    @staticmethod
    def int4(name: str, shape: tuple[int, ...], group: int, scale_dtype: str) -> list[Out]:
        p, sep = _base(name)
        return [Out(f"{p}{sep}weight_packed", "I32", shape[:-1] + (-(-shape[-1] // 8),), "int4"),
                Out(f"{p}{sep}weight_scale", scale_dtype, shape[:-1] + (shape[-1] // group,), "int4_scales"),
                Out(f"{p}{sep}weight_shape", "I64", (len(shape),), "shape")]


LAYOUTS = {"modelopt": ModelOptLayout, "compressed-tensors": CTLayout}


def f32_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes()
