"""Writing plain safetensors checkpoints (BF16/FP16/FP32 tensors, no quantization config): what a
GGUF's unquantized weights go back to (``convert X.gguf OUT --to safetensors``)."""

from __future__ import annotations

import json
import os

from nvfp4tools.convert.plan import Action, Kind, Plan
from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint, TensorInfo

from ._st_target import SafetensorsTarget
from .layouts import Out, PlainLayout


class PlainWriter(SafetensorsTarget):
    name = "safetensors"
    layout = PlainLayout
    quantize_choices = ()

    def lossless(self, t: TensorInfo) -> bool:
        return not t.scheme.quantized

    def _lossy(self, t: TensorInfo, opts) -> bool:
        return opts.allow_lossy and t.scheme.quantized

    def _quantize(self, src: Checkpoint, t: TensorInfo, to: str) -> Action:
        """--allow-lossy: a quantized tensor written dequantized, rounded to BF16 (error reported)."""
        return Action(Kind.QUANTIZE, (t.name,), (Out(t.name, "BF16", tuple(t.shape), "raw"),), False, t.name,
                      quantize_to="bf16", note=f"from {t.scheme.name}, dequantized")

    def configs(self, p: Plan, out_dir: str) -> None:
        quantized = [o.key for a in p.actions for o in a.outs if o.what != "raw"]
        if quantized:   # the planner refuses these; a plain checkpoint never carries 4-bit codes
            raise UnsupportedError(f"'{quantized[0]}' is quantized; plain safetensors hold unquantized tensors only")
        cfg = self.base_config(p)
        cfg.pop("quantization_config", None)
        with open(os.path.join(out_dir, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
