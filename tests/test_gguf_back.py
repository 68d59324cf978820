"""GGUFs llama.cpp wrote, back to safetensors: every supported family's BF16 GGUF (llama.cpp's own
convert_hf_to_gguf.py) converts to a checkpoint equal to the original transformers checkpoint tensor
for tensor (names, dtypes, bytes) that transformers loads and runs to the same logits, with its
tokenizer rebuilt; llama.cpp's NVFP4 GGUFs of ModelOpt exports come back with the export's codes,
block scales and scales byte for byte. Gemma 4 (tiny random Gemma4ForCausalLM text models built
here: MoE with K = V attention, and dense with per-layer embeddings, KV sharing and the double-wide
MLP): BF16/F16 GGUFs come back equal to the original (F16: to the original in F16), with its
config and tokenizer; llama-quantize's Q4_0/Q8_0 GGUFs go to compressed-tensors that decompresses
to gguf-py's dequantization and runs to the logits of the original on those dequantized weights."""

from __future__ import annotations

import json
import os

import pytest

from nvfp4tools import formats
from nvfp4tools.io import PartReader

pytestmark = pytest.mark.interop

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss", "phi3")
# what a GGUF cannot give back (formats/gguf_restore.py): Llama 3's RoPE scaling parameters are not in
# it (only the rope_freqs tensor they produced), so transformers runs the restored model without them
LOGITS_DIFFER = {"llama": "Llama 3 RoPE scaling parameters are not recorded in a GGUF"}


def _bytes(ck, t, role="data"):
    p = t.part(role)
    if p is None:
        return None
    with PartReader(ck.root) as r:
        return p.stored_dtype, tuple(p.stored_shape), r.read(p)


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_bf16_gguf_back_to_the_original(family, family_oracle, run_cli, tmp_path):
    import families

    out = str(tmp_path / "back")
    r = run_cli("convert", family_oracle(family, "bf16.gguf"), out, "--to", "safetensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    orig, back = formats.read(family_oracle(family, "bf16")), formats.read(out)
    assert sorted(back.tensors) == sorted(orig.tensors)
    diff = [n for n, t in orig.tensors.items() if _bytes(orig, t) != _bytes(back, back.tensors[n])]
    assert diff == [], diff[:5]
    assert run_cli("inspect", out).exit_code == 0
    toks = families.test_tokens()
    err = families.rel_error(families.hf_logits(out, toks), families.hf_logits(family_oracle(family, "bf16"), toks))
    if family in LOGITS_DIFFER:
        assert err > 0.01, "the limitation no longer shows: update LOGITS_DIFFER and the docs"
        return
    assert err < 1e-5, err
    from nvfp4tools.formats.gguf_restore import FAMILIES as RESTORED

    if any(f.model_type == family and f.no_tokenizer for f in RESTORED.values()):
        assert not os.path.exists(os.path.join(out, "tokenizer.json"))
        return
    from transformers import AutoTokenizer

    text = "hello world, abc zz 123 the quick fox"
    # the vocabulary and merges (special-token insertion follows the GGUF's add_bos/add_eos keys, when written)
    want = AutoTokenizer.from_pretrained(family_oracle(family, "bf16"))(text, add_special_tokens=False)["input_ids"]
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == want


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "phi3", "qwen2"])
def test_llama_cpp_nvfp4_gguf_back_to_the_modelopt_export(family, family_oracle, run_cli, tmp_path):
    out = str(tmp_path / "back")
    r = run_cli("convert", family_oracle(family, "nvfp4.gguf"), out, "--to", "modelopt")
    assert r.exit_code == 0, r.stderr
    orig, back = formats.read(family_oracle(family, "modelopt_nvfp4")), formats.read(out)
    q = [n for n, t in orig.tensors.items() if t.scheme.name == "nvfp4"]
    assert q and set(q) <= set(back.tensors)
    for n in q:
        for role in ("data", "block_scale", "global_scale", "input_scale"):
            assert _bytes(orig, orig.tensors[n], role) == _bytes(back, back.tensors[n], role), (n, role)
    assert run_cli("verify", out, "--sample", "8").exit_code == 0


