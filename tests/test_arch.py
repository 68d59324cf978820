"""Architecture descriptions from config.json, per family, checked against hand-computed facts."""

from __future__ import annotations

import copy


from nvfp4tools.arch import parse_arch
from nvfp4tools.synth import GEMMA4_26B_A4B


def kinds(a):
    return [l.kind for l in a.layers]


def test_gemma4_26b_published_keys():
    a = parse_arch(GEMMA4_26B_A4B)
    assert (a.n_layers, a.hidden_size, a.n_heads, a.vocab_size) == (30, 2816, 16, 262144)
    full = [i for i, l in enumerate(a.layers) if l.kind == "full"]
    assert full == [5, 11, 17, 23, 29]
    for i, l in enumerate(a.layers):
        if l.kind == "full":
            assert (l.n_kv_heads, l.head_dim_k, l.head_dim_v, l.k_eq_v, l.window) == (2, 512, 512, True, None)
        else:
            assert (l.n_kv_heads, l.head_dim_k, l.head_dim_v, l.k_eq_v, l.window) == (8, 256, 256, False, 1024)
    assert (a.n_experts, a.n_experts_active, a.expert_intermediate_size) == (128, 8, 704)
    assert a.intermediate_size == 2112 and a.dense_mlp_with_experts
    assert a.tie_word_embeddings and a.has_vision
    assert a.max_position_embeddings == 262144


def test_gemma4_transformers_per_layer_config_spelling():
    """transformers 5.23 serialises global head dim/kv heads as per_layer_config (oracles.md)."""
    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    t = cfg["text_config"]
    del t["global_head_dim"], t["num_global_key_value_heads"]
    t["per_layer_config"] = {str(i): {"head_dim": 512, "num_key_value_heads": 2} for i in (5, 11, 17, 23, 29)}
    a = parse_arch(cfg)
    b = parse_arch(GEMMA4_26B_A4B)
    assert a.layers == b.layers


def test_gemma4_global_kv_heads_only_with_k_eq_v():
    """transformers applies num_global_key_value_heads only when attention_k_eq_v is set."""
    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    cfg["text_config"]["attention_k_eq_v"] = False
    a = parse_arch(cfg)
    full = a.layers[5]
    assert (full.n_kv_heads, full.head_dim_k, full.k_eq_v) == (8, 512, False)


def test_gemma4_kv_shared_layers():
    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    cfg["text_config"]["num_kv_shared_layers"] = 6  # last 6 layers reuse earlier caches
    a = parse_arch(cfg)
    assert a.layers[29].kv_shared_from == 23  # last full layer before the shared block
    assert a.layers[28].kv_shared_from == 22
    assert a.layers[23].kv_shared_from is None
    assert a.n_full_layers == 4 and a.n_sliding_layers == 20


def test_diffusion_gemma_nested_text_config():
    cfg = {"model_type": "diffusion_gemma", "architectures": ["DiffusionGemmaForBlockDiffusion"],
           "text_config": {"model_type": "diffusion_gemma_text", "hidden_size": 2816, "num_hidden_layers": 30,
                           "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                           "global_head_dim": 512, "num_global_key_value_heads": 2, "sliding_window": 1024,
                           "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
                           "vocab_size": 262144, "intermediate_size": 2112},
           "vision_config": {"model_type": "gemma4_vision"}}
    a = parse_arch(cfg)
    assert kinds(a) == (["sliding"] * 5 + ["full"]) * 5
    # no attention_k_eq_v key on DiffusionGemma: global kv-head override is not applied
    assert a.layers[5].head_dim_k == 512 and a.layers[5].n_kv_heads == 8
    assert a.n_experts == 128 and a.architectures == ("DiffusionGemmaForBlockDiffusion",)


def test_llama():
    a = parse_arch({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336})
    assert kinds(a) == ["full"] * 32 and a.layers[0].head_dim_k == 128 and a.layers[0].n_kv_heads == 8
    assert a.n_experts is None


