"""A GGUF that llama.cpp (not nvfp4tools) wrote, back to its Hugging Face form: the tensor names,
the transforms llama.cpp's converter applied undone, and a config.json built from the metadata.

Names are a table per GGUF architecture (GGUF block name -> the transformers parameter it came
from), the inverse of gguf-py's ``tensor_mapping.py`` for the checkpoints' own naming; each
transform is the inverse of a row of :mod:`.gguf_arch`:

* LLAMA: ``attn_q`` / ``attn_k`` rows un-permuted (conversion/llama.py ``LlamaModel.permute``);
* experts: ``ffn_{gate,up,down}_exps`` [E, out, in] split into one tensor per expert, named as the
  family names them (Mixtral ``block_sparse_moe.experts.E.w1/w3/w2``, the others
  ``mlp.experts.E.{gate,up,down}_proj``);
* DEEPSEEK2: ``attn_k_b`` + ``attn_v_b`` merged back into ``kv_b_proj`` (conversion/deepseek.py);
* GPT_OSS: gate + up experts re-interleaved and transposed into ``gate_up_proj`` [E, H, 2I], down
  transposed (conversion/gpt_oss.py);
* generated tensors (``rope_freqs``) dropped: they are config, not weights.

What cannot be restored is said, not guessed: Llama 3's RoPE scaling parameters are not in a GGUF
(only the ``rope_freqs`` they produced), DeepSeek's multi-token-prediction layers were never
written. Gemma 4 (names, config, what cannot be separated) is :mod:`.gguf_restore_gemma4`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint, TensorInfo

from . import gguf_restore_gemma4 as gemma4
from .gguf_arch import qk_permute_heads
from .gguf_metadata import GATING

L = "model.layers.{L}."

# GGUF block-level name (after "blk.N.") -> HF name template ({L}: layer, {E}: expert)
_COMMON = {
    "attn_norm": L + "input_layernorm", "ffn_norm": L + "post_attention_layernorm",
    "attn_q": L + "self_attn.q_proj", "attn_k": L + "self_attn.k_proj", "attn_v": L + "self_attn.v_proj",
    "attn_output": L + "self_attn.o_proj", "attn_q_norm": L + "self_attn.q_norm", "attn_k_norm": L + "self_attn.k_norm",
    "ffn_gate": L + "mlp.gate_proj", "ffn_up": L + "mlp.up_proj", "ffn_down": L + "mlp.down_proj",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_QWEN_MOE = {
    "ffn_gate_inp": L + "mlp.gate", "ffn_gate_exps": L + "mlp.experts.{E}.gate_proj",
    "ffn_up_exps": L + "mlp.experts.{E}.up_proj", "ffn_down_exps": L + "mlp.experts.{E}.down_proj",
    "ffn_gate_shexp": L + "mlp.shared_expert.gate_proj", "ffn_up_shexp": L + "mlp.shared_expert.up_proj",
    "ffn_down_shexp": L + "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": L + "mlp.shared_expert_gate",
}


@dataclass(frozen=True)
class Family:
    """How one GGUF architecture maps back to a transformers model."""

    model_type: str
    architecture: str
    names: dict[str, str]
    unpermute_qk: bool = False
    source: str = ""
    no_tokenizer: str | None = None   # why the tokenizer is not rebuilt from the GGUF (None: it is)
    # the transformers tokenizer class that rebuilds it (None: AutoTokenizer, which reads the
    # architecture's config from the GGUF first; transformers' own GGUF config reader cannot read
    # Gemma 4's per-layer head_count_kv)
    tokenizer_class: str | None = None


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM", {**_COMMON}, unpermute_qk=True, source="conversion/llama.py"),
    "mixtral": Family("mixtral", "MixtralForCausalLM", {
        **_COMMON, "ffn_gate_inp": L + "block_sparse_moe.gate",
        "ffn_gate_exps": L + "block_sparse_moe.experts.{E}.w1", "ffn_up_exps": L + "block_sparse_moe.experts.{E}.w3",
        "ffn_down_exps": L + "block_sparse_moe.experts.{E}.w2"}, unpermute_qk=True, source="conversion/llama.py"),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", {**_COMMON}, source="conversion/qwen.py"),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", {**_COMMON}, source="conversion/qwen.py"),
    "qwen2moe": Family("qwen2_moe", "Qwen2MoeForCausalLM", {**_COMMON, **_QWEN_MOE}, source="conversion/qwen.py"),
    "qwen3moe": Family("qwen3_moe", "Qwen3MoeForCausalLM", {**_COMMON, **_QWEN_MOE}, source="conversion/qwen.py"),
    "phi3": Family("phi3", "Phi3ForCausalLM", {**_COMMON, "attn_qkv": L + "self_attn.qkv_proj",
                                               "ffn_up": L + "mlp.gate_up_proj"}, source="conversion/phi.py"),
    "deepseek2": Family("deepseek_v3", "DeepseekV3ForCausalLM", {
        **_COMMON, "attn_q_a": L + "self_attn.q_a_proj", "attn_q_a_norm": L + "self_attn.q_a_layernorm",
        "attn_q_b": L + "self_attn.q_b_proj", "attn_kv_a_mqa": L + "self_attn.kv_a_proj_with_mqa",
        "attn_kv_a_norm": L + "self_attn.kv_a_layernorm", "ffn_gate_inp": L + "mlp.gate",
        "exp_probs_b": L + "mlp.gate.e_score_correction",
        "ffn_gate_exps": L + "mlp.experts.{E}.gate_proj", "ffn_up_exps": L + "mlp.experts.{E}.up_proj",
        "ffn_down_exps": L + "mlp.experts.{E}.down_proj", "ffn_gate_shexp": L + "mlp.shared_experts.gate_proj",
        "ffn_up_shexp": L + "mlp.shared_experts.up_proj", "ffn_down_shexp": L + "mlp.shared_experts.down_proj"},
        source="conversion/deepseek.py", no_tokenizer="transformers has no GGUF support for deepseek2"),
    "gpt-oss": Family("gpt_oss", "GptOssForCausalLM", {
        **_COMMON, "post_attention_norm": L + "post_attention_layernorm", "attn_sinks": L + "self_attn.sinks",
        "ffn_gate_inp": L + "mlp.router"}, source="conversion/gpt_oss.py",
        no_tokenizer="transformers' rebuild of a gpt-oss GGUF vocabulary does not encode text as the original "
                     "tokenizer does (tested)"),
    "gemma4": Family("gemma4_text", "Gemma4ForCausalLM", {}, source=gemma4.SOURCE, tokenizer_class="GemmaTokenizer"),
}
GENERATED = ("rope_freqs.weight",)   # written by the converter from config values


@dataclass
class Target:
    """One safetensors tensor and how it is made from the GGUF's."""

    name: str
    sources: tuple[str, ...]
    expert: int | None = None          # this expert of a stacked source
    rows: tuple[int, int] | None = None   # these rows of that expert (None: all)
    merge: str | None = None           # plan.Action.merge
    transpose: bool = False            # gpt-oss down experts / their biases: [E, out, in] -> [E, in, out]
    unpermute_heads: int | None = None


