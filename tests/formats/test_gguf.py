"""GGUF reader: agrees with gguf-py's own reader, same architecture as config.json, same roles and
parameters as the safetensors checkpoint; hostile files fail in one line with exit 3."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from nvfp4tools import formats
from nvfp4tools.arch import parse_arch
from nvfp4tools.inspect import build_report
from nvfp4tools.synth import GEMMA4_TINY
from nvfp4tools.synth_gguf import write_gemma4_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {q: write_gemma4_gguf(str(d / f"tiny-{q}.gguf"), qtype=q)["path"] for q in ("q4_0", "q8_0", "bf16")}


def test_type_table_matches_gguf_package():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from nvfp4tools.formats._ggml_types import GGML_TYPES

    # where gguf-py disagrees with ggml's own block struct, ggml's loader decides the bytes on disk
    ggml_wins = {"Q8_1": (32, 36)}   # ggml-common.h block_q8_1: fp16 d, fp16 s, 32 x int8
    for t in GGMLQuantizationType:
        assert t.value in GGML_TYPES, t
        name, block, nbytes = GGML_TYPES[t.value]
        assert (name, block, nbytes) == (t.name, *ggml_wins.get(t.name, GGML_QUANT_SIZES[t])), t
    assert all(GGML_QUANT_SIZES[GGMLQuantizationType[n]] != v for n, v in ggml_wins.items()), "gguf-py fixed: drop"


@pytest.mark.parametrize("q", ["q4_0", "q8_0", "bf16"])
def test_agrees_with_gguf_reader(tiny_gguf, q):
    from gguf import GGUFReader

    ck = formats.read(tiny_gguf[q])
    r = GGUFReader(tiny_gguf[q])
    assert len(r.tensors) == len(ck.tensors)
    for t in r.tensors:
        ours = ck.tensors[t.name]
        assert ours.shape == tuple(int(x) for x in reversed(t.shape.tolist()))
        data = ours.part("data")
        assert data.stored_dtype == t.tensor_type.name
        assert data.nbytes == int(t.n_bytes) and data.offset == int(t.data_offset)


def test_gguf_arch_equals_config_arch(tiny_gguf):
    ck = formats.read(tiny_gguf["q4_0"])
    want = parse_arch(GEMMA4_TINY)
    assert ck.arch.layers == want.layers
    assert (ck.arch.n_experts, ck.arch.n_experts_active, ck.arch.expert_intermediate_size) == (8, 2, 64)
    assert ck.arch.vocab_size == 512 and ck.arch.tie_word_embeddings


def test_same_roles_and_params_as_safetensors(tiny_gguf, synth_dir):
    g = build_report(formats.read(tiny_gguf["bf16"]))
    s = build_report(formats.read(synth_dir(fmt="bf16", experts="fused")))
    gr = {r["role"]: r["n_parameters"] for r in g["roles"]}
    sr = {r["role"]: r["n_parameters"] for r in s["roles"] if r["role"] not in ("vision", "projector")}
    assert gr == sr


def test_summary_fields(tiny_gguf, run_cli):
    r = run_cli("inspect", tiny_gguf["q4_0"], "--format", "json")
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)["metadata"]
    assert m["general.file_type"] == "MOSTLY_Q4_0" and m["tokenizer.ggml.model"] == "gemma4"
    assert m["vocab_size"] == 512 and m["general.quantization_version"] == 2
    t = run_cli("inspect", tiny_gguf["q4_0"])
    assert "file_type MOSTLY_Q4_0" in t.stdout


def test_q4_0_values_dequantize_like_gguf(tiny_gguf):
    from gguf import GGUFReader, quants

    from nvfp4tools.kernels_ref.ggml_quants import dequantize_q4_0
    from nvfp4tools.tensors import load_part

    ck = formats.read(tiny_gguf["q4_0"])
    r = GGUFReader(tiny_gguf["q4_0"])
    t = next(x for x in r.tensors if x.name == "blk.0.attn_q.weight")
    ours = dequantize_q4_0(np.asarray(load_part(ck.root, ck.tensors[t.name].part("data"))))
    assert np.array_equal(ours.reshape(-1), quants.dequantize(t.data, t.tensor_type).reshape(-1))


# -- hostile files ----------------------------------------------------------------------------------

def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf(version=3, n_tensors=1, n_kv=1, kv=None, tensors=None, pad=True, data=b"\0" * 64):
    kv = kv if kv is not None else _s("general.architecture") + struct.pack("<I", 8) + _s("llama")
    tensors = tensors if tensors is not None else _s("a.weight") + struct.pack("<IQIQ", 1, 16, 0, 0)  # 16 x F32
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kv + tensors
    if pad:
        head += b"\0" * ((-len(head)) % 32)
    return head + data


def _check(run_cli, tmp_path, blob, *needles):
    p = tmp_path / "x.gguf"
    p.write_bytes(blob)
    r = run_cli("inspect", str(p))
    assert r.exit_code == 3, (r.exit_code, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_minimal_valid(tmp_path, run_cli):
    p = tmp_path / "x.gguf"
    p.write_bytes(_gguf())
    assert run_cli("inspect", str(p)).exit_code == 0


def test_wrong_magic(tmp_path, run_cli):
    _check(run_cli, tmp_path, b"GGUX" + _gguf()[4:], "bad magic")


@pytest.mark.parametrize("v,needle", [(1, "version 1 is not supported"), (99, "version 99 is not supported")])
def test_bad_version(tmp_path, run_cli, v, needle):
    _check(run_cli, tmp_path, _gguf(version=v), needle)


def test_truncated_header(tmp_path, run_cli):
    _check(run_cli, tmp_path, _gguf()[:30], "cannot fit in a 30-byte file")
    _check(run_cli, tmp_path, _gguf()[:60], "needs", "the file ends at 60")


def test_tensor_count_larger_than_file(tmp_path, run_cli):
    _check(run_cli, tmp_path, _gguf(n_tensors=10**12), "tensor count 1000000000000 cannot fit")


def test_string_length_larger_than_file(tmp_path, run_cli):
    kv = struct.pack("<Q", 2**40) + b"abc"
    _check(run_cli, tmp_path, _gguf(kv=kv), "key", "needs 1099511627776 bytes")


def test_tensor_data_past_eof(tmp_path, run_cli):
    t = _s("a.weight") + struct.pack("<IQIQ", 1, 4096, 0, 0)
    _check(run_cli, tmp_path, _gguf(tensors=t), "tensor 'a.weight' data", "past the end")


def test_misaligned_offset(tmp_path, run_cli):
    t = _s("a.weight") + struct.pack("<IQIQ", 1, 4, 0, 3)
    _check(run_cli, tmp_path, _gguf(tensors=t), "offset 3 is not aligned to 32")


def test_duplicate_tensor_names(tmp_path, run_cli):
    one = _s("a.weight") + struct.pack("<IQIQ", 1, 4, 0, 0)
    _check(run_cli, tmp_path, _gguf(n_tensors=2, tensors=one + one), "duplicate tensor name 'a.weight'")


def test_unknown_type_id(tmp_path, run_cli):
    t = _s("a.weight") + struct.pack("<IQIQ", 1, 32, 77, 0)
    _check(run_cli, tmp_path, _gguf(tensors=t), "unknown ggml type id 77", "known ids")


def test_row_not_multiple_of_block(tmp_path, run_cli):
    t = _s("a.weight") + struct.pack("<IQIQ", 1, 33, 2, 0)
    _check(run_cli, tmp_path, _gguf(tensors=t), "row size 33 is not a multiple of the Q4_0 block size (32)")


def test_missing_split_shard(tmp_path, run_cli):
    (tmp_path / "m-00001-of-00002.gguf").write_bytes(_gguf())
    r = run_cli("inspect", str(tmp_path / "m-00001-of-00002.gguf"))
    assert r.exit_code == 3 and "split shard 'm-00002-of-00002.gguf' is missing" in r.stderr


def test_split_files_read_together(tmp_path, run_cli):
    t1 = _s("a.weight") + struct.pack("<IQIQ", 1, 16, 0, 0)
    t2 = _s("b.weight") + struct.pack("<IQIQ", 1, 16, 0, 0)
    (tmp_path / "m-00001-of-00002.gguf").write_bytes(_gguf(tensors=t1))
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(_gguf(tensors=t2))
    r = run_cli("inspect", str(tmp_path / "m-00001-of-00002.gguf"), "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["summary"]["n_tensors"] == 2


# -- interop: files written by llama.cpp's own converter ----------------------------------------------

@pytest.mark.interop
@pytest.mark.parametrize("which", ["bf16", "nvfp4"])
def test_llama_cpp_files_agree_with_gguf_reader(llama_cpp_ggufs, which):
    from gguf import GGUFReader

    ck = formats.read(llama_cpp_ggufs[which])
    r = GGUFReader(llama_cpp_ggufs[which])
    listed = {t.name for t in r.tensors}
    # every tensor accounted for: as a logical tensor or as a sidecar part of one
    parts = {p.key for t in ck.tensors.values() for p in t.parts}
    assert parts == listed
    for t in r.tensors:
        owner = next(x for x in ck.tensors.values() for p in x.parts if p.key == t.name)
        p = next(p for p in owner.parts if p.key == t.name)
        assert p.offset == int(t.data_offset) and p.nbytes == int(t.n_bytes)
        assert p.stored_dtype == t.tensor_type.name


@pytest.mark.interop
def test_llama_cpp_nvfp4_matches_its_safetensors_source(llama_cpp_ggufs, oracles):
    g = formats.read(llama_cpp_ggufs["nvfp4"])
    s = formats.read(oracles["modelopt_nvfp4"])
    assert g.metadata["general.file_type"] == "MOSTLY_NVFP4"
    # same architecture description as the config.json it came from
    assert g.arch.layers == s.arch.layers
    gr = {r["role"]: r for r in build_report(g)["roles"]}
    sr = {r["role"]: r for r in build_report(s)["roles"]}
    for role in ("attention", "mlp", "experts", "embedding"):
        assert gr[role]["n_parameters"] == sr[role]["n_parameters"], role
        assert gr[role]["n_parameters_quantized"] == sr[role]["n_parameters_quantized"], role
    # NVFP4 bytes identical apart from the sidecar layout: codes + block scales are the same bytes
    for role in ("attention", "mlp", "experts"):
        g_data = sum(t.part("data").nbytes for t in g.tensors.values() if t.role == role)
        s_data = sum(t.part("data").nbytes + t.part("block_scale").nbytes for t in s.tensors.values() if t.role == role)
        assert g_data == s_data, role
    # the stacked experts carry per-expert globals; the down projection's has per_expert_scale folded in
    down = g.tensors["blk.0.ffn_down_exps.weight"]
    assert down.shape == (8, 128, 64) and down.part("global_scale").stored_shape == (8,)


@pytest.mark.interop
def test_llama_cpp_nvfp4_dequantizes_like_modelopt(llama_cpp_ggufs, oracles):
    """gguf-py's dequantization of llama.cpp's NVFP4 blocks x .scale == ModelOpt's dequantization."""
    import gguf
    from gguf import GGUFReader, quants

    from nvfp4tools.tensors import dequantize

    s = formats.read(oracles["modelopt_nvfp4"])
    r = {t.name: t for t in GGUFReader(llama_cpp_ggufs["nvfp4"]).tensors}
    for gname, hf in (("blk.0.attn_q", "model.language_model.layers.0.self_attn.q_proj.weight"),
                      ("blk.2.ffn_up", "model.language_model.layers.2.mlp.up_proj.weight")):
        t = r[gname + ".weight"]
        blocks = quants.dequantize(t.data, gguf.GGMLQuantizationType.NVFP4)
        scale = np.asarray(r[gname + ".scale"].data, np.float32)[0]
        ours = dequantize(s, s.tensors[hf])
        # ggml applies .scale to the output ((E2M1 x d) x g); ModelOpt folds first (E2M1 x (d x g)):
        # equal up to one float32 rounding; the codes and block values themselves are identical
        assert np.allclose(blocks * scale, ours, rtol=2.0 ** -23, atol=0)
        from nvfp4tools.kernels_ref.fp4 import decode_e2m1
        from nvfp4tools.kernels_ref.fp8 import decode_e4m3
        from nvfp4tools.tensors import canonical_nvfp4

        c = canonical_nvfp4(s, s.tensors[hf])
        n = c.codes.shape[0]
        exact = (decode_e2m1(c.codes).reshape(n, -1, 16) * decode_e4m3(c.scale_bytes)[..., None]).reshape(n, -1)
        assert np.array_equal(blocks, exact)  # bit-identical block values


