"""GGUF key/values as llama.cpp's converter writes them: the common TextModel keys, each
architecture's own (``_ARCH_KEYS``, cited to the conversion/*.py function they mirror), RoPE scaling,
and the tokenizer vocabulary. :mod:`.gguf_writer` writes the tensors; :mod:`.gguf_restore` reads
these keys back into a config.json."""

from __future__ import annotations

import os
from typing import Any

from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint

MAX_VOCAB = 1 << 24   # token ids: the largest published vocabularies are ~262k; the token list is allocated at max id + 1


class _Keys:
    """GGUF key/values in the order llama.cpp's converter first sets them; setting a key again
    changes its value, not its place (gguf-py GGUFWriter semantics the converter relies on)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.kv: dict[str, tuple[str, Any]] = {}

    def set(self, key: str, kind: str, value: Any) -> None:
        self.kv[key if key.startswith("general.") else self.p + key] = (kind, value)

    def drop(self, key: str) -> None:
        self.kv.pop(self.p + key, None)

    def write(self, w) -> None:
        for key, (kind, value) in self.kv.items():
            getattr(w, f"add_{kind}")(key, value)


def metadata(w, src: Checkpoint, arch_name: str, ftype: int) -> None:
    """conversion/base.py TextModel.set_gguf_parameters, then the architecture's own keys (_ARCH_KEYS)."""
    import gguf

    from .gguf_arch import gguf_config

    a = src.arch
    cfg = gguf_config(src)   # config.json, with transformers' defaults where it leaves a value out
    k = _Keys(arch_name + ".")
    k.set("block_count", "uint32", a.n_layers)
    k.set("context_length", "uint32", a.max_position_embeddings or 4096)
    k.set("embedding_length", "uint32", a.hidden_size)
    # Mixtral's config has no dense MLP but llama.cpp requires the key: its intermediate_size is the
    # experts' width, which llama.cpp's converter writes here (conversion/base.py set_gguf_parameters)
    ffn = a.intermediate_size or cfg.get("intermediate_size")
    if ffn:
        k.set("feed_forward_length", "uint32", int(ffn))
    k.set("attention.head_count", "uint32", a.n_heads)
    kvs = [l.n_kv_heads for l in a.layers]
    if len(set(kvs)) == 1:
        k.set("attention.head_count_kv", "uint32", kvs[0])
    else:
        k.set("attention.head_count_kv", "array", kvs)
    full = _full_layers(src)
    swa = [l for l in a.layers if l.kind == "sliding"]
    k.set("attention.key_length", "uint32", full[0].head_dim_k)
    k.set("attention.value_length", "uint32", full[0].head_dim_v)
    eps = cfg.get("rms_norm_eps")
    if eps is not None:
        k.set("attention.layer_norm_rms_epsilon", "float32", float(eps))
    if swa:
        k.set("attention.key_length_swa", "uint32", swa[0].head_dim_k)
        k.set("attention.value_length_swa", "uint32", swa[0].head_dim_v)
        k.set("attention.sliding_window", "uint32", int(swa[0].window or 0))
        k.set("attention.sliding_window_pattern", "array", [l.kind == "sliding" for l in a.layers])
    rp = cfg.get("rope_parameters") or {}
    theta_full = (rp.get("full_attention") or rp).get("rope_theta") or cfg.get("rope_theta")
    if theta_full:
        k.set("rope.freq_base", "float32", float(theta_full))
    if "sliding_attention" in rp:
        k.set("rope.freq_base_swa", "float32", float(rp["sliding_attention"].get("rope_theta", 10000.0)))
    k.set("general.type", "string", "model")
    _rope_scaling(k, src, cfg)
    if a.n_experts:
        k.set("expert_count", "uint32", a.n_experts)
        k.set("expert_used_count", "uint32", a.n_experts_active or 0)
        if a.expert_intermediate_size:
            k.set("expert_feed_forward_length", "uint32", a.expert_intermediate_size)
    extra = _ARCH_KEYS.get(arch_name)
    if extra is not None:
        extra(k, src, cfg)
    k.set("general.file_type", "uint32", ftype)
    k.set("general.quantization_version", "uint32", gguf.GGML_QUANT_VERSION)
    k.set("general.name", "string", os.path.basename(os.path.abspath(src.source)))
    k.write(w)


