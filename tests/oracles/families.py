"""Real upstream checkpoints for the common decoder families (interop oracles), built on a CPU.

For each family in FAMILIES a tiny random transformers model (bf16, ``initializer_range`` 0.2 so
that a wrong Q/K permutation shows in the logits, every linear's ``in_features`` a multiple of 64
so NVFP4 blocks of 16 and int4 groups of 32 divide it) is written under ``CACHE/<family>/`` as:

- ``bf16/``            transformers ``save_pretrained`` + a tiny BPE tokenizer (make_tokenizer),
- ``modelopt_nvfp4/``  nvidia-modelopt ``NVFP4_DEFAULT_CFG`` + ``export_hf_checkpoint`` of the
                       same weights (tokenizer copied in),
- ``bf16.gguf``        llama.cpp's own ``convert_hf_to_gguf.py --outtype bf16`` of ``bf16/``,
- ``nvfp4.gguf``       llama.cpp's own ``convert_hf_to_gguf.py`` of ``modelopt_nvfp4/`` (NVFP4
                       tensors); not for every family: see UPSTREAM_LIMITS and LLAMA_CPP_RUN_LIMITS.
- ``q4_0.gguf``, ``q8_0.gguf``, ``q4_k_m.gguf``  llama.cpp's own ``llama_model_quantize`` of
                       ``bf16.gguf`` (llama-cpp-python), the mixed-type files users download.

``build(family, kind, cache_dir)`` builds one lazily (and what it needs first) and returns its
path; a finished artifact is moved into place only when complete, so a cached path is always whole.
``llama_logits`` / ``hf_logits`` run llama.cpp (llama-cpp-python) and transformers on token ids.

    python tests/oracles/families.py OUT_DIR [FAMILY ...]     # builds and times every kind
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss", "phi3")
KINDS = ("bf16", "modelopt_nvfp4", "bf16.gguf", "nvfp4.gguf", "q4_0.gguf", "q8_0.gguf", "q4_k_m.gguf")
# kind -> llama_ftype (llama.h) that llama.cpp's llama_model_quantize writes from bf16.gguf
QUANTIZED_GGUF = {"q4_0.gguf": 2, "q8_0.gguf": 7, "q4_k_m.gguf": 15}

VOCAB = 512
# Token ids of add_tokenizer's vocabulary: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
_SPECIAL_IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
_COMMON = dict(vocab_size=VOCAB, initializer_range=0.2, max_position_embeddings=256, tie_word_embeddings=False,
               **_SPECIAL_IDS)

# family -> (transformers config class, architecture, config kwargs). hidden 128; heads of 32 or 64;
# GQA everywhere it exists; every linear's in_features is 64, 128 or 256. The MoE families route
# every token to all 4 experts (top-k = E): with top-k < E a near-tie between two experts' router
# scores flips under llama.cpp's BF16 activation rounding and one flipped token puts the logits
# 20-90% off (seen with qwen3_moe, top-2 of 4); with every expert active the routing weights are
# continuous, and a wrong expert order, gate/up split or gating function still shows.
SPECS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32,
        # Llama 3 RoPE scaling; original_max_position_embeddings is small so that the scaled (low)
        # frequencies matter within a 32-token prompt (published: 8192).
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64))),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, sliding_window=None)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(
        hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, num_local_experts=4, num_experts_per_tok=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=4, num_experts_per_tok=4,
        norm_topk_prob=True)),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        # layer 0 dense, layer 1 MoE (one shared expert); MLA with q/kv LoRA ranks of 64.
        hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=4, num_experts_per_tok=4, n_shared_experts=1,
        n_group=1, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=2.5, num_nextn_predict_layers=0,
        # transformers always routes with sigmoid scores but does not write these keys; published
        # configs do, and llama.cpp's converter needs scoring_func (without it llama.cpp falls back
        # to softmax gating: logits 22% off).
        scoring_func="sigmoid", topk_method="noaux_tc")),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(
        # attention sinks, biases, alternating 128-token sliding window, fused experts.
        hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, num_local_experts=4, num_experts_per_tok=4, sliding_window=128, max_position_embeddings=131072,
        layer_types=["sliding_attention", "full_attention"])),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        # fused qkv_proj / gate_up_proj
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        original_max_position_embeddings=256)),
}

# What llama.cpp's converter should answer in get_vocab_base_pre for the family (it refuses a
# byte-level BPE pre-tokenizer hash it does not know; tensors are unaffected). None: the family's
# converter reads the tokenizer through LlamaHfVocab and never asks.
GGUF_PRE = {"llama": None, "mistral": None, "mixtral": None, "qwen2": "qwen2", "qwen3": "qwen2",
            "qwen3_moe": "qwen2", "deepseek_v3": "deepseek-v3", "gpt_oss": "gpt-4o", "phi3": "gpt-4o"}

# (family, kind) -> the upstream tool's own limitation; build() raises UpstreamLimitation for these.
# Seen with llama-cpp-python 0.3.36's converter, nvidia-modelopt 0.47, transformers 5.25.
UPSTREAM_LIMITS: dict[tuple[str, str], str] = {
    ("mixtral", "nvfp4.gguf"): "llama.cpp's convert_hf_to_gguf.py cannot convert ModelOpt's NVFP4 Mixtral export: "
                               "ValueError: Can not map tensor 'model.layers.0.block_sparse_moe.experts.0.w1.weight'",
    ("gpt_oss", "nvfp4.gguf"): "llama.cpp's convert_hf_to_gguf.py cannot convert ModelOpt's NVFP4 gpt-oss export "
                               "(fused experts [E, in/2, out]): IndexError: Dimension out of range (expected to be "
                               "in range of [-1, 0], but got -2)",
}
# (family, kind) -> why llama.cpp itself cannot run a file that its converter did write (build()
# returns these: they are still llama.cpp's own output, good for reading, not for llama_logits).
LLAMA_CPP_RUN_LIMITS: dict[tuple[str, str], str] = {
    ("deepseek_v3", "nvfp4.gguf"): "llama.cpp does not load the NVFP4 DeepSeek-V3 GGUF its converter writes "
                                   "(check_tensor_dims: tensor 'blk.0.attn_k_b.weight' not found: kv_b_proj is "
                                   "not split into attn_k_b / attn_v_b for NVFP4)",
    ("qwen2", "nvfp4.gguf"): "llama.cpp loads the NVFP4 Qwen2 GGUF its converter writes but gives NaN logits",
    ("phi3", "nvfp4.gguf"): "llama.cpp loads the NVFP4 Phi-3 GGUF its converter writes but gives NaN logits",
}

LLAMA_CPP = os.environ.get("NVFP4TOOLS_LLAMA_CPP") or os.path.join(os.path.dirname(os.path.dirname(HERE)), ".cache",
                                                                   "llama.cpp")


class UpstreamLimitation(RuntimeError):
    """The upstream tool itself cannot produce this artifact (not a bug of ours or of the builder)."""


# ----------------------------------------------------------------------------------------------
# models


def tiny_config(family: str):
    import transformers

    cls_name, arch, kw = SPECS[family]
    cfg = getattr(transformers, cls_name)(**{**_COMMON, **kw})
    cfg.architectures = [arch]  # ModelOpt's export crashes on None (oracles.md)
    return cfg


def tiny_model(family: str, seed: int = 0):
    """A random bf16 transformers model of FAMILY (eval mode)."""
    import torch
    import transformers

    _check_family(family)
    torch.manual_seed(seed)
    cfg = tiny_config(family)
    model = getattr(transformers, SPECS[family][1])(cfg).to(torch.bfloat16).eval()
    return model


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


def _corpus() -> list[str]:
    """Deterministic text with enough distinct pairs for the BPE trainer to reach VOCAB tokens."""
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(4000)]
    base = ["the quick brown fox jumps over the lazy dog", "nvfp4 tools inspect estimate convert verify",
            "hello world, this is a tiny tokenizer for tests"]
    return base * 4 + [" ".join(words[i:i + 20]) for i in range(0, len(words), 20)]


def make_tokenizer(family: str):
    """A VOCAB-token tokenizer of the kind llama.cpp's converter reads for FAMILY.

    llama / mistral / mixtral (read through LlamaHfVocab): a byte-fallback BPE with a Metaspace
    pre-tokenizer and a Sequence decoder, like build.add_tokenizer (oracles.md). The families read
    through get_vocab_base (Qwen, DeepSeek, gpt-oss, Phi-3 by its GPT2Tokenizer path): a byte-level
    BPE, as theirs are; a byte-fallback one would not do there, because the converter re-decodes its
    <0xNN> added tokens to single characters that collide with ordinary tokens, and llama.cpp then
    aborts on load (GGML_ASSERT id_to_token.size() == token_to_id.size()). Both have exactly VOCAB
    tokens (a shorter token list than the embedding makes LlamaHfVocab's GGUF unloadable) and
    <pad>=0, <eos>=1, <bos>=2, <unk>=3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    if GGUF_PRE[family] is None:
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)],
                                      show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    if tok.get_vocab_size() != VOCAB:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, not {VOCAB}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def add_tokenizer(family: str, dirs: list[str]) -> None:
    """Save make_tokenizer(FAMILY) into DIRS."""
    fast = make_tokenizer(family)
    for d in dirs:
        fast.save_pretrained(d)
        if family == "phi3":
            # llama.cpp's Phi3 converter wants a SentencePiece tokenizer.model unless the tokenizer
            # class is GPT2Tokenizer (its Phi-4 path): declare that class for the byte-level BPE.
            p = os.path.join(d, "tokenizer_config.json")
            with open(p) as fh:
                tc = json.load(fh)
            tc["tokenizer_class"] = "GPT2Tokenizer"
            with open(p, "w") as fh:
                json.dump(tc, fh, indent=2)