def test_unsupported_gguf_architecture_is_refused_by_name(tmp_path, run_cli):
    import gguf
    import numpy as np

    g = str(tmp_path / "x.gguf")
    w = gguf.GGUFWriter(g, "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run_cli("convert", g, str(tmp_path / "out"), "--to", "safetensors")
    assert r.exit_code == 3 and "'mamba' cannot be converted back" in r.stderr and not os.path.exists(tmp_path / "out")


def _ct_decompressed(out: str):
    """Every quantized module of compressed-tensors checkpoint OUT, decompressed by compressed-tensors'
    own compressors (scales widened to float32: its fp16 arithmetic would round int8 x fp16 products)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    with open(os.path.join(out, "config.json")) as fh:
        cfg = QuantizationConfig.model_validate(json.load(fh)["quantization_config"])
    sd = {}
    for f in os.listdir(out):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(out, f)))
    got = {}
    for grp in cfg.config_groups.values():
        comp = BaseCompressor.get_value_from_registry(grp.format)
        mods = grp.targets if not any(t[:1].isupper() for t in grp.targets) else sorted(
            {k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight_scale")})
        for mod in mods:
            local = {k[len(mod) + 1:]: (v.to(torch.float32) if k.endswith("weight_scale") else v)
                     for k, v in sd.items() if k.startswith(mod + ".")}
            got[mod + ".weight"] = comp.decompress(local, grp)["weight"].to(torch.float32).numpy()
    return got


@pytest.mark.parametrize("family", ["qwen3", "llama", "qwen3_moe"])
@pytest.mark.parametrize("kind", ["q4_0.gguf", "q8_0.gguf"])
def test_llama_quantize_gguf_to_compressed_tensors(family, kind, family_oracle, run_cli, tmp_path):
    """llama-quantize's mixed-type GGUFs (Q4_0 with Q8_0 output, or Q8_0) -> compressed-tensors:
    Q4_0 as pack-quantized int4, Q8_0 as int-quantized int8 (group 32, fp16 scales), one config group
    per scheme; compressed-tensors' own decompression equals gguf-py's dequantization element by
    element (after the un-permutation and expert split the conversion undoes)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from nvfp4tools.convert.canon import llama_permutation, unpermute
    from nvfp4tools.formats.gguf_restore import restore

    src = family_oracle(family, kind)
    out = str(tmp_path / "ct")
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    assert run_cli("inspect", out).exit_code == 0
    assert run_cli("verify", out, "--sample", "8").exit_code == 0
    got = _ct_decompressed(out)
    gg = {t.name: t for t in GGUFReader(src).tensors}
    checked = 0
    for tg in restore(formats.read(src)).targets:
        if tg.name not in got:
            continue
        t = gg[tg.sources[0]]
        ref = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        if tg.expert is not None:
            ref = ref[tg.expert]
        if tg.unpermute_heads:
            ref = ref[unpermute(llama_permutation(ref.shape[0], tg.unpermute_heads))]
        assert np.array_equal(got[tg.name], ref), tg.name
        checked += 1
    assert checked == len(got) > 0


def test_k_quants_are_refused_unless_lossy(family_oracle, run_cli, tmp_path):
    src = family_oracle("qwen3", "q4_k_m.gguf")
    out = str(tmp_path / "ct")
    r = run_cli("convert", src, out, "--to", "compressed-tensors")
    assert r.exit_code == 3 and "q4_k" in r.stderr.lower() and "--allow-lossy" in r.stderr and not os.path.exists(out)
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--allow-lossy", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert not rep["lossless"] and rep["lossy"] and all(x["to"] == "bf16" for x in rep["lossy"])
    assert run_cli("inspect", out).exit_code == 0


# -- Gemma 4 -----------------------------------------------------------------------------------------

# Two tiny Gemma4ForCausalLM text models covering what llama.cpp's Gemma4Model converter handles:
# "moe": sliding/full layers with their own head dims and KV heads, K = V full attention, the
#        router (scale, per_expert_scale) and fused experts beside the dense MLP, tied embeddings;
# "ple": dense, per-layer embeddings, the last two layers sharing KV (double-wide MLP there), an
#        untied lm_head. Both: final logit softcapping, proportional RoPE on the full layers.
GEMMA4_COMMON = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=2, head_dim=64,
                     global_head_dim=128, sliding_window=64, initializer_range=0.2, max_position_embeddings=256,
                     pad_token_id=0, eos_token_id=1, bos_token_id=2, final_logit_softcapping=30.0)