@dataclass
class Restoration:
    family: Family
    config: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def key_values(src: Checkpoint) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entries in (src.metadata.get("key_values") or {}).values():
        for e in entries:
            out[e[0]] = e[2]
    return out


def family_of(src: Checkpoint, kv: dict[str, Any]) -> Family:
    arch = str(kv.get("general.architecture", ""))
    if arch == "llama" and kv.get("llama.expert_count"):
        arch = "mixtral"
    fam = FAMILIES.get(arch)
    if fam is None:
        raise UnsupportedError(f"{src.source}: GGUF architecture {arch!r} cannot be converted back to safetensors "
                               "by nvfp4tools", hint=f"supported: {', '.join(sorted(FAMILIES))}")
    return fam


def kept_schemes(layout: Any) -> frozenset[str]:
    """The GGUF schemes a safetensors LAYOUT holds exactly (its nvfp4 / int4 / int8 writers)."""
    return frozenset(s for s, f in (("nvfp4", "nvfp4"), ("q4_0", "int4"), ("q8_0", "int8"))
                     if getattr(layout, f, None) is not None)


def restore(src: Checkpoint, keeps: frozenset[str] = frozenset()) -> Restoration:
    """SRC's safetensors tensors, config and notes. KEEPS: the schemes the target format holds
    exactly (Gemma 4's experts in such a scheme go one tensor per expert)."""
    kv = key_values(src)
    fam = family_of(src, kv)
    r = Restoration(fam, config(src, kv, fam))
    by_layer_block: dict[tuple[int, str], str] = {}
    for gname, t in src.tensors.items():
        if gname in GENERATED:
            r.notes.append(f"{gname} not written: llama.cpp generated it from the RoPE configuration")
            continue
        base, _, suffix = gname.rpartition(".")
        parts = base.split(".")
        if parts[0] == "blk":
            layer, block = int(parts[1]), ".".join(parts[2:])
        else:
            layer, block = None, base
        by_layer_block[(layer, block + "." + suffix)] = gname
    for (layer, blk), gname in sorted(by_layer_block.items(), key=lambda kv_: (kv_[0][0] is None, kv_[0])):
        r.targets += _targets(src, fam, kv, layer, blk, gname, by_layer_block, keeps)
    if fam.model_type == "gemma4_text":
        r.notes += gemma4.notes(src)
    if fam.model_type == "llama" and "rope_freqs.weight" in src.tensors:
        r.notes.append("Llama 3 RoPE scaling: the GGUF holds only the rope_freqs it produced, not its parameters "
                       "(factor, low/high frequency factors, original context); config.json has none")
    return r