# -- roles of biases (issue 23) -------------------------------------------------------------------------

def _write(path, tensors: dict, kv=None) -> str:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in (kv or {}).items():
        getattr(w, k)(*v) if isinstance(v, tuple) else getattr(w, k)(v)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_biases_take_their_modules_role(tmp_path):
    z = np.zeros(8, np.float32)
    p = _write(tmp_path / "b.gguf", {"blk.0.attn_q.bias": z, "blk.0.attn_output.bias": z, "blk.0.attn_norm.bias": z,
                                     "blk.1.exp_probs_b.bias": z, "blk.0.ffn_gate_inp.bias": z,
                                     "blk.0.ffn_gate_exps.bias": np.zeros((4, 8), np.float32),
                                     "blk.0.ffn_down_shexp.bias": z})
    got = {n: (t.role, t.proj, t.layer) for n, t in formats.read(p).tensors.items()}
    assert got == {"blk.0.attn_q.bias": ("attention", "q", 0), "blk.0.attn_output.bias": ("attention", "o", 0),
                   "blk.0.attn_norm.bias": ("norm", None, 0), "blk.1.exp_probs_b.bias": ("router", None, 1),
                   "blk.0.ffn_gate_inp.bias": ("router", None, 0),
                   "blk.0.ffn_gate_exps.bias": ("experts", "gate", 0),
                   "blk.0.ffn_down_shexp.bias": ("shared_expert", "down", 0)}


