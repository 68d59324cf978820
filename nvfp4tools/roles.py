"""Role of every tensor (attention, dense MLP, routed experts, router, ...), from its name.

Names differ per family: Gemma 4 ``model.language_model.layers.N``, DiffusionGemma
``model.decoder.layers.N`` (and ``model.encoder.layers.N``), Llama-style ``model.layers.N``,
experts ``experts.E.gate_proj`` (per expert) or ``experts.gate_up_proj`` (fused 3-D),
Mixtral ``block_sparse_moe.experts.E.w1``. Rules are a table tried in order; the first match wins.
"""

from __future__ import annotations

import re
from typing import NamedTuple

ROLES = (
    "attention", "mlp", "experts", "shared_expert", "router", "embedding", "lm_head",
    "norm", "vision", "projector", "other",
)
# Roles made of Linear weights a quantizer is expected to touch.
LINEAR_ROLES = ("attention", "mlp", "experts", "shared_expert")

# Projections an engine fuses into one GEMM (QKV, gate+up, DeepSeek's MLA down-projections), which
# ModelOpt's export gives one shared weight global scale (the max amax over the group; Model-Optimizer
# modelopt/torch/export/quant_utils.py ``preprocess_linear_fusion`` and layer_utils.py, whose
# fusion groups include q_a_proj + kv_a_proj_with_mqa): requantizing must do the same, or a fused
# layer's block scales are off by the ratio of the globals.
FUSED_SIBLINGS = (("q", "k", "v"), ("gate", "up"), ("q_a", "kv_a"))

_LAYER_RE = re.compile(r"^(?P<stack>.*?)\.(?:layers|h|blocks|block|decoder_layers)\.(?P<idx>\d+)\.(?P<rest>.*)$")
_EXPERT_RE = re.compile(r"\.experts\.(\d+)\.")

# (role, regex on the part of the name after the layer index, or on the whole name)
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("vision", re.compile(r"(^|\.)(vision_tower|vision_model|visual|vision_encoder|audio_tower|audio_model)\.")),
    ("projector", re.compile(r"(^|\.)(embed_vision|embed_audio|multi_modal_projector|mm_projector|vision_proj)\b")),
    ("lm_head", re.compile(r"(^|\.)(lm_head|output_layer|embed_out)\.")),
    ("embedding", re.compile(r"(embed_tokens|embed_tokens_per_layer|\.wte\.|^wte\.|tok_embeddings|word_embeddings|per_layer_model_projection)")),
    ("router", re.compile(r"(\.router\.|\.router$|(mlp|moe|block_sparse_moe|feed_forward)\.gate\.|shared_expert_gate|e_score_correction_bias)")),
    ("shared_expert", re.compile(r"\.(shared_expert|shared_experts|shared_mlp)\.")),
    ("experts", re.compile(r"\.experts\.")),
    ("norm", re.compile(r"(norm|ln_\d|layernorm)[^.]*\.(weight|bias)$|layer_scalar|\.scale$")),
    ("attention", re.compile(r"\.(self_attn|attention|attn|mixer)\.")),
    ("mlp", re.compile(r"\.(mlp|feed_forward|ffn|block_sparse_moe)\.")),
)

_PROJ_RE = re.compile(
    r"\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|query_key_value|gate_proj|up_proj|down_proj|gate_up_proj|"
    r"w1|w2|w3|fc1|fc2|c_fc|c_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|dense)(?:\.|$)"
)
_PROJ_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "qkv_proj": "qkv",
    "query_key_value": "qkv", "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "gate_up_proj": "gate_up", "w1": "gate", "w3": "up", "w2": "down", "fc1": "up", "fc2": "down",
    "c_fc": "up", "c_proj": "down", "dense": "o",
    "q_a_proj": "q_a", "q_b_proj": "q_b", "kv_a_proj_with_mqa": "kv_a", "kv_b_proj": "kv_b",
}


class RoleInfo(NamedTuple):  # a NamedTuple: built ~12,000 times per full-size MoE inspect
    role: str
    layer: int | None
    stack: str | None
    proj: str | None
    expert: int | None


_TO_HASH = bytes.maketrans(b"0123456789", b"##########")  # bytes.translate: 15x faster than str's
_new = tuple.__new__
# name with every digit as "#" -> (role, proj, stack, layer token index, expert token index), or
# None when a token mixes digits with letters (Mixtral "w1"/"w2", GPT-2 "ln_1", vision "fc1"):
# those digits change the role, so such names run the rules every time.
_FAST: dict[bytes, tuple[str, str | None, str | None, int | None, int | None] | None] = {}


def classify(name: str) -> RoleInfo:
    """Classify a tensor or module name.

    Digits in numeric tokens (layer and expert indices) never change a role, so the rules run
    once per name template; this is called ~12,000 times on a full-size MoE checkpoint.
    """
    key = name.encode().translate(_TO_HASH)
    try:
        t = _FAST[key]
    except KeyError:
        t = _FAST[key] = _template(name)
    if t is None:
        return _classify_rules(name)
    role, proj, stack, layer_tok, expert_tok = t
    if layer_tok is None and expert_tok is None:
        return _new(RoleInfo, (role, None, stack, proj, None))
    toks = name.split(".")
    if stack is None and layer_tok is not None:
        stack = ".".join(toks[:layer_tok - 1])
    return _new(RoleInfo, (role, int(toks[layer_tok]) if layer_tok is not None else None, stack, proj,
                           int(toks[expert_tok]) if expert_tok is not None else None))


def _template(name: str) -> tuple[str, str | None, str | None, int | None, int | None] | None:
    toks = name.split(".")
    if any(not tok.isdigit() and any(c.isdigit() for c in tok) for tok in toks):
        return None
    r = _classify_rules(name)
    layer_tok = expert_tok = None
    if r.layer is not None:
        m = _LAYER_RE.match(name)
        assert m is not None
        layer_tok = m.group("stack").count(".") + 2  # stack tokens, the list name, then the index
    em = _EXPERT_RE.search(name)
    if em is not None:
        expert_tok = name[:em.start()].count(".") + 2
    stack = r.stack if (r.stack is None or not any(c.isdigit() for c in r.stack)) else None
    return r.role, r.proj, stack, layer_tok, expert_tok


def _classify_rules(name: str) -> RoleInfo:
    """Classify a tensor or module name.

    >>> classify("model.language_model.layers.3.experts.7.down_proj.weight")
    RoleInfo(role='experts', layer=3, stack='model.language_model', proj='down', expert=7)
    """
    layer = stack = None
    m = _LAYER_RE.match(name)
    if m:
        layer, stack = int(m.group("idx")), m.group("stack")
    role = "other"
    for r, rx in _RULES:
        if rx.search(name):
            role = r
            break
    if role == "embedding" and layer is not None and "per_layer" not in name:
        role = "other"
    if role == "vision":
        layer = stack = None  # vision layers are not decoder layers
    pm = _PROJ_RE.search(name)
    proj = _PROJ_NAMES.get(pm.group(1)) if pm else None
    if role == "attention" and proj in ("up", "down"):  # e.g. GPT-2 style c_proj inside attn
        proj = "o" if proj == "down" else proj
    em = _EXPERT_RE.search(name)
    expert = int(em.group(1)) if em else None
    if role == "norm" and ("router" in name):
        role = "router"
    return RoleInfo(role, layer, stack, proj, expert)
