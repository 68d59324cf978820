"""The checkpoints the fuzzer mutates: small synthetic ones in every on-disk layout nvfp4tools reads.

Each is built by the product's own writers (``nvfp4tools.synth`` for safetensors, ``convert --to gguf``
for GGUF) from one tiny Gemma-4-style config, so a mutant costs milliseconds per command.
"""

from __future__ import annotations

import copy
import json
import os

from nvfp4tools.synth import GEMMA4_TINY, synthesize

# Two layers (one sliding, one full), two experts, 64 wide: every tensor role, a 1.5 MB checkpoint.
TINY = copy.deepcopy(GEMMA4_TINY)
TINY["text_config"].update(
    vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=32, global_head_dim=64, sliding_window=16,
    layer_types=["sliding_attention", "full_attention"], num_experts=2, top_k_experts=1, moe_intermediate_size=64)
TINY["vision_config"].update(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                             num_key_value_heads=1, head_dim=32)

# name -> (synthesize kwargs); GGUF seeds are converted from these below
SAFETENSORS_SEEDS: dict[str, dict] = {
    "modelopt": {"fmt": "modelopt"},
    "modelopt-sharded-fused": {"fmt": "modelopt", "shards": 2, "experts": "fused"},
    "ct-nvfp4": {"fmt": "compressed-tensors"},
    "ct-w4a16": {"fmt": "compressed-tensors-w4a16", "shards": 2},
    "bf16": {"fmt": "bf16"},
}
# name -> (source seed, convert arguments)
GGUF_SEEDS: dict[str, tuple[str, list[str]]] = {
    "gguf-q4_0": ("bf16", ["--allow-lossy", "--quantize", "q4_0"]),
    "gguf-nvfp4": ("modelopt", []),
}

# the convert --dry-run target that plans a real conversion from each seed's format
DRY_RUN_TARGET = {"modelopt": "compressed-tensors", "modelopt-sharded-fused": "compressed-tensors",
                  "ct-nvfp4": "modelopt", "ct-w4a16": "gguf", "bf16": "gguf", "gguf-q4_0": "compressed-tensors",
                  "gguf-nvfp4": "modelopt"}


def build(base: str) -> dict[str, str]:
    """Write every seed under BASE; returns name -> checkpoint path (a folder, or a .gguf file)."""
    from click.testing import CliRunner

    from nvfp4tools.cli import cli

    out: dict[str, str] = {}
    for name, kw in SAFETENSORS_SEEDS.items():
        path = os.path.join(base, name)
        synthesize(path, config=TINY, group_size=32, **kw)
        out[name] = path
    # compressed-tensors with module-name targets and regex ignores, so the pattern paths are fuzzed
    cfg_path = os.path.join(out["ct-nvfp4"], "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    qc = cfg["quantization_config"]
    qc["ignore"] += [r"re:.*mlp\.gate$", "model.language_model.layers.0.router*", "re:^lm_head"]
    qc["config_groups"]["group_0"]["targets"] = ["Linear", r"re:.*self_attn\.(q|k|v|o)_proj$"]
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2)
    for name, (src, extra) in GGUF_SEEDS.items():
        path = os.path.join(base, name + ".gguf")
        r = CliRunner().invoke(cli, ["convert", out[src], path, "--to", "gguf", *extra])
        if r.exit_code != 0:
            raise RuntimeError(f"seed {name}: convert failed ({r.exit_code}): {r.output[-500:]}")
        out[name] = path
    return out
