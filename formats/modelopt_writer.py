"""Writing ModelOpt NVFP4 checkpoints: ModelOpt's export names (:class:`layouts.ModelOptLayout`)
and its two config files, ``hf_quant_config.json`` and config.json's ``quantization_config``
(Model-Optimizer ``modelopt/torch/export/unified_export_hf.py``, ``convert_hf_config.py``; the
layout of its 0.47 export).
"""

from __future__ import annotations

import json
import os
from typing import Any

from nvfp4tools.convert.plan import Plan

from ._st_target import SafetensorsTarget
from .layouts import ModelOptLayout

TARGET_LAYOUT = "ModelOpt 0.47 unified HF export"


class ModelOptWriter(SafetensorsTarget):
    name = "modelopt"
    layout = ModelOptLayout
    quantize_choices = ("nvfp4",)

    def configs(self, p: Plan, out_dir: str) -> None:
        from nvfp4tools._version import __version__

        qs = self.summary(p)
        algo = "NVFP4" if qs["w4a4"] else "W4A16_NVFP4"
        excl = self.exclusions(p, regex_ok=False)
        producer = {"name": "nvfp4tools", "version": __version__, "target": TARGET_LAYOUT}
        hq = {"producer": producer,
              "quantization": {"quant_algo": algo, "kv_cache_quant_algo": "FP8" if qs["kv"] else None,
                               "group_size": 16, "exclude_modules": excl}}
        with open(os.path.join(out_dir, "hf_quant_config.json"), "w") as fh:
            json.dump(hq, fh, indent=4)
        grp: dict[str, Any] = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
        qc: dict[str, Any] = {"config_groups": {"group_0": {"weights": grp, "targets": ["Linear"]}},
                              "ignore": excl, "quant_algo": algo, "producer": producer, "quant_method": "modelopt"}
        if qs["w4a4"]:
            qc["config_groups"]["group_0"]["input_activations"] = grp
        if qs["kv"]:
            qc["kv_cache_scheme"] = {"dynamic": False, "num_bits": 8, "type": "float"}
        cfg = self.base_config(p)
        cfg["quantization_config"] = qc
        with open(os.path.join(out_dir, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