def _k(kv: dict[str, Any], key: str) -> str:
    return f"{kv.get('general.architecture')}.{key}"


def _targets(src, fam: Family, kv, layer, blk, gname, index, keeps=frozenset()) -> list[Target]:
    if fam.model_type == "gemma4_text":
        return [Target(n, (gname,), expert=e, rows=rows)
                for n, e, rows in gemma4.targets(src, layer, blk, gname, keeps)]
    block, _, suffix = blk.rpartition(".")
    hf_suffix = "bias" if suffix == "bias" else "weight"
    if layer is None:
        base = _TOP.get(block)
        if base is None:
            raise UnsupportedError(f"{src.source}: no safetensors name for GGUF tensor '{gname}'")
        return [Target(f"{base}.{hf_suffix}", (gname,))]
    if fam.model_type == "deepseek_v3" and block in ("attn_k_b", "attn_v_b"):
        if block == "attn_v_b":
            return []
        v = index.get((layer, "attn_v_b.weight"))
        if v is None:
            raise UnsupportedError(f"{src.source}: '{gname}' has no attn_v_b beside it to rebuild kv_b_proj")
        return [Target(f"model.layers.{layer}.self_attn.kv_b_proj.weight", (gname, v), merge="mla_kv_b")]
    if fam.model_type == "gpt_oss" and block in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        pre = f"model.layers.{layer}.mlp.experts."
        if block == "ffn_down_exps":
            return [Target(pre + ("down_proj_bias" if suffix == "bias" else "down_proj"), (gname,),
                           transpose=suffix != "bias")]
        if block == "ffn_up_exps":
            return []
        up = index.get((layer, f"ffn_up_exps.{suffix}"))
        if up is None:
            raise UnsupportedError(f"{src.source}: '{gname}' has no ffn_up_exps beside it to rebuild gate_up_proj")
        return [Target(pre + ("gate_up_proj_bias" if suffix == "bias" else "gate_up_proj"), (gname, up),
                       merge="interleave_cols" if suffix == "bias" else "interleave_rows")]
    tmpl = fam.names.get(block)
    if tmpl is None:
        raise UnsupportedError(f"{src.source}: no safetensors name for GGUF tensor '{gname}' ({fam.model_type})",
                               hint="nvfp4tools maps back the tensors llama.cpp's converter writes for this family")
    if fam.model_type == "gpt_oss" and block == "attn_sinks":
        return [Target(tmpl.format(L=layer), (gname,))]
    if fam.model_type == "deepseek_v3" and block == "exp_probs_b":
        return [Target(tmpl.format(L=layer) + "_bias", (gname,))]
    name = tmpl.format(L=layer, E="{E}") + "." + hf_suffix
    t = src.tensors[gname]
    if "{E}" in name:
        return [Target(name.format(E=e), (gname,), expert=e) for e in range(t.shape[0])]
    return [Target(name, (gname,), unpermute_heads=qk_permute_heads(src.arch, t) if fam.unpermute_qk else None)]


def _small_array(src: Checkpoint, name: str) -> np.ndarray:
    """The values of a small unquantized F32 tensor of SRC (Gemma 4's rope_freqs)."""
    from nvfp4tools.io import PartReader

    part = src.tensors[name].part("data")
    if part.stored_dtype != "F32" or part.nbytes > 1 << 20:
        raise UnsupportedError(f"{src.source}: '{name}' is {part.stored_dtype} ({part.nbytes} bytes), expected a "
                               "small F32 tensor")
    with PartReader(src.root) as r:
        return np.frombuffer(r.read(part), "<f4")