@pytest.mark.interop
@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3",
                                    "gpt_oss", "phi3"])
def test_llama_cpp_gguf_roles_equal_the_safetensors_roles(family_oracle, family):
    """llama.cpp's GGUF of each family puts every parameter in the role the Hugging Face checkpoint
    gives it (Qwen2 and gpt-oss biases, DeepSeek's exp_probs_b, gpt-oss sinks and expert biases);
    only llama.cpp's generated rope_freqs (Llama 3) is 'other'."""
    g = build_report(formats.read(family_oracle(family, "bf16.gguf")))
    s = build_report(formats.read(family_oracle(family, "bf16")))
    gr = {r["role"]: r["n_parameters"] for r in g["roles"]}
    gr.pop("other", None) if family == "llama" else None
    assert gr == {r["role"]: r["n_parameters"] for r in s["roles"]}


# -- inspect --metadata -----------------------------------------------------------------------------------

def test_metadata_lists_every_key_like_gguf_dump(tmp_path, run_cli):
    import jsonschema

    template = "{% for m in messages %}\x1b[31m" + "x" * 300 + "\n{% endfor %}"
    vocab = [f"t{i}" for i in range(5000)]
    p = _write(tmp_path / "m.gguf", {"blk.0.attn_q.weight": np.zeros((8, 32), np.float32)}, {
        "add_chat_template": template, "add_token_list": (vocab,), "add_rope_freq_base": 1e6,
        "add_layer_norm_rms_eps": 1e-6, "add_context_length": 4096, "add_token_types": ([1, 2, 3],)})
    r = run_cli("inspect", p, "--metadata", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    jsonschema.validate(rep, json.load(open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "schema",
                                                         "inspect.json"))))
    (src,) = rep["file_metadata"]
    e = {x["key"]: x for x in src["entries"]}
    from gguf import GGUFReader
    assert set(e) == {k for k in GGUFReader(p).fields if not k.startswith("GGUF.")}   # every key, as gguf-py lists
    assert e["tokenizer.chat_template"]["value"] == template and e["tokenizer.chat_template"]["type"] == "STRING"
    assert e["tokenizer.ggml.tokens"] == {"key": "tokenizer.ggml.tokens", "type": "ARRAY[STRING]",
                                          "value": vocab[:8], "length": 5000, "truncated": True}
    assert e["tokenizer.ggml.token_type"]["value"] == [1, 2, 3] and not e["tokenizer.ggml.token_type"]["truncated"]
    assert e["llama.attention.layer_norm_rms_epsilon"]["value"] == 1e-6      # float32 in its shortest form
    assert e["llama.rope.freq_base"] == {"key": "llama.rope.freq_base", "type": "FLOAT32", "value": 1e6,
                                         "length": None, "truncated": False}
    t = run_cli("inspect", p, "--metadata").stdout
    assert "\x1b" not in t and "\\x1b[31m" in t and f"({len(template)} chars)" in t   # escaped, cut, length said
    assert '["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", ...] (5,000 items)' in t
    assert "llama.context_length" in t and "UINT32" in t
    assert "file_metadata" not in json.loads(run_cli("inspect", p, "--format", "json").stdout)   # only when asked


