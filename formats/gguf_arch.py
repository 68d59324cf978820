"""What llama.cpp's converter does per architecture, as data: the GGUF architecture each Hugging
Face ``model_type`` becomes and the tensor transforms applied on the way. Each row cites the
converter code it mirrors (llama.cpp ``convert_hf_to_gguf.py`` and its ``conversion/`` package, as
vendored in llama-cpp-python 0.3.36); tests pin the bytes against llama.cpp's own output.

Architectures not listed are refused by name: writing a GGUF llama.cpp loads but computes wrongly
is worse than writing none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nvfp4tools.model import ArchInfo, TensorInfo


@dataclass(frozen=True)
class GGUFArch:
    gguf_arch: str                 # gguf.MODEL_ARCH member name
    permute_qk: bool = False       # Q/K rows into ggml's RoPE pair order (conversion/llama.py LlamaModel.permute)
    rope_freqs: str | None = None  # "llama3" (llama.py generate_extra_tensors) | "gemma4_proportional" (gemma.py)
    fold_per_expert_scale: bool = False   # router.per_expert_scale into the down experts' scale (gemma.py)
    split_gate_up: bool = True     # a fused experts.gate_up_proj -> ffn_gate_exps + ffn_up_exps (conversion/qwen.py);
                                   # Gemma 4 keeps ffn_gate_up_exps (conversion/gemma.py)
    mla_split: bool = False        # kv_b_proj -> attn_k_b (transposed) + attn_v_b (conversion/deepseek.py)
    drop_mtp: bool = False         # layers >= num_hidden_layers (multi-token prediction) are not written
    drop_tied_lm_head: bool = False   # lm_head.weight is skipped when tie_word_embeddings
    experts_in_out_interleaved: bool = False   # experts stored [E, in, out], gate/up columns interleaved
                                               # (transformers GptOssExperts), rearranged (conversion/gpt_oss.py)
    # what transformers computes with when config.json leaves a value out: its config class's
    # default (transformers 5.25 <Model>Config()); llama.cpp's converter writes no key then, and
    # llama.cpp refuses the file ("key not found ... layer_norm_rms_epsilon", "rope_freqs.weight
    # not found") or runs with its own default
    config_defaults: tuple[tuple[str, Any], ...] = (("rms_norm_eps", 1e-6),)
    source: str = ""


# transformers Gemma4TextConfig() rope_parameters (transformers 5.25), what google/gemma-4 configs carry
_GEMMA4_DEFAULTS = (("rms_norm_eps", 1e-6), ("rope_parameters", {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0}}))
_EPS_1E5 = (("rms_norm_eps", 1e-5),)   # MixtralConfig, Phi3Config, GptOssConfig defaults


ARCHES: dict[str, GGUFArch] = {
    "gemma4": GGUFArch("GEMMA4", rope_freqs="gemma4_proportional", fold_per_expert_scale=True,
                       split_gate_up=False, config_defaults=_GEMMA4_DEFAULTS, source="conversion/gemma.py Gemma4Model"),
    "gemma4_text": GGUFArch("GEMMA4", rope_freqs="gemma4_proportional", fold_per_expert_scale=True,
                            split_gate_up=False, config_defaults=_GEMMA4_DEFAULTS,
                            source="conversion/gemma.py Gemma4Model"),
    "llama": GGUFArch("LLAMA", permute_qk=True, rope_freqs="llama3", source="conversion/llama.py LlamaModel"),
    "mistral": GGUFArch("LLAMA", permute_qk=True, rope_freqs="llama3", source="conversion/llama.py LlamaModel"),
    "mixtral": GGUFArch("LLAMA", permute_qk=True, rope_freqs="llama3", config_defaults=_EPS_1E5,
                        source="conversion/llama.py LlamaModel (block_sparse_moe experts stacked w1/w2/w3)"),
    "qwen2": GGUFArch("QWEN2", source="conversion/qwen.py Qwen2Model"),
    "qwen3": GGUFArch("QWEN3", source="conversion/qwen.py Qwen3Model"),
    "qwen2_moe": GGUFArch("QWEN2MOE", source="conversion/qwen.py Qwen2MoeModel"),
    "qwen3_moe": GGUFArch("QWEN3MOE", source="conversion/qwen.py Qwen3MoeModel"),
    # qkv_proj -> attn_qkv and gate_up_proj -> ffn_up ([2 n_ff, n_embd], gate half first) unchanged:
    # Phi3MiniModel has no modify_tensors; llama.cpp's loader splits them (llama-model.cpp LLM_ARCH_PHI3)
    "phi3": GGUFArch("PHI3", config_defaults=_EPS_1E5, source="conversion/phi.py Phi3MiniModel"),
    "gpt_oss": GGUFArch("GPT_OSS", experts_in_out_interleaved=True, config_defaults=_EPS_1E5, source="conversion/gpt_oss.py GptOssModel"),
    "deepseek_v3": GGUFArch("DEEPSEEK2", mla_split=True, drop_mtp=True, drop_tied_lm_head=True,
                            source="conversion/deepseek.py DeepseekV2Model"),
}

# GGUF tensors (name after "blk.N.") whose ".scale" / ".input_scale" sidecars llama.cpp's loader
# reads for every architecture (llama-model.cpp llama_model::load_tensors, the "generic pass" after
# load_arch_tensors; llama-cpp-python 0.3.36), plus "output" when it is NVFP4. An NVFP4 tensor of
# any other name has no way to carry its global scale: its sidecar would make the loader refuse the
# file ("wrong number of tensors"), and without it the weights load at the wrong magnitude.
LOADER_SCALED = frozenset({
    "attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv", "attn_gate",
    "ffn_gate", "ffn_down", "ffn_up", "ffn_gate_shexp", "ffn_down_shexp", "ffn_up_shexp",
    "ffn_gate_exps", "ffn_down_exps", "ffn_up_exps",
    "ssm_in", "ssm_out", "ssm_alpha", "ssm_beta", "nextn.eh_proj", "nextn.shared_head_head", "output",
})


_ATTN = frozenset({"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "output"})   # llama-graph.cpp build_qkv/build_attn
_FFN = frozenset({"ffn_gate", "ffn_up", "ffn_down"})
_EXPS = frozenset({"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"})

# GGUF architecture -> the tensors whose NVFP4 global its compute graph multiplies in (the model's
# builder in llama.cpp src/models/*.cpp passing the loaded ``*_s`` tensor to build_lora_mm /
# build_ffn / build_moe_ffn; llama-cpp-python 0.3.36). The loader reads more (LOADER_SCALED) than
# some graphs use: Qwen2, Qwen2-MoE, Phi-3 and DeepSeek2 pass no scale to their FFN/expert
# matmuls, so an NVFP4 FFN there computes with its global dropped (NaN or garbage logits; llama.cpp's
# own conversion of a ModelOpt export included).
GRAPH_SCALED: dict[str, frozenset[str]] = {
    "LLAMA": _ATTN | _FFN | _EXPS,        # models/llama.cpp
    "QWEN2": _ATTN,                       # models/qwen2.cpp
    "QWEN3": _ATTN | _FFN,                # models/qwen3.cpp
    "QWEN2MOE": _ATTN,                    # models/qwen2moe.cpp
    "QWEN3MOE": _ATTN | _EXPS,            # models/qwen3moe.cpp
    "PHI3": _ATTN,                        # models/phi3.cpp
    "DEEPSEEK2": frozenset({"attn_output", "output"}),   # models/deepseek2.cpp (MLA projections, FFN: none)
    "GEMMA4": _ATTN | _FFN | _EXPS,       # models/gemma4.cpp
    "GPT_OSS": _ATTN,                     # models/openai-moe.cpp (experts: none)
}


def scaled_in_llama_cpp(gguf_arch: str, gguf_name: str) -> bool:
    """Whether llama.cpp loads and applies GGUF tensor GGUF_NAME's NVFP4 global (``<name>.scale``)
    in architecture GGUF_ARCH (a gguf.MODEL_ARCH member name)."""
    base = gguf_name[: -len(".weight")] if gguf_name.endswith(".weight") else gguf_name
    parts = base.split(".")
    short = ".".join(parts[2:]) if parts[0] == "blk" else base
    return short in LOADER_SCALED and short in GRAPH_SCALED.get(gguf_arch, frozenset())


# known to llama.cpp, not (yet) written by nvfp4tools, with the reason the user sees
REFUSED: dict[str, str] = {
}


def llama3_rope_factors(rope: dict, head_dim: int) -> list[float] | None:
    """llama.cpp's ``rope_freqs`` for Llama 3 RoPE scaling (conversion/llama.py
    ``LlamaModel.generate_extra_tensors``), in float32 as torch computes it there."""
    import math

    import numpy as np

    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    base = np.float32(rope.get("rope_theta", 10000.0))
    freqs = np.float32(1.0) / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    factor = rope.get("factor", 8.0)
    low = rope.get("low_freq_factor", 1.0)
    high = rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs.astype(np.float32):
        wl = np.float32(2 * math.pi) / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(float(factor))
        else:
            smooth = (np.float32(old) / wl - np.float32(low)) / np.float32(high - low)
            out.append(float(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth)))
    return out


def gguf_config(src) -> dict:
    """SRC's text config as the GGUF conversion reads it: config.json's values, and for each value it
    leaves out that its architecture's row names, transformers' default (``config_defaults``)."""
    from nvfp4tools.arch import text_config

    cfg = dict(text_config(src.config))
    row = ARCHES.get((src.arch.model_type if src.arch else "") or "")
    for key, value in (row.config_defaults if row is not None else ()):
        cfg.setdefault(key, value)
    return cfg


def qk_permute_heads(arch: ArchInfo | None, t: TensorInfo) -> int | None:
    """The head count by which llama.cpp's converter reorders T's rows into ggml's RoPE pair order
    (conversion/llama.py LlamaModel.permute: Q by the attention heads, K by its layer's KV heads),
    where T is a decoder layer's Q or K weight; None for any other tensor. Whether a family is
    permuted at all is the caller's table (GGUFArch.permute_qk, gguf_restore.Family.unpermute_qk)."""
    if arch is None or t.role != "attention" or t.proj not in ("q", "k") or t.layer is None \
            or t.layer >= len(arch.layers):
        return None
    return arch.n_heads if t.proj == "q" else arch.layers[t.layer].n_kv_heads