# ----------------------------------------------------------------------------------------------
# the artifacts


def _family_dir(family: str, cache_dir: str) -> str:
    return os.path.join(os.fspath(cache_dir), family)


def _publish(tmp: str, final: str) -> str:
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def build_bf16(family: str, cache_dir: str) -> str:
    """CACHE/<family>/bf16/: save_pretrained safetensors + tokenizer."""
    import torch

    out = os.path.join(_family_dir(family, cache_dir), "bf16")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".bf16-", dir=os.path.dirname(out))
    try:
        model = tiny_model(family)
        model.save_pretrained(tmp)
        model.config.dtype = torch.bfloat16
        add_tokenizer(family, [tmp])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, out)


def _forward_loop(model) -> None:
    import torch

    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        model(input_ids=torch.randint(4, VOCAB, (4, 32), generator=g))


def build_modelopt_nvfp4(family: str, cache_dir: str) -> str:
    """CACHE/<family>/modelopt_nvfp4/: ModelOpt NVFP4_DEFAULT_CFG of the bf16/ weights, exported."""
    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from modelopt.torch.export import export_hf_checkpoint

    out = os.path.join(_family_dir(family, cache_dir), "modelopt_nvfp4")
    if os.path.isfile(os.path.join(out, "hf_quant_config.json")):
        return out
    src = build_bf16(family, cache_dir)
    tmp = tempfile.mkdtemp(prefix=".modelopt-", dir=os.path.dirname(out))
    try:
        model = getattr(transformers, SPECS[family][1]).from_pretrained(src, dtype=torch.bfloat16).eval()
        model.config.dtype = torch.bfloat16  # a string here makes the export fail (oracles.md)
        model.config.architectures = [SPECS[family][1]]
        with torch.no_grad():
            mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, _forward_loop)
        export_hf_checkpoint(model, export_dir=tmp)
        for n in os.listdir(src):
            if n.startswith(("tokenizer", "special_tokens")):
                shutil.copy2(os.path.join(src, n), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, out)


