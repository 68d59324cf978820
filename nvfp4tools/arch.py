"""Architecture description from a Hugging Face ``config.json`` (stdlib only).

Every family is described by the same :class:`~nvfp4tools.model.ArchInfo`: a per-layer list
of attention facts (full or sliding, KV heads, K/V head dims, K=V, shared KV, MLA latent) plus
the MLP/MoE widths. Field meanings follow transformers' configuration classes; where a family
derives something (Gemma 4's global layers, Qwen2's windowed layers) the rule and its source
are next to the code.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import FormatError
from .model import ArchInfo, LayerAttention, TensorInfo

# Families whose full layers take head_dim/kv-heads overrides the Gemma 4 way.
_GEMMA4_TYPES = {"gemma4", "gemma4_text", "diffusion_gemma", "diffusion_gemma_text"}

# What a config that leaves a key out means: the default of the family's transformers config class
# (configuration_<family>.py; pinned against the installed transformers by tests/test_arch.py).
# Only keys real configs omit and whose default is not derived from other keys: a Gemma 3
# text_config carries no head_dim (256, not hidden_size / heads) and no max_position_embeddings.
# Families absent here derive head_dim as hidden_size // num_attention_heads, as transformers does.
# A multimodal config's own model_type ("gemma3") stands for its text config class.
CONFIG_DEFAULTS: dict[str, dict[str, int]] = {
    "gemma": {"head_dim": 256, "max_position_embeddings": 8192},
    "gemma2": {"head_dim": 256, "max_position_embeddings": 8192},
    "gemma3": {"head_dim": 256, "max_position_embeddings": 131072},
    "gemma3_text": {"head_dim": 256, "max_position_embeddings": 131072},
    "gemma3n_text": {"head_dim": 256, "max_position_embeddings": 32768},
    "gemma4_text": {"head_dim": 256, "max_position_embeddings": 131072},
    "diffusion_gemma_text": {"head_dim": 256, "max_position_embeddings": 131072},
    "gpt_oss": {"head_dim": 64, "max_position_embeddings": 131072},
    "qwen3": {"head_dim": 128, "max_position_embeddings": 32768},
    "llama4_text": {"head_dim": 128, "max_position_embeddings": 131072},
}


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language-model part of a (possibly multimodal) config.

    Multimodal configs nest it as ``text_config`` (Gemma 3/4, DiffusionGemma, Llava, ...);
    keys the nested dict lacks are taken from the top level.
    """
    inner = config.get("text_config")
    if isinstance(inner, Mapping):
        merged = {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "audio_config")}
        merged.update(inner)
        return merged
    return config


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            return int(v)
    return default


def _layer_types(cfg: Mapping[str, Any], n_layers: int, model_type: str) -> list[str]:
    """'full' or 'sliding' per layer, following each family's config convention."""
    lt = cfg.get("layer_types")
    if lt is not None:
        # transformers refuses a layer_types list that does not name every layer once
        # (configuration_utils.layer_type_validation); sizing the cache from part of it would not
        if not isinstance(lt, list) or len(lt) != n_layers or not all(isinstance(t, str) for t in lt):
            got = f"{len(lt)} entries" if isinstance(lt, list) else type(lt).__name__
            raise FormatError(f"config.json: layer_types has {got}, expected a list of {n_layers} strings "
                              f"(num_hidden_layers)", hint="fix layer_types or num_hidden_layers in config.json")
        return ["sliding" if "sliding" in t or "local" in t else "full" for t in lt]
    window = cfg.get("sliding_window")
    if model_type in _GEMMA4_TYPES or model_type.startswith("gemma3"):
        # transformers Gemma3/Gemma4 configs: pattern 6 by default (5 sliding : 1 full);
        # Gemma 4 forces the last layer to full attention.
        pattern = _int(cfg, "sliding_window_pattern", default=6) or 6
        types = ["sliding" if (i + 1) % pattern else "full" for i in range(n_layers)]
        if model_type in _GEMMA4_TYPES and types:
            types[-1] = "full"
        return types
    if model_type.startswith("gemma2") or model_type == "cohere2":
        # Gemma 2 alternates, even layers sliding (transformers Gemma2 layer_types default).
        return ["sliding" if i % 2 == 0 else "full" for i in range(n_layers)]
    if model_type.startswith("qwen2") or model_type.startswith("qwen3"):
        # Qwen2/3: windowed only with use_sliding_window, for layers >= max_window_layers.
        if cfg.get("use_sliding_window") and window:
            mwl = _int(cfg, "max_window_layers", default=n_layers) or 0
            return ["sliding" if i >= mwl else "full" for i in range(n_layers)]
        return ["full"] * n_layers
    if model_type in ("mistral", "mixtral") and window:
        return ["sliding"] * n_layers
    return ["full"] * n_layers