def config(src: Checkpoint, kv: dict[str, Any], fam: Family) -> dict[str, Any]:
    """config.json from the GGUF metadata (conversion/base.py TextModel.set_gguf_parameters read
    backwards; the keys each architecture adds, gguf_metadata._ARCH_KEYS)."""
    def g(key: str, default: Any = None) -> Any:
        v = kv.get(_k(kv, key), default)
        # GGUF stores float32: the shortest decimal of that float32 is what config.json held (1e-05,
        # not 9.999999747378752e-06)
        return float(str(np.float32(v))) if isinstance(v, float) else v

    t = src.tensors
    vocab = t["token_embd.weight"].shape[0] if "token_embd.weight" in t else int(g("vocab_size") or 0)
    cfg: dict[str, Any] = {"architectures": [fam.architecture], "model_type": fam.model_type,
                           "torch_dtype": "bfloat16", "vocab_size": vocab,
                           "tie_word_embeddings": "output.weight" not in t}
    for key, hf in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                    ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        if kv.get(key) is not None:
            cfg[hf] = int(kv[key])
    if fam.model_type == "gemma4_text":
        return {**cfg, **gemma4.config(src, g, kv, lambda name: _small_array(src, name))}
    n_head = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    cfg.update({
        "hidden_size": hidden, "num_hidden_layers": int(g("block_count")), "num_attention_heads": n_head,
        "num_key_value_heads": int(g("attention.head_count_kv", n_head)),
        "max_position_embeddings": int(g("context_length", 4096)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
    })
    if g("feed_forward_length") is not None:
        cfg["intermediate_size"] = int(g("feed_forward_length"))
    if g("attention.key_length") is not None and fam.model_type != "deepseek_v3":
        cfg["head_dim"] = int(g("attention.key_length"))
    scaling = g("rope.scaling.type")
    if scaling in ("linear", "yarn"):
        rs: dict[str, Any] = {"rope_type": scaling, "factor": float(g("rope.scaling.factor"))}
        if scaling == "yarn":
            rs["original_max_position_embeddings"] = int(g("rope.scaling.original_context_length"))
            for key, hf in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                            ("yarn_attn_factor", "attention_factor"), ("yarn_ext_factor", "extrapolation_factor")):
                if g("rope.scaling." + key) is not None:
                    rs[hf] = float(g("rope.scaling." + key))
        if fam.model_type == "gpt_oss":
            rs["truncate"] = False   # gpt-oss's YaRN (transformers GptOssConfig); the GGUF has no key for it
        cfg["rope_scaling"] = rs
    experts = g("expert_count")
    if experts:
        used = int(g("expert_used_count") or 0)
        width = g("expert_feed_forward_length")
        if fam.model_type == "mixtral":
            cfg.update(num_local_experts=int(experts), num_experts_per_tok=used)
        elif fam.model_type in ("qwen2_moe", "qwen3_moe"):
            cfg.update(num_experts=int(experts), num_experts_per_tok=used, moe_intermediate_size=int(width))
            if g("expert_shared_feed_forward_length") is not None:
                cfg["shared_expert_intermediate_size"] = int(g("expert_shared_feed_forward_length"))
        elif fam.model_type == "gpt_oss":
            cfg.update(num_local_experts=int(experts), num_experts_per_tok=used, intermediate_size=int(width))
    if fam.model_type == "phi3":
        cfg["partial_rotary_factor"] = int(g("rope.dimension_count")) * n_head / hidden
        if g("rope.scaling.original_context_length") is not None:
            cfg["original_max_position_embeddings"] = int(g("rope.scaling.original_context_length"))
        cfg["sliding_window"] = int(g("attention.sliding_window") or 0) or None
    if fam.model_type == "gpt_oss":
        cfg["sliding_window"] = int(g("attention.sliding_window") or 0)
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                              for i in range(cfg["num_hidden_layers"])]
    if fam.model_type == "deepseek_v3":
        kv_lora, rope_d = int(g("attention.kv_lora_rank")), int(g("rope.dimension_count"))
        cfg.update(kv_lora_rank=kv_lora, qk_rope_head_dim=rope_d,
                   qk_nope_head_dim=int(g("attention.key_length_mla")) - rope_d,
                   v_head_dim=int(g("attention.value_length_mla")), head_dim=rope_d,
                   q_lora_rank=int(g("attention.q_lora_rank")) if g("attention.q_lora_rank") is not None else None,
                   num_key_value_heads=n_head, first_k_dense_replace=int(g("leading_dense_block_count") or 0),
                   moe_intermediate_size=int(g("expert_feed_forward_length")), n_routed_experts=int(experts),
                   num_experts_per_tok=int(g("expert_used_count")), n_shared_experts=int(g("expert_shared_count") or 0),
                   routed_scaling_factor=float(g("expert_weights_scale", 1.0)),
                   norm_topk_prob=bool(g("expert_weights_norm", False)), n_group=int(g("expert_group_count") or 1),
                   topk_group=int(g("expert_group_used_count") or 1), num_nextn_predict_layers=0,
                   scoring_func={v: k for k, v in GATING.items()}.get(int(g("expert_gating_func") or 1), "softmax"))
    return cfg


def rope_permuted_heads(src: Checkpoint, t: TensorInfo) -> int | None:
    """For a GGUF of a family whose Q/K rows llama.cpp's converter permutes (FAMILIES unpermute_qk,
    by general.architecture; nvfp4tools' GGUF writer permutes the same families): the head count
    T's rows were permuted by (qk_permute_heads), else None."""
    if src.format != "gguf":
        return None
    fam = FAMILIES.get(str(src.metadata.get("architecture")))
    return qk_permute_heads(src.arch, t) if fam is not None and fam.unpermute_qk else None
