"""Synthetic checkpoints in the real on-disk layouts (ModelOpt, compressed-tensors, BF16).

Built from a config.json-style architecture (Gemma 4 naming: ``model.language_model.layers.N``,
per-expert ``experts.E.{gate,up,down}_proj`` or fused ``experts.gate_up_proj [E, 2I, H]``,
vision tower ``model.vision_tower``). Two value modes:

* real values: random normal weights quantized with the reference quantizers (ModelOpt-exact
  NVFP4; compressed-tensors int4), q/k/v and gate/up sharing one global scale as ModelOpt does;
* header-only: every large tensor is a sparse hole, only the per-tensor scales are written, so a
  full-size 26B checkpoint costs no disk and ``inspect``/``estimate`` see the real headers.
"""

from __future__ import annotations

import copy
import json
import os
import struct
from typing import Any, Callable, Iterator

from ._version import __version__
from .errors import UsageError

# google/gemma-4-26B-A4B-it text and vision configs (values: ../shared/docs/gemma4-memory.md 1.1).
GEMMA4_26B_A4B: dict[str, Any] = {
    "architectures": ["Gemma4ForConditionalGeneration"],
    "model_type": "gemma4",
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
        "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8,
        "num_global_key_value_heads": 2, "head_dim": 256, "global_head_dim": 512, "sliding_window": 1024,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5, "attention_k_eq_v": True,
        "enable_moe_block": True, "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
        "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0, "final_logit_softcapping": 30.0,
        "max_position_embeddings": 262144, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                               "rope_theta": 1000000.0}},
    },
    "vision_config": {
        "model_type": "gemma4_vision", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 72, "patch_size": 16,
        "position_embedding_size": 10240,
    },
}

# The tiny Gemma 4 MoE the interop tests build with transformers (../shared/docs/oracles.md).
GEMMA4_TINY: dict[str, Any] = {
    "architectures": ["Gemma4ForConditionalGeneration"],
    "model_type": "gemma4",
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "gemma4_text", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1,
        "num_global_key_value_heads": 1, "head_dim": 64, "global_head_dim": 128, "sliding_window": 64,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"], "attention_k_eq_v": True,
        "enable_moe_block": True, "num_experts": 8, "top_k_experts": 2, "moe_intermediate_size": 64,
        "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0, "max_position_embeddings": 4096,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
        # as transformers' Gemma4TextConfig writes them (its defaults; the real configs carry them too)
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                               "rope_theta": 1000000.0}},
    },
    "vision_config": {
        "model_type": "gemma4_vision", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32, "patch_size": 16,
        "position_embedding_size": 10240,
    },
}

PRESETS = {"gemma4-26b-a4b": GEMMA4_26B_A4B, "gemma4-tiny": GEMMA4_TINY}

# recipe -> roles quantized
RECIPES = {
    "all-linear": ("attention", "mlp", "experts"),       # community 24 GB checkpoints
    "mlp-experts": ("mlp", "experts"),                   # attention BF16 (FusenAI layout)
    "experts-only": ("experts",),                        # nvidia/Gemma-4-26B-A4B-NVFP4 layout
    "none": (),
}
FORMATS = ("modelopt", "compressed-tensors", "compressed-tensors-w4a16", "bf16")