GEMMA4_VARIANTS = {
    "moe": dict(num_hidden_layers=4, num_key_value_heads=2, enable_moe_block=True, num_experts=4, top_k_experts=2,
                moe_intermediate_size=64, attention_k_eq_v=True, num_global_key_value_heads=1,
                hidden_size_per_layer_input=0, vocab_size_per_layer_input=512, tie_word_embeddings=True,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
    "ple": dict(num_hidden_layers=5, num_key_value_heads=1, hidden_size_per_layer_input=64,
                vocab_size_per_layer_input=512, num_kv_shared_layers=2, use_double_wide_mlp=True,
                tie_word_embeddings=False, layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                                        "sliding_attention", "full_attention"]),
}
# config.json keys that are not the model (training settings, the writer's version)
CONFIG_IGNORED = {"dtype", "torch_dtype", "transformers_version", "initializer_range", "use_cache",
                  "attention_dropout", "_name_or_path"}


def _gemma4_model(variant: str, out: str) -> None:
    """A random bf16 Gemma4ForCausalLM saved in OUT with a 512-token Gemma tokenizer (transformers'
    GemmaTokenizer over a byte-fallback BPE, the kind llama.cpp's LlamaHfVocab reads). Norms, router
    scales, per-expert scales and layer scalars are random too, so a misplaced one shows."""
    import json

    import families
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Gemma4ForCausalLM, GemmaTokenizer
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    torch.manual_seed(0)
    cfg = Gemma4TextConfig(**GEMMA4_COMMON, **GEMMA4_VARIANTS[variant])
    cfg.architectures = ["Gemma4ForCausalLM"]
    model = Gemma4ForCausalLM(cfg).to(torch.bfloat16).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in [*model.named_parameters(), *model.named_buffers()]:
            if p.ndim == 1 and (name.endswith(("norm.weight", "layer_scalar", "scale"))):
                p.copy_((torch.rand(p.shape, generator=g) + 0.5).to(p.dtype))
    model.save_pretrained(out)
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(families._corpus(), trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                                                    show_progress=False))
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    GemmaTokenizer(vocab=bpe["vocab"], merges=merges).save_pretrained(out)


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    """Factory: gemma4(variant, kind) -> path; kind "bf16" (transformers), "bf16.gguf" / "f16.gguf"
    (llama.cpp's convert_hf_to_gguf.py) or "q4_0.gguf" / "q8_0.gguf" (llama_model_quantize of bf16.gguf)."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "compressed_tensors") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"interop oracles not installed ({', '.join(missing)}): pip install -e '.[oracles]'")
    import families

    if not os.path.isfile(os.path.join(families.LLAMA_CPP, "convert_hf_to_gguf.py")):
        pytest.skip(f"llama.cpp converter not found in {families.LLAMA_CPP} (make setup-test)")
    base = tmp_path_factory.mktemp("gemma4")
    cache: dict[tuple[str, str], str] = {}

    def get(variant: str, kind: str) -> str:
        if (variant, kind) in cache:
            return cache[variant, kind]
        out = str(base / f"{variant}-{kind}")
        if kind == "bf16":
            _gemma4_model(variant, out)
        elif kind in ("bf16.gguf", "f16.gguf"):
            families.llama_cpp_convert(get(variant, "bf16"), out, kind.split(".")[0])
        else:
            if importlib.util.find_spec("llama_cpp") is None:
                pytest.skip("llama-cpp-python not installed (llama_model_quantize writes the quantized GGUFs)")
            families.llama_cpp_quantize(get(variant, "bf16.gguf"), out, families.QUANTIZED_GGUF[kind])
        cache[variant, kind] = out
        return out

    return get


def _state(path: str) -> dict:
    """Every tensor of the safetensors checkpoint PATH (torch)."""
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(path, f)))
    return sd


def _gemma4_logits(config_dir: str, state: dict, tokens) -> "np.ndarray":  # noqa: F821
    """Logits of transformers' Gemma4ForCausalLM (config from CONFIG_DIR, without any quantization
    config) with the float32 weights STATE, eager attention."""
    import json

    import torch
    from transformers import Gemma4ForCausalLM
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    with open(os.path.join(config_dir, "config.json")) as fh:
        cfg = json.load(fh)
    cfg.pop("quantization_config", None)
    model = Gemma4ForCausalLM(Gemma4TextConfig(**cfg)).float().eval()
    model.config._attn_implementation = "eager"
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if cfg.get("tie_word_embeddings"):
        model.tie_weights()
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(tokens)])).logits[0].numpy()


def _dequantized_original(orig: str, gguf_path: str) -> dict:
    """The original checkpoint ORIG's tensors with the values of the GGUF tensor llama.cpp wrote for
    each (the name from gguf-py's own TensorNameMap, as convert_hf_to_gguf.py maps it; router.scale
    and per_expert_scale by Gemma4Model.modify_tensors), dequantized by gguf-py: an oracle for the
    restored checkpoint that does not use nvfp4tools' name table."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import dequantize

    sd = _state(orig)
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, n_layer)
    gg = {t.name: t for t in gguf.GGUFReader(gguf_path).tensors}
    out = {}
    for name, v in sd.items():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if name.endswith("router.scale"):
            gname = f"blk.{layer}.ffn_gate_inp.scale"
        elif name.endswith("router.per_expert_scale"):
            gname = f"blk.{layer}.ffn_down_exps.scale"
        else:
            gname = tmap.get_name(name if name.endswith(".weight") else name + ".weight", try_suffixes=(".weight",))
        t = gg[gname]
        vals = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        out[name] = torch.from_numpy(vals.reshape(tuple(v.shape)).copy())
    return out