def _per_layer_overrides(cfg: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    plc = cfg.get("per_layer_config")
    out: dict[int, Mapping[str, Any]] = {}
    if isinstance(plc, Mapping):
        for k, v in plc.items():
            try:
                out[int(k)] = v if isinstance(v, Mapping) else {}
            except (TypeError, ValueError):
                continue
    return out


def parse_arch(config: Mapping[str, Any]) -> ArchInfo | None:
    """Build an :class:`ArchInfo` from a config.json dict; None when it is not a decoder LLM."""
    cfg = text_config(config)
    model_type = str(cfg.get("model_type") or config.get("model_type") or "unknown")
    n_layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    n_heads = _int(cfg, "num_attention_heads", "n_head")
    if not n_layers or not hidden or not n_heads:
        return None
    n_kv = _int(cfg, "num_key_value_heads", "num_kv_heads", default=n_heads) or n_heads
    if n_kv > n_heads or n_heads % n_kv:
        # grouped-query attention shares each KV head among a whole number of query heads
        raise FormatError(f"config.json: num_key_value_heads {n_kv} does not divide num_attention_heads {n_heads}",
                          hint="fix num_key_value_heads in config.json (the k_proj weight has n_kv x head_dim rows)")
    defaults = CONFIG_DEFAULTS.get(model_type, {})
    head_dim = (_int(cfg, "head_dim") or defaults.get("head_dim") or hidden // n_heads)
    window = _int(cfg, "sliding_window")
    types = _layer_types(cfg, n_layers, model_type)
    if "sliding" in types and not window:
        # every engine sizes a sliding layer's cache by its window; without one the config is broken
        raise FormatError(f"config.json: {types.count('sliding')} sliding-attention layers but sliding_window is "
                          f"{cfg.get('sliding_window')!r}, expected a window size > 0",
                          hint="set sliding_window, or make layer_types full_attention")

    layers: list[LayerAttention] = []
    is_mla = cfg.get("kv_lora_rank") is not None and cfg.get("qk_rope_head_dim") is not None
    if is_mla:
        # DeepSeek-V2/V3 MLA: engines cache the compressed latent (kv_lora_rank) plus the
        # decoupled RoPE key (qk_rope_head_dim) once per token per layer, not per head
        # (vLLM MLA backends; llama.cpp deepseek2 with MLA).
        latent = int(cfg["kv_lora_rank"]) + int(cfg["qk_rope_head_dim"])
        k_dim = (_int(cfg, "qk_nope_head_dim", default=0) or 0) + int(cfg["qk_rope_head_dim"])
        v_dim = _int(cfg, "v_head_dim", default=k_dim) or k_dim
        for _ in range(n_layers):
            layers.append(LayerAttention("full", n_heads, n_heads, k_dim, v_dim, mla_latent_dim=latent))
    else:
        overrides = _per_layer_overrides(cfg)
        gemma4 = model_type in _GEMMA4_TYPES
        k_eq_v_flag = bool(cfg.get("attention_k_eq_v", False))
        # transformers Gemma4TextConfig.__post_init__: full layers use global_head_dim (default
        # 512) and, only when attention_k_eq_v is set, num_global_key_value_heads. transformers
        # >= 5.2x serialises the same facts as per_layer_config {"5": {"head_dim": 512, ...}}.
        global_hd = _int(cfg, "global_head_dim", default=512 if gemma4 else None)
        global_kv = _int(cfg, "num_global_key_value_heads")
        shared = _int(cfg, "num_kv_shared_layers", default=0) or 0
        first_shared = n_layers - shared
        for i, kind in enumerate(types):
            kv, hd = n_kv, head_dim
            if gemma4 and kind == "full":
                if overrides:
                    o = overrides.get(i, {})
                    hd = int(o.get("head_dim", hd))
                    kv = int(o.get("num_key_value_heads", kv))
                else:
                    hd = global_hd or hd
                    if k_eq_v_flag and global_kv:
                        kv = global_kv
            elif i in overrides:
                hd = int(overrides[i].get("head_dim", hd))
                kv = int(overrides[i].get("num_key_value_heads", kv))
            shared_from = None
            if shared and i >= first_shared:
                # Gemma 3n/4 KV sharing: the last num_kv_shared_layers reuse the cache of the
                # last earlier layer of the same type (transformers kv_sharing_modes).
                same = [j for j in range(first_shared) if types[j] == kind]
                shared_from = same[-1] if same else None
            layers.append(LayerAttention(
                kind, n_heads, kv, hd, hd,
                window=window if kind == "sliding" else None,
                k_eq_v=gemma4 and k_eq_v_flag and kind == "full",
                kv_shared_from=shared_from,
            ))

    # Experts: each family spells them differently.
    n_experts = _int(cfg, "num_experts", "num_local_experts", "n_routed_experts")
    if n_experts == 0:
        n_experts = None
    top_k = _int(cfg, "top_k_experts", "num_experts_per_tok", "experts_per_token", "moe_topk")
    moe_width = _int(cfg, "moe_intermediate_size", "expert_feed_forward_length")
    intermediate = _int(cfg, "intermediate_size", "n_inner", "ffn_dim")
    dense_with_experts = False
    if n_experts:
        if model_type in ("mixtral", "gpt_oss") and moe_width is None:
            moe_width, intermediate = intermediate, None   # intermediate_size is the expert width
        if model_type in _GEMMA4_TYPES:
            dense_with_experts = bool(cfg.get("enable_moe_block", True))
    n_shared = _int(cfg, "n_shared_experts")
    if n_shared is None and _int(cfg, "shared_expert_intermediate_size"):
        n_shared = 1
    archs = config.get("architectures") or cfg.get("architectures") or ()
    return ArchInfo(
        model_type=model_type,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        vocab_size=_int(cfg, "vocab_size", default=0) or 0,
        layers=tuple(layers),
        intermediate_size=intermediate,
        n_experts=n_experts,
        n_experts_active=top_k if n_experts else None,
        expert_intermediate_size=moe_width if n_experts else None,
        n_shared_experts=n_shared,
        dense_mlp_with_experts=dense_with_experts,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        max_position_embeddings=_int(cfg, "max_position_embeddings", "n_positions",
                                     default=defaults.get("max_position_embeddings")),
        has_vision="vision_config" in config,
        architectures=tuple(str(a) for a in archs) if isinstance(archs, list) else (),
    )


def arch_to_dict(arch: ArchInfo | None) -> dict[str, Any] | None:
    """JSON-ready architecture summary (used by inspect and estimate)."""
    if arch is None:
        return None
    kinds: dict[str, int] = {}
    for l in arch.layers:
        kinds[l.kind] = kinds.get(l.kind, 0) + 1
    return {
        "model_type": arch.model_type,
        "architectures": list(arch.architectures),
        "n_layers": arch.n_layers,
        "n_full_attention_layers": sum(1 for l in arch.layers if l.kind == "full"),
        "n_sliding_attention_layers": sum(1 for l in arch.layers if l.kind == "sliding"),
        "hidden_size": arch.hidden_size,
        "n_heads": arch.n_heads,
        "vocab_size": arch.vocab_size,
        "intermediate_size": arch.intermediate_size,
        "n_experts": arch.n_experts,
        "n_experts_active": arch.n_experts_active,
        "expert_intermediate_size": arch.expert_intermediate_size,
        "n_shared_experts": arch.n_shared_experts,
        "dense_mlp_with_experts": arch.dense_mlp_with_experts,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "max_position_embeddings": arch.max_position_embeddings,
        "has_vision": arch.has_vision,
        "layers": [
            {
                "index": i, "kind": l.kind, "n_kv_heads": l.n_kv_heads, "head_dim_k": l.head_dim_k,
                "head_dim_v": l.head_dim_v, "window": l.window, "k_eq_v": l.k_eq_v,
                "kv_shared_from": l.kv_shared_from, "mla_latent_dim": l.mla_latent_dim,
            }
            for i, l in enumerate(arch.layers)
        ],
    }


def check_against_tensors(arch: ArchInfo | None, tensors: Mapping[str, TensorInfo]) -> None:
    """Raise FormatError where the stored weights contradict the config, so that no command sizes,
    converts or verifies a model that no engine can load (each engine builds the model from the
    config and then loads the weights into it):

    * k_proj has n_kv_heads x head_dim rows (a fused qkv_proj (n_heads + 2 n_kv_heads) x head_dim),
      exactly what the KV cache stores per token: a head_dim the config leaves out where the
      family's default does not hold, or a wrong num_key_value_heads, would give a KV estimate no
      engine reaches;
    * the projections reading the residual stream take hidden_size inputs (q, k, v, qkv, gate, up,
      gate_up) and those writing it give hidden_size outputs (o, down);
    * every decoder layer 0 .. num_hidden_layers - 1 holds weights, and a layer's projections come
      whole (q with k and o, k with v unless K=V, no k/v/o without q, gate/up with down; a layer
      sharing another's KV cache may store no K/V).

    MLA attention (DeepSeek) caches a latent and has its own projections: its attention is not
    checked; experts are not either (their layouts differ by family)."""
    if arch is None:
        return
    hidden = arch.hidden_size
    present: dict[int, dict[str, set[str]]] = {}
    for t in tensors.values():
        if t.layer is None or t.role not in ("attention", "mlp", "experts", "shared_expert", "router", "norm"):
            continue
        by_role = present.setdefault(t.layer, {})
        if t.layer >= len(arch.layers) or t.expert is not None or t.role not in ("attention", "mlp"):
            by_role.setdefault(t.role, set())
            continue
        if len(t.shape) != 2 or not t.name.endswith(".weight") or t.proj is None:
            continue   # a loose scale tensor (FP8 weight_scale_inv), a norm, a bias
        la = arch.layers[t.layer]
        if t.role == "attention" and la.mla_latent_dim is not None:
            continue
        by_role.setdefault(t.role, set()).add(t.proj)
        rows, cols = t.shape
        if t.role == "attention" and t.proj in ("k", "qkv"):
            heads = la.n_kv_heads if t.proj == "k" else la.n_heads + 2 * la.n_kv_heads
            want = heads * la.head_dim_k
            if rows != want:
                fit = f"; head_dim {rows // heads} would match" if rows % heads == 0 else ""
                what = "n_kv_heads" if t.proj == "k" else "n_heads + 2 n_kv_heads"
                raise FormatError(
                    f"{t.name}: {rows} rows, but config.json gives layer {t.layer} {what} = {heads} x head_dim "
                    f"{la.head_dim_k} = {want}{fit}",
                    hint="fix head_dim / num_key_value_heads in config.json so that the weights load; "
                         "the KV-cache size follows from them")
        reads, writes = ("q", "k", "v", "qkv", "gate", "up", "gate_up"), ("o", "down")
        if (t.proj in reads and cols != hidden) or (t.proj in writes and rows != hidden):
            side, got = ("input", cols) if t.proj in reads else ("output", rows)
            raise FormatError(f"{t.name}: {side} width {got}, but config.json gives hidden_size {hidden}",
                              hint="fix hidden_size in config.json, or the weights do not belong to this config")
    missing = [i for i in range(arch.n_layers) if i not in present]
    if missing:
        raise FormatError(f"config.json: num_hidden_layers {arch.n_layers}, but no weight of decoder layer "
                          f"{missing[0]} is stored ({len(missing)} layers missing)",
                          hint="fix num_hidden_layers, or add the missing shards")
    for i in range(arch.n_layers):
        att, mlp = present[i].get("attention", set()), present[i].get("mlp", set())
        need = []
        if "q" in att:
            # a layer reading another layer's cache (Gemma 3n/4 KV sharing) may store no K/V weights
            need += [p for p in ("k", "o") if p not in att and not (p == "k" and arch.layers[i].kv_shared_from is not None)]
        if "k" in att and "v" not in att and not arch.layers[i].k_eq_v:
            need.append("v")
        if "qkv" in att and "o" not in att:
            need.append("o")
        if att & {"k", "v", "o"} and not att & {"q", "qkv"}:
            need.append("q")
        if mlp & {"gate", "up", "gate_up"} and "down" not in mlp:
            need.append("down")
        if "down" in mlp and not mlp & {"up", "gate_up"}:
            need.append("up")
        if need:
            raise FormatError(f"decoder layer {i}: no {need[0]}_proj weight is stored beside its other projections",
                              hint="the checkpoint is incomplete: re-export it, or restore the missing tensor")