def _layers(cfg: dict[str, Any], experts_layout: str) -> Iterator[tuple[str, tuple[int, ...], str | None]]:
    """(name, shape, linear-role or None) for every tensor of a Gemma-4-style model."""
    t = cfg["text_config"]
    H, V = t["hidden_size"], t["vocab_size"]
    nh, nkv, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    ghd, gkv = t.get("global_head_dim", hd), t.get("num_global_key_value_heads") or nkv
    E, I, Ie = t.get("num_experts") or 0, t["intermediate_size"], t.get("moe_intermediate_size") or 0
    p = "model.language_model"
    yield f"{p}.embed_tokens.weight", (V, H), None
    for L, lt in enumerate(t["layer_types"]):
        q = f"{p}.layers.{L}"
        full = lt == "full_attention"
        d, kv = (ghd, gkv) if full else (hd, nkv)
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
                  "pre_feedforward_layernorm_2"):
            yield f"{q}.{n}.weight", (H,), None
        yield f"{q}.self_attn.q_proj", (nh * d, H), "attention"
        yield f"{q}.self_attn.k_proj", (kv * d, H), "attention"
        if not (full and t.get("attention_k_eq_v")):
            yield f"{q}.self_attn.v_proj", (kv * d, H), "attention"
        yield f"{q}.self_attn.o_proj", (H, nh * d), "attention"
        yield f"{q}.self_attn.q_norm.weight", (d,), None
        yield f"{q}.self_attn.k_norm.weight", (d,), None
        yield f"{q}.mlp.gate_proj", (I, H), "mlp"
        yield f"{q}.mlp.up_proj", (I, H), "mlp"
        yield f"{q}.mlp.down_proj", (H, I), "mlp"
        if E:
            yield f"{q}.router.proj.weight", (E, H), None
            yield f"{q}.router.scale", (H,), None
            yield f"{q}.router.per_expert_scale", (E,), None
            if experts_layout == "fused":
                yield f"{q}.experts.gate_up_proj", (E, 2 * Ie, H), "experts"
                yield f"{q}.experts.down_proj", (E, H, Ie), "experts"
            else:
                for e in range(E):
                    yield f"{q}.experts.{e}.gate_proj", (Ie, H), "experts"
                    yield f"{q}.experts.{e}.up_proj", (Ie, H), "experts"
                    yield f"{q}.experts.{e}.down_proj", (H, Ie), "experts"
        yield f"{q}.layer_scalar", (1,), None
    yield f"{p}.norm.weight", (H,), None
    v = cfg.get("vision_config")
    if v:
        vh, vi, vhd, vnh = v["hidden_size"], v["intermediate_size"], v["head_dim"], v["num_attention_heads"]
        vp = "model.vision_tower"
        yield f"{vp}.patch_embedder.input_proj.weight", (vh, 3 * v["patch_size"] ** 2), None
        yield f"{vp}.patch_embedder.position_embedding_table", (2, v["position_embedding_size"], vh), None
        for L in range(v["num_hidden_layers"]):
            q = f"{vp}.encoder.layers.{L}"
            for n in ("q_proj", "k_proj", "v_proj"):
                yield f"{q}.self_attn.{n}.linear.weight", (vnh * vhd, vh), None
            yield f"{q}.self_attn.o_proj.linear.weight", (vh, vnh * vhd), None
            yield f"{q}.self_attn.q_norm.weight", (vhd,), None
            yield f"{q}.self_attn.k_norm.weight", (vhd,), None
            yield f"{q}.mlp.gate_proj.linear.weight", (vi, vh), None
            yield f"{q}.mlp.up_proj.linear.weight", (vi, vh), None
            yield f"{q}.mlp.down_proj.linear.weight", (vh, vi), None
            for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                      "post_feedforward_layernorm"):
                yield f"{q}.{n}.weight", (vh,), None
        yield "model.embed_vision.embedding_projection.weight", (H, vh), None


def _group_of(name: str) -> str:
    """Fused-scale group: q/k/v of one attention, gate/up of one MLP or expert."""
    for a, b in ((".q_proj", ".qkv"), (".k_proj", ".qkv"), (".v_proj", ".qkv"),
                 (".gate_proj", ".gate_up"), (".up_proj", ".gate_up")):
        if name.endswith(a):
            return name[: -len(a)] + b
    return name


def _f32(v: float) -> bytes:
    return struct.pack("<f", v)


class _Plan:
    """Every stored tensor: (key, dtype, shape) plus how to make its bytes."""

    def __init__(self) -> None:
        self.specs: list[tuple[str, str, tuple[int, ...]]] = []
        self.makers: dict[str, Callable[[], bytes | None]] = {}

    def add(self, key: str, dtype: str, shape: tuple[int, ...], maker: Callable[[], bytes | None]) -> None:
        self.specs.append((key, dtype, shape))
        self.makers[key] = maker