# Runs llama.cpp's convert_hf_to_gguf.py as __main__ after answering get_vocab_base_pre.
_CONVERT = r"""
import runpy, sys
conv, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [conv, conv + "/gguf-py"]
if pre:
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
script = conv + "/convert_hf_to_gguf.py"
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def llama_cpp_convert(src: str, out: str, outtype: str | None = None, pre: str | None = None,
                      converter_dir: str | None = None) -> None:
    """llama.cpp's own convert_hf_to_gguf.py on SRC (PRE: the answer to get_vocab_base_pre)."""
    conv = converter_dir or LLAMA_CPP
    if not os.path.isfile(os.path.join(conv, "convert_hf_to_gguf.py")):
        raise FileNotFoundError(f"llama.cpp converter not found in {conv} (make setup-test extracts it)")
    cmd = [sys.executable, "-c", _CONVERT, conv, pre or "", src, "--outfile", out]
    if outtype:
        cmd += ["--outtype", outtype]
    env = dict(os.environ, NO_LOCAL_GGUF="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {src}:\n{r.stderr[-3000:]}")


def _llama_cpp_gguf(family: str, cache_dir: str, name: str, source: str, outtype: str | None) -> str:
    """CACHE/<family>/NAME: llama.cpp's convert_hf_to_gguf.py of SOURCE (a kind), written to a
    temporary name and renamed when complete."""
    out = os.path.join(_family_dir(family, cache_dir), name)
    if os.path.isfile(out):
        return out
    src = BUILDERS[source](family, cache_dir)
    return _write_file(out, lambda tmp: llama_cpp_convert(src, tmp, outtype, GGUF_PRE[family]))


def _write_file(out: str, write) -> str:
    """WRITE(tmp) into OUT + ".part", renamed to OUT when complete (removed if it fails): a cached
    file is always whole."""
    tmp = out + ".part"
    try:
        write(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out)
    return out


def build_bf16_gguf(family: str, cache_dir: str) -> str:
    """CACHE/<family>/bf16.gguf: llama.cpp's convert_hf_to_gguf.py --outtype bf16 of bf16/."""
    return _llama_cpp_gguf(family, cache_dir, "bf16.gguf", "bf16", "bf16")