def rope_params(cfg: dict) -> dict:
    """The full-attention RoPE parameters as llama.cpp's converter sees them: ``rope_parameters``
    (or the older ``rope_scaling``), ``type`` read as ``rope_type``, and the top-level
    ``rope_theta`` / ``original_max_position_embeddings`` mirrored in (conversion/base.py
    TextModel.__init__)."""
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rp, dict):
        return {}
    rp = dict(rp.get("full_attention", rp))
    if "rope_type" not in rp and rp.get("type") is not None:
        rp["rope_type"] = rp["type"]
    for key in ("rope_theta", "original_max_position_embeddings"):
        if key not in rp and cfg.get(key) is not None:
            rp[key] = cfg[key]
    return rp


# rope_type -> what llama.cpp's converter writes for it (conversion/base.py set_gguf_parameters);
# types absent here are refused, so a scaling llama.cpp would apply is never silently dropped
_ROPE_SCALING = {
    None: "none", "default": "none",
    "llama3": "none",          # generated rope_freqs tensor (ARCHES rope_freqs)
    "proportional": "none",    # Gemma 4: generated rope_freqs tensor
    "dynamic": "none",         # llama.cpp writes nothing for it
    "linear": "linear", "yarn": "yarn",
}


def rope_scaling_keys(src: Checkpoint, cfg: dict) -> list[tuple[str, str, Any]]:
    """(key, kind, value) of the RoPE scaling keys llama.cpp's converter writes; raises for a RoPE
    type nvfp4tools does not mirror (the planner calls this, so the refusal comes before writing)."""
    rp = rope_params(cfg)
    if "long_factor" in rp or "short_factor" in rp:
        raise UnsupportedError(f"{src.source}: LongRoPE scaling (long_factor/short_factor) is not written to GGUF by "
                               "nvfp4tools (llama.cpp adds rope_factors_long/short tensors, conversion/phi.py)",
                               hint="convert to modelopt or compressed-tensors, or use llama.cpp's own converter")
    typ = rp.get("rope_type")
    if typ not in _ROPE_SCALING:
        raise UnsupportedError(f"{src.source}: RoPE type {typ!r} is not written to GGUF by nvfp4tools",
                               hint=f"written: {', '.join(str(t) for t in _ROPE_SCALING if t)}; convert to "
                                    "modelopt or compressed-tensors instead")
    factor = rp.get("factor")
    if _ROPE_SCALING[typ] == "none" or factor is None:
        return []
    out = [("rope.scaling.type", "string", _ROPE_SCALING[typ]), ("rope.scaling.factor", "float32", float(factor))]
    if typ == "yarn":
        out.append(("rope.scaling.original_context_length", "uint32", int(rp["original_max_position_embeddings"])))
        attn = rp.get("attention_factor", rp.get("attn_factor"))
        for key, v in (("yarn_ext_factor", rp.get("extrapolation_factor")), ("yarn_attn_factor", attn),
                       ("yarn_beta_fast", rp.get("beta_fast")), ("yarn_beta_slow", rp.get("beta_slow"))):
            if v is not None:
                out.append(("rope.scaling." + key, "float32", float(v)))
    return out


def _rope_scaling(k: _Keys, src: Checkpoint, cfg: dict) -> None:
    for key, kind, value in rope_scaling_keys(src, cfg):
        k.set(key, kind, value)


def _llama_keys(k: _Keys, src: Checkpoint, cfg: dict) -> None:
    """conversion/llama.py LlamaModel.set_gguf_parameters."""
    k.set("vocab_size", "uint32", src.arch.vocab_size)
    k.set("rope.dimension_count", "uint32", _full_layers(src)[0].head_dim_k)


def _gemma4_keys(k: _Keys, src: Checkpoint, cfg: dict) -> None:
    """conversion/gemma.py Gemma4Model.set_gguf_parameters."""
    rp = cfg.get("rope_parameters") or {}
    full = _full_layers(src)
    swa = [l for l in src.arch.layers if l.kind == "sliding"]
    k.set("embedding_length_per_layer_input", "uint32", int(cfg.get("hidden_size_per_layer_input") or 0))
    k.set("attention.shared_kv_layers", "uint32", int(cfg.get("num_kv_shared_layers") or 0))
    # full layers: proportional RoPE over the whole head (rope_freqs masks the unrotated pairs)
    k.set("rope.dimension_count", "uint32", full[0].head_dim_k)
    if swa:
        part = float(((rp.get("sliding_attention") or {}).get("partial_rotary_factor")) or 1.0)
        k.set("rope.dimension_count_swa", "uint32", int(swa[0].head_dim_k * part))
    if cfg.get("final_logit_softcapping"):
        k.set("final_logit_softcapping", "float32", float(cfg["final_logit_softcapping"]))