def synthesize(out_dir: str, *, preset: str = "gemma4-tiny", fmt: str = "modelopt", recipe: str = "all-linear",
               header_only: bool = False, shards: int = 1, experts: str = "per-expert", seed: int = 0,
               group_size: int = 32, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a synthetic checkpoint to OUT_DIR; returns a summary dict."""
    if preset not in PRESETS and config is None:
        raise UsageError(f"unknown preset {preset!r}", hint=f"known: {', '.join(PRESETS)}")
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint=f"known: {', '.join(FORMATS)}")
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}", hint=f"known: {', '.join(RECIPES)}")
    if fmt == "bf16":
        recipe = "none"
    cfg = copy.deepcopy(config or PRESETS[preset])
    quant_roles = RECIPES[recipe]
    os.makedirs(out_dir, exist_ok=True)

    rng = None
    if not header_only:
        import numpy as np
        rng = np.random.default_rng(seed)

    plan = _Plan()
    quantized: list[str] = []
    excluded: set[str] = set()
    # Scalars shared by a fused group, so q/k/v and gate/up carry identical globals (ModelOpt
    # requantize_resmooth_fused_llm_layers / sync_moe_gate_up_amax).
    group_skipped: list[str] = []
    group_scale: dict[str, Any] = {}
    tensor_cache: dict[str, Any] = {}
    weights_cache: dict[str, Any] = {}

    def real_weight(name: str, shape: tuple[int, ...]):
        import numpy as np
        if name not in weights_cache:
            weights_cache.clear()
            weights_cache[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02)
        return weights_cache[name]

    def bf16_bytes(name: str, shape: tuple[int, ...], ones: bool = False) -> Callable[[], bytes | None]:
        def make() -> bytes | None:
            if header_only:
                return None
            import ml_dtypes
            import numpy as np
            arr = np.ones(shape, np.float32) if ones else rng.standard_normal(shape, dtype=np.float32) * 0.02
            return arr.astype(ml_dtypes.bfloat16).tobytes()
        return make

    for name, shape, lrole in _layers(cfg, experts):
        is_fused = lrole == "experts" and experts == "fused"
        if fmt == "compressed-tensors-w4a16" and shape[-1] % group_size:
            lrole_q = None  # a group wider than in_features cannot be quantized: left BF16 (and ignored)
            if lrole in quant_roles:
                group_skipped.append(name)
        else:
            lrole_q = lrole
        if lrole_q is None or lrole not in quant_roles:
            key = name if (lrole is None or is_fused) else name + ".weight"
            ones = "norm" in name or name.endswith("layer_scalar") or name.endswith("per_expert_scale") \
                or name.endswith("router.scale")
            plan.add(key, "BF16", shape, bf16_bytes(key, shape, ones))
            if lrole is not None:
                excluded.add(name)
            continue
        quantized.append(name)
        # the formats' own names and shapes (formats/layouts.py), as the writers use them
        from nvfp4tools.formats.layouts import CTLayout, ModelOptLayout

        canon = name if is_fused else name + ".weight"
        out_f, in_f = shape[-2], shape[-1]
        lead = shape[:-2]
        n_lead = 1
        for d in lead:
            n_lead *= d
        grp = _group_of(name)

        def nvfp4_parts(name=name, shape=shape, grp=grp):
            # Computed once per tensor (whichever part is written first); only the latest tensor
            # is kept, so memory stays bounded by one layer whatever the model size.
            if tensor_cache.get("name") == ("nv", name):
                return tensor_cache["value"]
            import numpy as np
            from nvfp4tools.kernels_ref.nvfp4 import global_scale_for, quantize_nvfp4
            if header_only:
                res = (None, None, np.float32(0.02 * 4.5 / 2688.0))
            else:
                w = real_weight(name, shape)
                if grp not in group_scale:
                    # fused members share one global; 5% headroom over this member's amax
                    group_scale[grp] = global_scale_for(np.max(np.abs(w)) * np.float32(1.05))
                g = group_scale[grp]
                t = quantize_nvfp4(w, g)
                res = (t.packed.tobytes(), t.block_scale.tobytes(), g)
            tensor_cache["name"], tensor_cache["value"] = ("nv", name), res
            return res

        input_scale = 4.0 / 2688.0  # static activation amax 4.0

        def scalar(value: Callable[[], float], convention: str, n: int = n_lead) -> Callable[[], bytes]:
            return lambda: _f32(value() if convention == "multiplier" else _recip32(value())) * n

        if fmt in ("modelopt", "compressed-tensors"):
            # llm-compressor writes compressed-tensors' per-tensor scalars as [1] (ModelOpt: 0-d)
            outs = (ModelOptLayout.nvfp4(canon, shape, True) if fmt == "modelopt"
                    else CTLayout.nvfp4(canon, shape, True, scalar_shape=(n_lead,)))
            makers = {"codes": lambda f=nvfp4_parts: f()[0], "scales": lambda f=nvfp4_parts: f()[1]}
            for o in outs:
                if o.what == "global":
                    maker = scalar(lambda f=nvfp4_parts: float(f()[2]), o.convention)
                elif o.what == "input":
                    maker = scalar(lambda: input_scale, o.convention)
                else:
                    maker = makers[o.what]
                plan.add(o.key, o.dtype, o.shape, maker)
        else:  # compressed-tensors W4A16 pack-quantized

            def int4_parts(name=name, shape=shape):
                if tensor_cache.get("name") != ("i4", name):
                    import ml_dtypes
                    from nvfp4tools.kernels_ref.int4 import pack_int4_to_int32, quantize_int4_sym
                    res = (None, None)
                    if not header_only:
                        q, sc = quantize_int4_sym(real_weight(name, shape), group_size, ml_dtypes.bfloat16)
                        res = (pack_int4_to_int32(q).tobytes(), sc.tobytes())
                    tensor_cache["name"], tensor_cache["value"] = ("i4", name), res
                return tensor_cache["value"]
            makers = {"int4": lambda f=int4_parts: f()[0], "int4_scales": lambda f=int4_parts: f()[1],
                      "shape": lambda s=shape: struct.pack("<%dq" % len(s), *s)}
            for o in CTLayout.int4(canon, shape, group_size, "BF16"):
                plan.add(o.key, o.dtype, o.shape, makers[o.what])

    # Shard on module boundaries so a weight and its scales stay in one file.
    from nvfp4tools.formats._st_writer import nbytes_of, shard_file_name, write_index, write_safetensors
    total = sum(nbytes_of(d, s) for _, d, s in plan.specs)
    per = total / max(1, shards)
    buckets: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    acc = 0
    prev_mod = None
    for spec in plan.specs:
        mod = spec[0].rsplit(".", 1)[0]
        if acc >= per * len(buckets) and len(buckets) < shards and mod != prev_mod:
            buckets.append([])
        buckets[-1].append(spec)
        acc += nbytes_of(spec[1], spec[2])
        prev_mod = mod
    files: list[str] = []
    weight_map: dict[str, str] = {}
    meta = {"format": "pt", "producer": f"nvfp4tools synth {__version__}"}
    for i, bucket in enumerate(buckets):
        fname = shard_file_name(i + 1, len(buckets))
        write_safetensors(os.path.join(out_dir, fname), bucket, lambda k: plan.makers[k](), meta)
        files.append(fname)
        for spec in bucket:
            weight_map[spec[0]] = fname
    if len(buckets) > 1:
        write_index(out_dir, weight_map, total)

    _write_configs(out_dir, cfg, fmt, recipe, excluded, group_size, group_skipped)
    return {"path": out_dir, "files": files, "n_tensors": len(plan.specs), "tensor_bytes": total,
            "n_quantized_modules": len(quantized), "format": fmt, "recipe": recipe, "header_only": header_only}


def _recip32(x: float) -> float:
    import numpy as np
    return float(np.float32(1.0) / np.float32(x))


def _exclude_patterns(cfg: dict[str, Any], recipe: str) -> list[str]:
    """The exclude list ModelOpt writes for this recipe (prefix-wildcard summaries)."""
    t = cfg["text_config"]
    p = "model.language_model.layers"
    pats = ["lm_head", "model.embed_vision*", "model.vision_tower*"]
    for L in range(t["num_hidden_layers"]):
        pats.append(f"{p}.{L}.router*")
        if "attention" not in RECIPES[recipe]:
            pats.append(f"{p}.{L}.self_attn*")
        if "mlp" not in RECIPES[recipe]:
            pats.append(f"{p}.{L}.mlp*")
    return sorted(pats)


def _write_configs(out_dir: str, cfg: dict[str, Any], fmt: str, recipe: str, excluded: set[str],
                   group_size: int, extra_ignore: list[str] | None = None) -> None:
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("transformers_version", "5.23.0")
    cfg["dtype"] = "bfloat16"
    excludes = _exclude_patterns(cfg, recipe)
    if fmt == "modelopt":
        hq = {"producer": {"name": "modelopt", "version": "0.47.0"},
              "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                               "exclude_modules": excludes}}
        with open(os.path.join(out_dir, "hf_quant_config.json"), "w") as fh:
            json.dump(hq, fh, indent=4)
        group = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
        cfg["quantization_config"] = {
            "config_groups": {"group_0": {"input_activations": group, "weights": group, "targets": ["Linear"]}},
            "ignore": excludes, "quant_algo": "NVFP4", "producer": {"name": "modelopt", "version": "0.47.0"},
            "quant_method": "modelopt"}
    elif fmt in ("compressed-tensors", "compressed-tensors-w4a16"):
        ignore = ["lm_head", "re:.*vision_tower.*", "re:.*embed_vision.*", "re:.*router.*"]
        if "attention" not in RECIPES[recipe]:
            ignore.append("re:.*self_attn.*")
        if "mlp" not in RECIPES[recipe]:
            ignore.append("re:.*\\.mlp\\..*")
        ignore += sorted(extra_ignore or [])
        if fmt == "compressed-tensors":
            w = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16, "strategy": "tensor_group",
                 "dynamic": False, "scale_dtype": "torch.float8_e4m3fn", "actorder": None, "block_structure": None,
                 "observer": "static_minmax", "observer_kwargs": {}}
            a = dict(w, dynamic="local")
            groups = {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": a,
                                  "output_activations": None, "format": "nvfp4-pack-quantized"}}
            form = "nvfp4-pack-quantized"
        else:
            w = {"num_bits": 4, "type": "int", "symmetric": True, "group_size": group_size, "strategy": "group",
                 "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax",
                 "observer_kwargs": {}}
            groups = {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": None,
                                  "output_activations": None, "format": "pack-quantized"}}
            form = "pack-quantized"
        cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": form,
                                      "quantization_status": "compressed", "config_groups": groups,
                                      "ignore": ignore, "kv_cache_scheme": None, "version": "0.20.0",
                                      "global_compression_ratio": None, "sparsity_config": {},
                                      "transform_config": {}}
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