def _check_tokenizer(orig: str, out: str) -> None:
    from transformers import AutoTokenizer

    text = "hello world, abc zz 123 the quick fox"
    want = AutoTokenizer.from_pretrained(orig)(text, add_special_tokens=False)["input_ids"]
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == want


@pytest.mark.parametrize("variant", sorted(GEMMA4_VARIANTS))
@pytest.mark.parametrize("kind", ["bf16.gguf", "f16.gguf"])
def test_llama_cpp_gemma4_gguf_back_to_the_original(variant, kind, gemma4, run_cli, tmp_path):
    """BF16: every tensor equal to the original (names, dtypes, bytes), logits identical; F16: equal
    to the original in F16, except tensors whose values F16 does not hold (kept F32, exactly)."""
    import families
    import torch
    from transformers import AutoConfig

    orig, out = gemma4(variant, "bf16"), str(tmp_path / "back")
    r = run_cli("convert", gemma4(variant, kind), out, "--to", "safetensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    assert run_cli("inspect", out).exit_code == 0
    want, got = _state(orig), _state(out)
    assert sorted(got) == sorted(want)
    for n, v in want.items():
        if kind == "f16.gguf":
            v = v.to(torch.float16) if got[n].dtype == torch.float16 else v.to(torch.float32)
        assert got[n].dtype == v.dtype and got[n].shape == v.shape and torch.equal(got[n], v), n
    a = {k: v for k, v in AutoConfig.from_pretrained(orig).to_dict().items() if k not in CONFIG_IGNORED}
    b = {k: v for k, v in AutoConfig.from_pretrained(out).to_dict().items() if k not in CONFIG_IGNORED}
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    toks = families.test_tokens(96)   # past the 64-token sliding window
    ref = _gemma4_logits(orig, {k: v.to(got[k].dtype).float() for k, v in want.items()}, toks)
    assert families.rel_error(families.hf_logits(out, toks), ref) < 1e-6
    _check_tokenizer(orig, out)


@pytest.mark.parametrize("variant", sorted(GEMMA4_VARIANTS))
@pytest.mark.parametrize("kind", ["q4_0.gguf", "q8_0.gguf"])
def test_llama_quantize_gemma4_gguf_to_compressed_tensors(variant, kind, gemma4, run_cli, tmp_path):
    """Q4_0 -> pack-quantized int4, Q8_0 -> int8, experts one per expert (experts.E.{gate,up,down}_proj);
    compressed-tensors' own decompression equals gguf-py's dequantization, and transformers' Gemma 4
    with those weights (experts fused back) computes the logits of the original model holding the
    GGUF's dequantized values."""
    import families
    import torch

    src, orig, out = gemma4(variant, kind), gemma4(variant, "bf16"), str(tmp_path / "ct")
    r = run_cli("convert", src, out, "--to", "compressed-tensors", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["lossless"]
    assert run_cli("inspect", out).exit_code == 0
    assert run_cli("verify", out, "--sample", "8").exit_code == 0
    assert run_cli("verify", out, "--against", orig, "--sample", "16").exit_code == 0
    deq = _dequantized_original(orig, src)
    dec = _ct_decompressed(out)
    quantized = {k[: -len(".weight")] for k in dec}
    state = {k: v.float() for k, v in _state(out).items() if k.rsplit(".", 1)[0] not in quantized}
    state.update({k: torch.from_numpy(v) for k, v in dec.items()})
    for key in [k for k in state if ".experts.0." in k]:   # one per expert -> transformers' fused experts
        pre, proj = key.split(".experts.0.")
        n_e = sum(1 for k in state if k.startswith(pre + ".experts.") and k.endswith(proj))
        if proj == "down_proj.weight":
            state[pre + ".experts.down_proj"] = torch.stack([state.pop(f"{pre}.experts.{e}.{proj}")
                                                             for e in range(n_e)])
        elif proj == "gate_proj.weight":
            state[pre + ".experts.gate_up_proj"] = torch.stack([
                torch.cat([state.pop(f"{pre}.experts.{e}.gate_proj.weight"),
                           state.pop(f"{pre}.experts.{e}.up_proj.weight")]) for e in range(n_e)])
    assert sorted(state) == sorted(deq)
    diff = [k for k in deq if not torch.equal(state[k], deq[k])]
    assert diff == [], diff[:5]
    toks = families.test_tokens(96)
    assert families.rel_error(_gemma4_logits(out, state, toks), _gemma4_logits(orig, deq, toks)) == 0.0


def test_llama_quantize_gemma4_gguf_to_safetensors(gemma4, run_cli, tmp_path):
    """--to safetensors has no exact form for Q4_0: refused naming a tensor; --allow-lossy writes
    BF16 (experts fused, as transformers holds them): the GGUF's dequantized values rounded to BF16,
    and transformers computes the logits of the original model holding those values."""
    import families

    src, orig, out = gemma4("moe", "q4_0.gguf"), gemma4("moe", "bf16"), str(tmp_path / "st")
    r = run_cli("convert", src, out, "--to", "safetensors")
    assert r.exit_code == 3 and "is q4_0" in r.stderr and "blk." in r.stderr and not os.path.exists(out)
    r = run_cli("convert", src, out, "--to", "safetensors", "--allow-lossy", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert not json.loads(r.stdout)["lossless"]
    assert run_cli("inspect", out).exit_code == 0
    deq = _dequantized_original(orig, src)
    got = _state(out)
    assert sorted(got) == sorted(deq)
    rounded = {k: v.to(got[k].dtype).float() for k, v in deq.items()}
    assert [k for k in deq if not got[k].float().equal(rounded[k])] == []
    toks = families.test_tokens(96)
    assert families.rel_error(families.hf_logits(out, toks), _gemma4_logits(orig, rounded, toks)) < 1e-6


@pytest.mark.interop
def test_llama_cpp_gemma4_multimodal_gguf_back_to_its_text_model(llama_cpp_ggufs, oracles, run_cli, tmp_path):
    """llama.cpp's GGUF of the Gemma4ForConditionalGeneration oracle (tests/oracles/build.py) holds its
    text model: back as Gemma4ForCausalLM, each tensor equal to the language model's; the NVFP4 GGUF
    of its ModelOpt export, whose down experts' scales carry router.per_expert_scale folded in, is
    refused naming that tensor."""
    out = str(tmp_path / "back")
    r = run_cli("convert", llama_cpp_ggufs["bf16"], out, "--to", "safetensors")
    assert r.exit_code == 0, r.stderr
    assert run_cli("inspect", out).exit_code == 0
    want = {k.replace("model.language_model.", "model."): v for k, v in _state(oracles["bf16"]).items()
            if k.startswith("model.language_model.")}
    got = _state(out)
    assert sorted(got) == sorted(want)
    assert [k for k in want if not (got[k].dtype == want[k].dtype and got[k].equal(want[k]))] == []
    r = run_cli("convert", llama_cpp_ggufs["nvfp4"], str(tmp_path / "nv"), "--to", "modelopt")
    assert r.exit_code == 3 and "ffn_down_exps.scale'" in r.stderr and "per_expert_scale" in r.stderr
    assert not os.path.exists(tmp_path / "nv")