def test_mistral_sliding_and_mixtral_experts():
    m = parse_arch({"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "sliding_window": 4096,
                    "vocab_size": 32000})
    assert kinds(m) == ["sliding"] * 32 and m.layers[0].window == 4096
    x = parse_arch({"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "sliding_window": None,
                    "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 14336,
                    "vocab_size": 32000})
    assert kinds(x) == ["full"] * 32
    assert (x.n_experts, x.n_experts_active, x.expert_intermediate_size, x.intermediate_size) == (8, 2, 14336, None)


def test_qwen2_windowed_layers_and_qwen3_moe():
    q = parse_arch({"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                    "num_key_value_heads": 4, "use_sliding_window": True, "sliding_window": 32768,
                    "max_window_layers": 20, "vocab_size": 152064})
    assert kinds(q) == ["full"] * 20 + ["sliding"] * 8
    q3 = parse_arch({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                     "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                     "use_sliding_window": False, "sliding_window": None, "num_experts": 128,
                     "num_experts_per_tok": 8, "moe_intermediate_size": 768, "intermediate_size": 6144,
                     "vocab_size": 151936})
    assert kinds(q3) == ["full"] * 48 and q3.layers[0].head_dim_k == 128
    assert (q3.n_experts, q3.n_experts_active, q3.expert_intermediate_size) == (128, 8, 768)


def test_gpt_oss_layer_types():
    g = parse_arch({"model_type": "gpt_oss", "hidden_size": 2880, "num_hidden_layers": 24,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "sliding_window": 128,
                    "layer_types": ["sliding_attention", "full_attention"] * 12, "num_local_experts": 32,
                    "experts_per_token": 4, "intermediate_size": 2880, "vocab_size": 201088})
    assert kinds(g) == ["sliding", "full"] * 12 and g.layers[0].window == 128
    assert (g.n_experts, g.n_experts_active, g.expert_intermediate_size) == (32, 4, 2880)


def test_deepseek_v3_mla():
    d = parse_arch({"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "num_key_value_heads": 128, "kv_lora_rank": 512,
                    "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
                    "n_routed_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
                    "n_shared_experts": 1, "intermediate_size": 18432, "vocab_size": 129280})
    assert all(l.mla_latent_dim == 576 for l in d.layers)
    assert d.layers[0].head_dim_k == 192 and d.layers[0].head_dim_v == 128
    assert (d.n_experts, d.n_experts_active, d.n_shared_experts) == (256, 8, 1)


def test_not_a_decoder():
    assert parse_arch({"model_type": "bert"}) is None


def test_gemma3_text_config_without_head_dim_takes_the_family_default():
    """google/gemma-3-12b-it's text_config leaves out head_dim (transformers Gemma3TextConfig: 256,
    not hidden_size / heads = 240) and max_position_embeddings (131072)."""
    a = parse_arch({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                    "text_config": {"model_type": "gemma3_text", "hidden_size": 3840, "intermediate_size": 15360,
                                    "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8,
                                    "sliding_window": 1024},
                    "vision_config": {"model_type": "siglip_vision_model"}})
    assert {l.head_dim_k for l in a.layers} == {256} and a.max_position_embeddings == 131072
    assert kinds(a).count("full") == 8 and a.layers[0].window == 1024


def test_config_defaults_are_transformers_defaults():
    """Each CONFIG_DEFAULTS entry is its family's transformers config-class default (the code is
    the source; skipped where transformers is not installed)."""
    import inspect

    import pytest

    from nvfp4tools.arch import CONFIG_DEFAULTS

    transformers = pytest.importorskip("transformers")
    mapping = transformers.CONFIG_MAPPING
    for model_type, defaults in CONFIG_DEFAULTS.items():
        cls = mapping[model_type]
        if model_type == "gemma3":   # the multimodal config: its text config class holds the keys
            cls = mapping["gemma3_text"]
        params = inspect.signature(cls.__init__).parameters
        for key, value in defaults.items():
            assert params[key].default == value, (model_type, key, params[key].default, value)