def _phi3_keys(k: _Keys, src: Checkpoint, cfg: dict) -> None:
    """conversion/phi.py Phi3MiniModel.set_gguf_parameters: RoPE over partial_rotary_factor of the
    head, the original context length, and a sliding window of 0 when there is none (the loader
    needs the key)."""
    a = src.arch
    part = float(cfg.get("partial_rotary_factor") or 1.0)
    k.set("rope.dimension_count", "uint32", int(part * a.hidden_size) // a.n_heads)
    orig = cfg.get("original_max_position_embeddings") or a.max_position_embeddings
    if orig:
        k.set("rope.scaling.original_context_length", "uint32", int(orig))
    if not any(l.kind == "sliding" for l in a.layers):
        k.set("attention.sliding_window", "uint32", int(cfg.get("sliding_window") or 0))


# scoring_func -> llama.cpp's expert_gating_func (gguf-py ExpertGatingFuncType)
GATING = {"softmax": 1, "sigmoid": 2}


def _deepseek2_keys(k: _Keys, src: Checkpoint, cfg: dict) -> None:
    """conversion/deepseek.py DeepseekV2Model.set_gguf_parameters: MLA caches one latent "head"
    (head_count_kv 1; key = kv_lora_rank + rope dims, value = kv_lora_rank) and records the
    per-head MLA sizes the loader uses with attn_k_b / attn_v_b."""
    nope, rope_d = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"])
    kv_lora = int(cfg["kv_lora_rank"])
    k.set("attention.head_count_kv", "uint32", 1)
    k.set("attention.key_length", "uint32", kv_lora + rope_d)
    k.set("attention.value_length", "uint32", kv_lora)
    if "attention.layer_norm_rms_epsilon" not in {key[len(k.p):] for key in k.kv}:
        k.set("attention.layer_norm_rms_epsilon", "float32", 1e-6)
    if cfg.get("n_group") is not None:
        k.set("expert_group_count", "uint32", int(cfg["n_group"]))
    if cfg.get("topk_group") is not None:
        k.set("expert_group_used_count", "uint32", int(cfg["topk_group"]))
    gating = GATING.get(str(cfg.get("scoring_func", "softmax")))
    if gating is not None:
        k.set("expert_gating_func", "uint32", gating)
    k.set("leading_dense_block_count", "uint32", int(cfg.get("first_k_dense_replace") or 0))
    k.set("vocab_size", "uint32", src.arch.vocab_size)
    if cfg.get("q_lora_rank") is not None:
        k.set("attention.q_lora_rank", "uint32", int(cfg["q_lora_rank"]))
    k.set("attention.kv_lora_rank", "uint32", kv_lora)
    k.set("attention.key_length_mla", "uint32", nope + rope_d)
    k.set("attention.value_length_mla", "uint32", int(cfg["v_head_dim"]))
    k.set("expert_feed_forward_length", "uint32", int(cfg["moe_intermediate_size"]))
    k.set("expert_count", "uint32", int(cfg["n_routed_experts"]))
    k.set("expert_shared_count", "uint32", int(cfg.get("n_shared_experts") or 0))
    if cfg.get("routed_scaling_factor") is not None:
        k.set("expert_weights_scale", "float32", float(cfg["routed_scaling_factor"]))
    if cfg.get("norm_topk_prob"):
        k.set("expert_weights_norm", "bool", True)
    k.set("rope.dimension_count", "uint32", rope_d)
    mscale = rope_params(cfg).get("mscale_all_dim")
    if mscale is not None:   # 0.1 x, as llama.cpp's loader divides it by 0.1 (conversion/deepseek.py)
        k.set("rope.scaling.yarn_log_multiplier", "float32", 0.1 * float(mscale))


def _full_layers(src: Checkpoint) -> list:
    return [l for l in src.arch.layers if l.kind == "full"] or list(src.arch.layers)


def _gpt_oss_keys(k: _Keys, src: Checkpoint, cfg: dict) -> None:
    """conversion/gpt_oss.py GptOssModel.set_gguf_parameters: the sliding window only (llama.cpp's
    loader alternates sliding and full layers itself, starting with sliding), expert width."""
    for key in ("attention.key_length_swa", "attention.value_length_swa", "attention.sliding_window_pattern"):
        k.drop(key)
    layers = src.arch.layers
    if any(l.kind == "sliding" for l in layers) and [l.kind for l in layers] != \
            ["sliding" if i % 2 == 0 else "full" for i in range(len(layers))]:
        raise UnsupportedError(f"{src.source}: gpt-oss layers do not alternate sliding/full starting with sliding, "
                               "the only pattern llama.cpp's gpt-oss loader knows")
    k.set("attention.sliding_window", "uint32", int(cfg.get("sliding_window") or 0))
    k.set("expert_feed_forward_length", "uint32", int(cfg["intermediate_size"]))


# GGUF architecture -> the keys its llama.cpp conversion adds to (or changes in) the common ones
_ARCH_KEYS = {"gpt-oss": _gpt_oss_keys, "llama": _llama_keys, "gemma4": _gemma4_keys, "phi3": _phi3_keys, "deepseek2": _deepseek2_keys}


def tokenizer(w, src: Checkpoint, arch_name: str) -> None:
    """Vocabulary from tokenizer.json (read as JSON: no transformers needed): tokens by id, token
    types (byte-fallback ``<0xNN>`` = BYTE, added special tokens = CONTROL, else NORMAL), BPE merges,
    and bos/eos/pad/unk ids from the added tokens' names in tokenizer_config.json."""
    from .validate import read_json

    path = os.path.join(src.root, "tokenizer.json")
    tj = read_json(src.root, "tokenizer.json")   # a regular file inside the folder, bounded (formats/validate.py)
    if tj is None:
        # no vocabulary: llama.cpp refuses a GGUF without tokenizer.ggml.model, and loads one whose
        # model is "none" with vocab_size dummy tokens (llama-vocab.cpp load: LLAMA_VOCAB_TYPE_NONE),
        # which runs token ids but no text (the plan's notes say so)
        w.add_string("tokenizer.ggml.model", "none")
        if src.arch is not None and src.arch.vocab_size:
            w.add_uint32(f"{arch_name}.vocab_size", int(src.arch.vocab_size))
        return
    try:
        model = tj["model"]
        vocab: dict[str, int] = dict(model["vocab"])
        if not all(isinstance(i, int) and 0 <= i < MAX_VOCAB for i in vocab.values()):
            raise ValueError(f"token ids must be integers in [0, {MAX_VOCAB})")
    except (ValueError, KeyError, TypeError) as e:
        raise UnsupportedError(f"{path}: cannot read the vocabulary ({e})") from None
    special: dict[int, str] = {}
    for at in tj.get("added_tokens") or []:
        if not isinstance(at, dict) or not isinstance(at.get("id"), int) or not 0 <= at["id"] < MAX_VOCAB:
            raise UnsupportedError(f"{path}: an added token has no valid id ({str(at)[:80]})")
        vocab.setdefault(at["content"], at["id"])
        if at.get("special"):
            special[at["id"]] = at["content"]
    n = max(vocab.values()) + 1
    toks = [f"[PAD{i}]" for i in range(n)]
    for text, i in vocab.items():
        toks[i] = text
    types = []
    for i, text in enumerate(toks):
        if i in special:
            types.append(3)                       # CONTROL
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(6)                       # BYTE
        else:
            types.append(1)                       # NORMAL
    w.add_string("tokenizer.ggml.model", "gemma4" if arch_name == "gemma4" else "llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * n)
    w.add_token_types(types)
    merges = model.get("merges")
    if merges:
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    tc = read_json(src.root, "tokenizer_config.json") or {}
    if not isinstance(tc, dict):
        raise UnsupportedError(f"{os.path.join(src.root, 'tokenizer_config.json')}: not a JSON object")
    # gguf-py Keys.Tokenizer spellings
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        tok = tc.get(f"{role}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and tok in vocab:
            w.add_uint32(f"tokenizer.ggml.{key}", vocab[tok])
    if "add_bos_token" in tc or arch_name.startswith("gemma"):
        w.add_bool("tokenizer.ggml.add_bos_token", bool(tc.get("add_bos_token", True)))
