"""A Gemma 4 GGUF llama.cpp wrote, back to transformers' ``Gemma4ForCausalLM`` (text model).

What llama.cpp's converter does to a Gemma 4 checkpoint (``conversion/gemma.py`` ``Gemma4Model``,
``Gemma3Model``) and how each step is undone:

* names (gguf-py ``tensor_mapping.py``): renamed back by :data:`NAMES`; three are not ``.weight``
  in transformers: ``layer_output_scale.weight`` is the ``layer_scalar`` buffer,
  ``ffn_gate_inp.scale`` is ``router.scale`` and, in a file whose down experts are not NVFP4,
  ``ffn_down_exps.scale`` is ``router.per_expert_scale`` (``Gemma4Model.modify_tensors``);
* the fused experts ``experts.gate_up_proj`` [E, 2I, H] (gate rows first, transformers
  ``Gemma4TextExperts``: ``linear(x, gate_up_proj[e]).chunk(2)``) and ``experts.down_proj``
  are written as they are (``ffn_gate_up_exps`` / ``ffn_down_exps``): nothing to undo. Experts
  the target keeps quantized (Q4_0, Q8_0 or NVFP4 to compressed-tensors) go one tensor per expert
  (``experts.E.{gate,up,down}_proj``, :func:`targets`), the layout quantized Gemma 4 experts
  have outside transformers;
* norms: ``Gemma4Model.norm_shift`` is 0 (transformers' ``Gemma4RMSNorm`` multiplies by the weight
  itself, not by 1 + weight as Gemma 3 does), so no offset is undone; norms, the router and the
  scalars are written F32 and go back to the file's BF16/F16 when every value is one;
* ``token_embd``: ``Gemma3Model.modify_tensors`` keeps only the tokenizer's rows; the GGUF has no
  record of more, so ``vocab_size`` is the rows it holds (a note says so);
* ``rope_freqs`` (``Gemma4Model.generate_extra_tensors``): 1.0 for the rotated and 1e30 for the
  unrotated frequency pairs of the full-attention layers' proportional RoPE; read back as its
  ``partial_rotary_factor``, not written;
* NVFP4 down experts: ``_generate_nvfp4_tensors`` multiplies ``router.per_expert_scale`` into
  their ``.scale``; the two factors cannot be told apart, so such a file is refused naming the
  tensor.

The config (transformers ``Gemma4TextConfig``) comes from the keys ``Gemma4Model.set_gguf_parameters``
writes: per-layer KV head counts (sliding / full), ``sliding_window_pattern`` as ``layer_types``,
``key_length`` / ``key_length_swa`` as ``global_head_dim`` / ``head_dim``, both RoPE bases,
``final_logit_softcapping``, ``shared_kv_layers``, ``embedding_length_per_layer_input``, the
double-wide MLP from a per-layer ``feed_forward_length``; ``attention_k_eq_v`` from the tensors
(full-attention layers without ``attn_v``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint

L = "model.layers.{L}."

# GGUF name after "blk.N." (with its suffix) -> transformers Gemma4ForCausalLM parameter
NAMES: dict[str, str] = {
    "attn_norm.weight": L + "input_layernorm.weight",
    "post_attention_norm.weight": L + "post_attention_layernorm.weight",
    "ffn_norm.weight": L + "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": L + "post_feedforward_layernorm.weight",
    "pre_ffw_norm_2.weight": L + "pre_feedforward_layernorm_2.weight",
    "post_ffw_norm_1.weight": L + "post_feedforward_layernorm_1.weight",
    "post_ffw_norm_2.weight": L + "post_feedforward_layernorm_2.weight",
    "attn_q.weight": L + "self_attn.q_proj.weight", "attn_k.weight": L + "self_attn.k_proj.weight",
    "attn_v.weight": L + "self_attn.v_proj.weight", "attn_output.weight": L + "self_attn.o_proj.weight",
    "attn_q_norm.weight": L + "self_attn.q_norm.weight", "attn_k_norm.weight": L + "self_attn.k_norm.weight",
    "ffn_gate.weight": L + "mlp.gate_proj.weight", "ffn_up.weight": L + "mlp.up_proj.weight",
    "ffn_down.weight": L + "mlp.down_proj.weight",
    "ffn_gate_inp.weight": L + "router.proj.weight", "ffn_gate_inp.scale": L + "router.scale",
    "ffn_down_exps.scale": L + "router.per_expert_scale",
    "ffn_gate_up_exps.weight": L + "experts.gate_up_proj", "ffn_down_exps.weight": L + "experts.down_proj",
    "layer_output_scale.weight": L + "layer_scalar",
    "inp_gate.weight": L + "per_layer_input_gate.weight", "proj.weight": L + "per_layer_projection.weight",
    "post_norm.weight": L + "post_per_layer_input_norm.weight",
}
TOP: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight", "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight",
}
SOURCE = "conversion/gemma.py Gemma4Model"


_EXPERTS = {"ffn_gate_up_exps.weight": ("gate", "up"), "ffn_gate_exps.weight": ("gate",),
            "ffn_up_exps.weight": ("up",), "ffn_down_exps.weight": ("down",)}


def targets(src: Checkpoint, layer: int | None, blk: str, gname: str,
            keeps: frozenset[str]) -> list[tuple[str, int | None, tuple[int, int] | None]]:
    """(transformers name, expert, rows) of GGUF tensor GNAME (BLK: its name after ``blk.N.``, or
    all of it). KEEPS: the schemes the target holds exactly; experts in one of them go one tensor
    per expert and projection (``experts.E.{gate,up,down}_proj``, as ModelOpt exports Gemma 4 and
    compressed-tensors / vLLM load quantized experts: compressed-tensors quantizes Linear modules,
    and transformers' fused ``Gemma4TextExperts`` parameters are none), gate rows before up rows
    (``.chunk(2)``)."""
    t = src.tensors[gname]
    if blk == "ffn_down_exps.weight" and t.scheme.name == "nvfp4" and t.part("global_scale") is not None:
        raise UnsupportedError(
            f"{src.source}: '{gname.rsplit('.', 1)[0]}.scale' holds router.per_expert_scale folded into the "
            f"NVFP4 scale ({SOURCE}._generate_nvfp4_tensors); the two factors cannot be separated",
            hint="convert the original checkpoint instead")
    projs = _EXPERTS.get(blk) if layer is not None else None
    if projs is not None and t.scheme.name in keeps:
        n_e, rows = t.shape[:2]
        per = rows // len(projs)
        return [(L.format(L=layer) + f"experts.{e}.{p}_proj.weight", e, (i * per, (i + 1) * per))
                for e in range(n_e) for i, p in enumerate(projs)]
    tmpl = TOP.get(blk) if layer is None else NAMES.get(blk)
    if tmpl is None and projs is not None:
        raise UnsupportedError(f"{src.source}: '{gname}' is a separate gate or up half of the experts; "
                               "transformers' Gemma 4 holds them fused (experts.gate_up_proj), which nvfp4tools "
                               "rebuilds only from llama.cpp's ffn_gate_up_exps",
                               hint="--to compressed-tensors keeps Q4_0/Q8_0/NVFP4 experts one per expert")
    if tmpl is None:
        raise UnsupportedError(f"{src.source}: no safetensors name for GGUF tensor '{gname}' (gemma4)",
                               hint=f"nvfp4tools maps back the tensors llama.cpp's converter writes ({SOURCE})")
    return [(tmpl.format(L=layer), None, None)]


def _one(src: Checkpoint, key: str, values: list[int], layers: list[int], what: str) -> int | None:
    """The single value VALUES takes over LAYERS (None: no such layer); refused when they differ."""
    vals = sorted({values[i] for i in layers})
    if len(vals) > 1:
        raise UnsupportedError(f"{src.source}: '{key}' gives {what} layers different values {vals}; "
                               "transformers' Gemma4TextConfig has one per layer type")
    return vals[0] if vals else None


def _rope_freqs(src: Checkpoint, read: Callable[[str], np.ndarray], head_dim_full: int) -> float:
    """partial_rotary_factor of the full-attention layers from ``rope_freqs`` (1.0 rotated, 1e30 not)."""
    name = "rope_freqs.weight"
    if name not in src.tensors:
        raise UnsupportedError(f"{src.source}: no '{name}'; the full-attention layers' proportional RoPE "
                               f"({SOURCE}.generate_extra_tensors) cannot be read back")
    f = np.asarray(read(name), np.float32).reshape(-1)
    n_rot = int(np.count_nonzero(f == 1.0))
    if f.size != head_dim_full // 2 or not np.all(f[:n_rot] == 1.0) or not np.all(f[n_rot:] == np.float32(1e30)):
        raise UnsupportedError(f"{src.source}: '{name}' is not the 1.0 / 1e30 pattern {SOURCE} writes for "
                               "proportional RoPE; its RoPE cannot be expressed in config.json")
    return 2 * n_rot / head_dim_full


def config(src: Checkpoint, g: Callable[..., Any], kv: dict[str, Any],
           read: Callable[[str], np.ndarray]) -> dict[str, Any]:
    """Gemma4TextConfig keys from the metadata ``Gemma4Model.set_gguf_parameters`` writes (G(key):
    the architecture's key, float32 values as their shortest decimal; READ(name): a small tensor)."""
    t = src.tensors
    n_layer = int(g("block_count"))
    arch = kv.get("general.architecture")
    pattern = g("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != n_layer:
        raise UnsupportedError(f"{src.source}: '{arch}.attention.sliding_window_pattern' is missing or not one "
                               f"entry per layer ({n_layer}); the layer types cannot be restored")
    swa = [i for i in range(n_layer) if pattern[i]]
    full = [i for i in range(n_layer) if not pattern[i]]
    n_head = int(g("attention.head_count"))
    kv_heads = g("attention.head_count_kv", n_head)
    kv_heads = [int(x) for x in kv_heads] if isinstance(kv_heads, list) else [int(kv_heads)] * n_layer
    kv_swa = _one(src, f"{arch}.attention.head_count_kv", kv_heads, swa, "sliding")
    kv_full = _one(src, f"{arch}.attention.head_count_kv", kv_heads, full, "full-attention")
    hd_full, hd_swa = int(g("attention.key_length")), int(g("attention.key_length_swa", g("attention.key_length")))
    for k, v, want in (("attention.value_length", g("attention.value_length"), hd_full),
                       ("attention.value_length_swa", g("attention.value_length_swa"), hd_swa),
                       ("rope.dimension_count", g("rope.dimension_count"), hd_full),
                       ("rope.dimension_count_swa", g("rope.dimension_count_swa"), hd_swa)):
        if v is not None and int(v) != want:   # transformers has one head_dim per layer type, RoPE over it all
            raise UnsupportedError(f"{src.source}: '{arch}.{k}' is {v}, expected {want} "
                                   "(transformers' Gemma4TextConfig cannot express it)")
    n_shared = int(g("attention.shared_kv_layers") or 0)
    first_shared = n_layer - n_shared
    # K = V attention: a full-attention layer that computes its own KV has no attn_v (transformers
    # Gemma4TextAttention.use_alternative_attention)
    own_full = [i for i in full if i < first_shared]
    has_v = {i for i in own_full if f"blk.{i}.attn_v.weight" in t}
    if has_v and len(has_v) != len(own_full):
        raise UnsupportedError(f"{src.source}: only some full-attention layers have attn_v "
                               f"({sorted(has_v)} of {own_full}); attention_k_eq_v is one setting for all")
    k_eq_v = bool(own_full) and not has_v
    per_layer: dict[str, Any] = {"head_dim": hd_full}
    if k_eq_v or (kv_full is not None and kv_full != kv_swa):
        per_layer["num_key_value_heads"] = kv_full
    if not k_eq_v and kv_full is not None and kv_swa is not None and kv_full != kv_swa:
        raise UnsupportedError(f"{src.source}: '{arch}.attention.head_count_kv' differs between sliding "
                               f"({kv_swa}) and full-attention ({kv_full}) layers without K = V attention, "
                               "which transformers' Gemma4TextConfig does not build")
    ff = g("feed_forward_length")
    double = False
    if isinstance(ff, list):
        base = int(ff[0])
        want = [base if i < first_shared else 2 * base for i in range(n_layer)]
        if [int(x) for x in ff] != want:
            raise UnsupportedError(f"{src.source}: '{arch}.feed_forward_length' {ff} is neither one width nor "
                                   "the double-wide MLP of KV-shared layers (use_double_wide_mlp)")
        ff, double = base, n_shared > 0
    experts = int(g("expert_count") or 0)
    ple = int(g("embedding_length_per_layer_input") or 0)
    cfg: dict[str, Any] = {
        "hidden_size": int(g("embedding_length")), "num_hidden_layers": n_layer, "num_attention_heads": n_head,
        "num_key_value_heads": kv_swa if kv_swa is not None else kv_full, "head_dim": hd_swa,
        "intermediate_size": int(ff), "max_position_embeddings": int(g("context_length", 131072)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "hidden_activation": "gelu_pytorch_tanh",   # llama.cpp's gemma4 graph: GELU (tanh); no key for it
        "layer_types": ["sliding_attention" if pattern[i] else "full_attention" for i in range(n_layer)],
        "final_logit_softcapping": (float(g("final_logit_softcapping"))
                                    if g("final_logit_softcapping") is not None else None),
        "attention_k_eq_v": k_eq_v, "num_kv_shared_layers": n_shared, "use_double_wide_mlp": double,
        "attention_bias": False, "hidden_size_per_layer_input": ple,
        "vocab_size_per_layer_input": (t["per_layer_token_embd.weight"].shape[0]
                                       if "per_layer_token_embd.weight" in t else t["token_embd.weight"].shape[0]),
        "enable_moe_block": experts > 0, "num_experts": experts or None,
        "top_k_experts": int(g("expert_used_count")) if experts else None,
        "moe_intermediate_size": int(g("expert_feed_forward_length")) if experts else None,
        "per_layer_config": {str(i): dict(per_layer) for i in full},
        "use_bidirectional_attention": None,
    }
    if g("attention.sliding_window") is not None:
        cfg["sliding_window"] = int(g("attention.sliding_window"))
    rope: dict[str, Any] = {}
    if full:
        rope["full_attention"] = {"rope_type": "proportional", "rope_theta": float(g("rope.freq_base", 1e6)),
                                  "partial_rotary_factor": _rope_freqs(src, read, hd_full)}
    if swa:
        rope["sliding_attention"] = {"rope_type": "default",
                                     "rope_theta": float(g("rope.freq_base_swa", g("rope.freq_base", 1e4)))}
    cfg["rope_parameters"] = rope
    return cfg


def notes(src: Checkpoint) -> list[str]:
    rows = src.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in src.tensors else None
    return [f"vocab_size {rows}: the rows token_embd holds (llama.cpp's converter keeps only the tokenizer's "
            "rows, Gemma3Model.modify_tensors; rows beyond them were not written)"] if rows else []