def test_impossible_kv_geometry_is_refused():
    import pytest

    from nvfp4tools.errors import FormatError

    base = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 32,
            "num_key_value_heads": 8}
    for kv in (7, 64):
        with pytest.raises(FormatError, match=f"num_key_value_heads {kv} does not divide num_attention_heads 32"):
            parse_arch({**base, "num_key_value_heads": kv})
    with pytest.raises(FormatError, match="layer_types has 3 entries, expected a list of 4"):
        parse_arch({**base, "layer_types": ["full_attention"] * 3})
    with pytest.raises(FormatError, match="layer_types has 4 entries"):
        parse_arch({**base, "layer_types": ["full_attention", 1, 2, 3]})


def test_config_that_the_k_projection_contradicts_is_refused(synth_dir, tmp_path, run_cli):
    """k_proj holds n_kv_heads x head_dim rows, exactly what the KV cache stores: a config that says
    otherwise (here head_dim) is refused by inspect and estimate, naming the tensor and the fit."""
    import json
    import os

    from tests.helpers import copy_ckpt

    src = copy_ckpt(synth_dir(fmt="modelopt", recipe="all-linear"), tmp_path / "s")
    cfg_path = os.path.join(src, "config.json")
    cfg = json.load(open(cfg_path))
    text = cfg.get("text_config", cfg)
    good = text["head_dim"]
    text["head_dim"] = good * 2
    json.dump(cfg, open(cfg_path, "w"))
    for cmd in (("inspect", src), ("estimate", src, "--gpu", "h100-sxm")):
        r = run_cli(*cmd)
        assert r.exit_code == 3 and "k_proj.weight" in r.stderr and f"head_dim {good} would match" in r.stderr, \
            r.stderr


def _drop_tensors(ckpt: str, marker: str) -> None:
    """Rewrite the checkpoint's shards without the tensors whose names contain MARKER."""
    import glob
    import os

    from safetensors.torch import load_file, save_file

    for f in glob.glob(os.path.join(ckpt, "*.safetensors")):
        kept = {k: v for k, v in load_file(f).items() if marker not in k}
        save_file(kept, f, metadata={"format": "pt"})
    for idx in glob.glob(os.path.join(ckpt, "*.index.json")):
        import json

        d = json.load(open(idx))
        d["weight_map"] = {k: v for k, v in d["weight_map"].items() if marker not in k}
        json.dump(d, open(idx, "w"))


def test_weights_that_do_not_make_the_configured_model_are_refused(synth_dir, tmp_path, run_cli):
    """A projection missing from a layer, a decoder layer with no weights, a hidden_size the
    weights do not have: inspect refuses (exit 3) naming the layer, tensor or key, and convert
    writes nothing."""
    import json
    import os

    from tests.helpers import copy_ckpt, edit_json

    base = synth_dir(fmt="modelopt", recipe="all-linear")
    n = json.load(open(os.path.join(base, "config.json"))).get("text_config", {}).get("num_hidden_layers")
    cases = {"down": ("no down_proj weight", lambda d: _drop_tensors(d, ".layers.1.mlp.down_proj.")),
             "q": ("no q_proj weight", lambda d: _drop_tensors(d, ".layers.0.self_attn.q_proj.weight")),
             "layer": (f"no weight of decoder layer {n - 1}", lambda d: _drop_tensors(d, f".layers.{n - 1}.")),
             "hidden": ("but config.json gives hidden_size", lambda d: edit_json(
                 os.path.join(d, "config.json"),
                 lambda c: c["text_config"].update(hidden_size=c["text_config"]["hidden_size"] * 2)))}
    for name, (says, damage) in cases.items():
        d = copy_ckpt(base, tmp_path / name)
        damage(d)
        r = run_cli("inspect", d)
        assert r.exit_code == 3 and says in r.stderr, (name, r.stderr)
        out = tmp_path / f"{name}.ct"
        r = run_cli("convert", d, str(out), "--to", "compressed-tensors")
        assert r.exit_code == 3 and says in r.stderr and not out.exists(), (name, r.stderr)
