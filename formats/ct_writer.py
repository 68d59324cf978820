"""Writing compressed-tensors checkpoints: its names (:class:`layouts.CTLayout`) and config.json's
``quantization_config`` (compressed-tensors ``quantization/quant_config.py``; NVFP4 as its own
ModelOpt converter writes it, ``entrypoints/convert/converters/modelopt_nvfp4.py``; int4 as
llm-compressor's W4A16 ``pack-quantized``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from nvfp4tools.convert.plan import Plan
from nvfp4tools.errors import UnsupportedError

from ._st_target import SafetensorsTarget
from .layouts import CTLayout

TARGET_VERSION = "0.20.0"   # the compressed-tensors release whose layout is written


class CTWriter(SafetensorsTarget):
    name = "compressed-tensors"
    layout = CTLayout
    quantize_choices = ("int4", "nvfp4")

    def configs(self, p: Plan, out_dir: str) -> None:
        from nvfp4tools._version import __version__

        qs = self.summary(p)
        if qs["nvfp4"] and (qs["int4"] or qs["int8"]):
            raise UnsupportedError(f"{p.src.source}: NVFP4 and int tensors in one compressed-tensors output "
                                   "are not written (one family of schemes per checkpoint here)",
                                   hint="requantize all to one scheme with --allow-lossy --quantize")
        groups: list[tuple[dict[str, Any], str]] = []   # (group, its format), one per scheme
        if qs["nvfp4"]:
            w = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
                 "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
            groups.append(({"targets": ["Linear"], "weights": w, "format": "nvfp4-pack-quantized",
                            "output_activations": None,
                            "input_activations": dict(w, dynamic="local", observer="static_minmax")
                            if qs["w4a4"] else None}, "nvfp4-pack-quantized"))
        if qs["int4"] or not (qs["nvfp4"] or qs["int8"]):
            g = qs["groups"][0] if qs["groups"] else 32
            w = {"num_bits": 4, "type": "int", "symmetric": True, "group_size": g, "strategy": "group",
                 "dynamic": False}
            groups.append(({"targets": ["Linear"], "weights": w, "format": "pack-quantized", "input_activations": None,
                            "output_activations": None}, "pack-quantized"))
        if qs["int8"]:
            # GGUF Q8_0 written back: int8 group 32 with fp16 scales, pack-quantized 8-bit (four per
            # int32 word): the weight-only int8 layout vLLM's and SGLang's WNA16 schemes load
            w = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": qs["int8_groups"][0],
                 "strategy": "group", "dynamic": False}
            groups.append(({"targets": ["Linear"], "weights": w, "format": "pack-quantized", "input_activations": None,
                            "output_activations": None}, "pack-quantized"))
        if len(groups) > 1:   # each group targets its own modules by exact name
            by_kind = self.modules_by_kind(p)
            for grp, _ in groups:
                kind = ("codes" if grp["weights"]["type"] == "float" else
                        "int8" if grp["weights"]["num_bits"] == 8 else "int4")
                grp["targets"] = sorted(by_kind[kind])
        fmt = groups[0][1] if len(groups) == 1 else "mixed-precision"
        grp = groups[0][0]
        qc = {"config_groups": {f"config_group_{i}": g for i, (g, _) in enumerate(groups)}, "format": fmt, "ignore": self.exclusions(p, regex_ok=True),
              "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                                  "symmetric": True} if qs["kv"] else None,
              "quant_method": "compressed-tensors", "quantization_status": "compressed", "version": TARGET_VERSION,
              "global_compression_ratio": None, "producer": {"name": "nvfp4tools", "version": __version__}}
        cfg = self.base_config(p)
        cfg["quantization_config"] = qc
        with open(os.path.join(out_dir, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