def build_nvfp4_gguf(family: str, cache_dir: str) -> str:
    """CACHE/<family>/nvfp4.gguf: llama.cpp's convert_hf_to_gguf.py of modelopt_nvfp4/ (NVFP4 tensors)."""
    return _llama_cpp_gguf(family, cache_dir, "nvfp4.gguf", "modelopt_nvfp4", None)


# Runs llama.cpp's llama_model_quantize (llama-cpp-python) in a child process: an abort in
# llama.cpp ends the child, not the test run.
_QUANTIZE = r"""
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = int(sys.argv[3]), 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def llama_cpp_quantize(src: str, out: str, ftype: int) -> None:
    """llama.cpp's own llama_model_quantize of the GGUF SRC to the llama_ftype FTYPE (its mixes:
    Q4_0 keeps token_embd/output in Q6_K, Q4_K_M mixes Q4_K/Q6_K and falls back to Q5_0/Q8_0 for rows
    that are not a multiple of 256)."""
    r = subprocess.run([sys.executable, "-c", _QUANTIZE, src, out, str(ftype)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama_model_quantize failed on {src} (ftype {ftype}):\n{r.stderr[-3000:]}")


def build_quantized_gguf(family: str, cache_dir: str, kind: str) -> str:
    """CACHE/<family>/KIND: llama_model_quantize of bf16.gguf to QUANTIZED_GGUF[KIND]."""
    out = os.path.join(_family_dir(family, cache_dir), kind)
    if os.path.isfile(out):
        return out
    src = build_bf16_gguf(family, cache_dir)
    return _write_file(out, lambda tmp: llama_cpp_quantize(src, tmp, QUANTIZED_GGUF[kind]))


BUILDERS = {"bf16": build_bf16, "modelopt_nvfp4": build_modelopt_nvfp4, "bf16.gguf": build_bf16_gguf,
            "nvfp4.gguf": build_nvfp4_gguf,
            **{k: (lambda family, cache_dir, k=k: build_quantized_gguf(family, cache_dir, k)) for k in QUANTIZED_GGUF}}


def build(family: str, kind: str, cache_dir) -> str:
    """Path of FAMILY's KIND artifact under CACHE_DIR, built (with what it needs) unless already there.

    Raises UpstreamLimitation for a (family, kind) the upstream tool cannot make (UPSTREAM_LIMITS)."""
    _check_family(family)
    if kind not in BUILDERS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if (family, kind) in UPSTREAM_LIMITS:
        raise UpstreamLimitation(f"{family} {kind}: {UPSTREAM_LIMITS[family, kind]}")
    return BUILDERS[kind](family, os.fspath(cache_dir))


# ----------------------------------------------------------------------------------------------
# running the models


def llama_logits(gguf_path: str, tokens) -> "numpy.ndarray":  # noqa: F821
    """Logits [len(tokens), vocab] (float32) of llama.cpp (llama-cpp-python) on the token ids TOKENS."""
    import numpy as np
    from llama_cpp import Llama

    tokens = [int(t) for t in tokens]
    n_ctx = max(64, -(-len(tokens) // 64) * 64)
    llm = Llama(model_path=os.fspath(gguf_path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                n_threads=os.cpu_count() or 1, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def hf_logits(hf_dir: str, tokens) -> "numpy.ndarray":  # noqa: F821
    """Logits [len(tokens), vocab] of transformers (float32, eager attention) on TOKENS."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.fspath(hf_dir), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[int(t) for t in tokens]])).logits[0]
    return out.float().numpy()


def rel_error(got, ref) -> float:
    """||got - ref|| / ||ref|| (Frobenius)."""
    import numpy as np

    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_tokens(n: int = 32, seed: int = 0) -> list[int]:
    """N pseudo-random ordinary token ids (no specials), the same on every call."""
    import random

    rng = random.Random(seed)
    return [rng.randrange(4, VOCAB) for _ in range(n)]


test_tokens.__test__ = False  # not a pytest test


def main(argv: list[str]) -> int:
    root, fams = argv[0], argv[1:] or list(FAMILIES)
    times: dict[str, dict[str, float | str]] = {}
    for fam in fams:
        times[fam] = {}
        for kind in KINDS:
            t0 = time.perf_counter()
            try:
                build(fam, kind, root)
                times[fam][kind] = round(time.perf_counter() - t0, 1)
            except Exception as e:  # report and go on
                times[fam][kind] = f"FAILED after {time.perf_counter() - t0:.1f}s: {type(e).__name__}: " + \
                                   str(e).strip().splitlines()[-1][:300]
        print(fam, json.dumps(times[fam]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