def test_metadata_of_a_safetensors_checkpoint(synth_dir, run_cli):
    rep = json.loads(run_cli("inspect", synth_dir(fmt="modelopt"), "--metadata", "--format", "json").stdout)
    by = {s["source"]: {e["key"]: e for e in s["entries"]} for s in rep["file_metadata"]}
    assert by["config.json"]["text_config.num_hidden_layers"]["value"] == 6
    assert by["config.json"]["text_config.num_hidden_layers"]["type"] == "INT"
    assert by["hf_quant_config.json"]["quantization.quant_algo"]["value"] == "NVFP4"


def test_block_count_past_the_stored_layers_is_refused(tiny_gguf, tmp_path, run_cli):
    """llama.cpp builds its graph from {arch}.block_count and then looks for every layer's tensors:
    a count past the stored layers does not load, so inspect refuses it, naming the layer."""
    path = tiny_gguf["q4_0"]
    raw = bytearray(open(path, "rb").read())
    key = b"gemma4.block_count"
    at = raw.index(key) + len(key)
    vtype, n = struct.unpack_from("<II", raw, at)
    assert vtype == 4   # GGUF UINT32
    struct.pack_into("<I", raw, at + 4, n + 1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(raw))
    r = run_cli("inspect", str(bad))
    assert r.exit_code == 3 and f"no weight of decoder layer {n}" in r.stderr, r.stderr
