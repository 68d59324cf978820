"""Hostile checkpoints, one regression test per class the mutation fuzzer found (docs/hostile-input.md):
config and metadata of the wrong type or range, patterns that would hang a backtracking matcher, files
that are not regular files inside the checkpoint folder, and tensors whose shapes lie. Each must end
in one line on stderr with a documented exit code, quickly, naming the file, key and value."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time

import pytest

from tests.fuzz.mutate import read_gguf, write_gguf
from tests.fuzz.seeds import TINY


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from nvfp4tools.synth import synthesize

    base = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, kw in {"mo": {"fmt": "modelopt"}, "ct": {"fmt": "compressed-tensors"},
                     "w4": {"fmt": "compressed-tensors-w4a16"}, "bf16": {"fmt": "bf16"}}.items():
        synthesize(str(base / name), config=TINY, group_size=32, **kw)
        out[name] = str(base / name)
    return out


@pytest.fixture
def ckpt(seeds, tmp_path):
    """ckpt(kind) -> a fresh copy of a tiny synthetic checkpoint, inside tmp_path/ckpt."""
    def make(kind: str) -> str:
        dst = str(tmp_path / "ckpt")
        shutil.copytree(seeds[kind], dst)
        return dst
    return make


def _edit(path: str, fn) -> None:
    with open(path) as fh:
        data = json.load(fh)
    fn(data)
    with open(path, "w") as fh:
        fh.write(json.dumps(data, allow_nan=True))


def _one_line(r, code: int, *needles: str, limit_s: float | None = None) -> str:
    err = r.stderr.strip()
    assert r.exit_code == code, (r.exit_code, err, r.stdout[-500:])
    assert "\n" not in err and "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


COMMANDS = (("inspect",), ("inspect", "--deep"), ("verify", "--sample", "2"), ("estimate",))


# -- config.json / hf_quant_config.json: types and ranges ---------------------------------------------
def _tc(key, value):
    return lambda d: d["text_config"].__setitem__(key, value)


def _groups(key, value, section="weights"):
    def fn(d):
        for g in d["quantization_config"]["config_groups"].values():
            if section:
                g[section][key] = value
            else:
                g[key] = value
    return fn


CONFIG_CASES = [
    # (seed, file, edit, needles)
    ("mo", "hf_quant_config.json", lambda d: d.__setitem__("producer", [1]), ("producer is [1]", "an object")),
    ("mo", "hf_quant_config.json", lambda d: d["quantization"].__setitem__("exclude_modules", 5),
     ("quantization.exclude_modules is 5", "a list")),
    ("mo", "hf_quant_config.json", lambda d: d["quantization"].__setitem__("exclude_modules", float("nan")),
     ("quantization.exclude_modules is nan",)),
    ("ct", "config.json", lambda d: d["quantization_config"].__setitem__("ignore", 3.5),
     ("quantization_config.ignore is 3.5",)),
    ("ct", "config.json", _groups("targets", 7, None), ("group_0.targets is 7",)),
    ("ct", "config.json", _groups("targets", "x" * 200_000, None), ("group_0.targets is 'xxx", "a list")),
    ("w4", "config.json", _groups("num_bits", "four"), ("weights.num_bits is 'four'", "an integer in 1..64")),
    ("mo", "config.json", _tc("num_key_value_heads", float("nan")), ("text_config.num_key_value_heads is nan",)),
    ("mo", "config.json", _tc("num_key_value_heads", float("inf")), ("num_key_value_heads is inf",)),
    ("mo", "config.json", _tc("vocab_size", 1e300), ("text_config.vocab_size is 1e+300",)),
    ("mo", "config.json", _tc("head_dim", float("nan")), ("text_config.head_dim is nan",)),
    ("mo", "config.json", _tc("head_dim", 0), ("text_config.head_dim is 0", "1..65,536")),
    ("mo", "config.json", _tc("num_hidden_layers", 10**12), ("num_hidden_layers is 1000000000000", "1..1,024")),
    ("mo", "config.json", _tc("num_hidden_layers", 1e12), ("num_hidden_layers is 1000000000000.0",)),
    ("mo", "config.json", _tc("num_hidden_layers", 2000), ("num_hidden_layers is 2000", "1..1,024")),
    ("mo", "config.json", _tc("layer_types", "sliding"), ("text_config.layer_types is 'sliding'",)),
    ("mo", "config.json", _tc("hidden_size", 64.5), ("text_config.hidden_size is 64.5",)),
    ("mo", "config.json", _tc("tie_word_embeddings", "yes"), ("tie_word_embeddings is 'yes'", "true or false")),
    ("mo", "config.json", _tc("model_type", "\ud800"), ("text_config.model_type is '\\ud800'",)),
    ("mo", "config.json", _tc("rope_parameters", {"full_attention": {"rope_theta": float("nan")}}),
     ("rope_parameters.full_attention.rope_theta is nan",)),
    ("mo", "config.json", _tc("per_layer_config", {"1": {"head_dim": "x"}}), ("per_layer_config.1.head_dim",)),
    ("mo", "config.json", _tc("sliding_window", None), ("sliding-attention layers but sliding_window is None",)),
    # keys no table names: still strict JSON (no NaN/Infinity for --format json or a copied config to carry)
    ("mo", "config.json", lambda d: d["vision_config"].__setitem__("num_hidden_layers", [float("nan")]),
     ("vision_config.num_hidden_layers[0] is nan; JSON has no NaN or Infinity",)),
    ("ct", "config.json", lambda d: d.__setitem__("initializer_range", float("-inf")),
     ("initializer_range is -inf",)),
    ("mo", "config.json", lambda d: d["vision_config"].__setitem__("intermediate_size", "\ud800"),
     ("vision_config.intermediate_size is '\\ud800', a string with a lone surrogate",)),
    ("mo", "hf_quant_config.json", lambda d: d.__setitem__("\udc80", 1), ("key '\\udc80' under the top level",)),
]


@pytest.mark.parametrize("case", range(len(CONFIG_CASES)))
def test_config_value_of_wrong_type_or_range_is_one_line_exit_3(case, ckpt, run_cli):
    seed, file, edit, needles = CONFIG_CASES[case]
    path = ckpt(seed)
    _edit(os.path.join(path, file), edit)
    for cmd in COMMANDS:
        _one_line(run_cli(*cmd, path), 3, f"FormatError: {file}", *needles)
    to = "compressed-tensors" if seed == "mo" else "modelopt"
    _one_line(run_cli("convert", path, path + ".out", "--to", to, "--dry-run"), 3, *needles)


@pytest.mark.parametrize("raw,needle", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[" * 100 + b"]" * 100, "nested more than 64 levels deep"),
    (b'{"vocab_size": ' + b"7" * 5000 + b"}", "an integer with thousands of digits"),
    (b"\xff\xfe{}", "not valid"),
    (b"{", "not valid JSON"),
])
def test_config_json_that_cannot_be_parsed_safely(raw, needle, ckpt, run_cli):
    path = ckpt("mo")
    with open(os.path.join(path, "config.json"), "wb") as fh:
        fh.write(raw)
    _one_line(run_cli("inspect", path), 3, "config.json", needle)


def test_json_side_file_over_64_mib_is_refused_unread(ckpt, run_cli):
    path = ckpt("mo")
    with open(os.path.join(path, "hf_quant_config.json"), "wb") as fh:
        fh.write(b"{")
        fh.truncate(65 << 20)   # sparse: no disk
    t0 = time.monotonic()
    _one_line(run_cli("inspect", path), 3, "hf_quant_config.json: larger than 64 MiB")
    assert time.monotonic() - t0 < 5


def test_config_json_linked_to_dev_zero_is_refused(ckpt, run_cli):
    path = ckpt("mo")
    os.unlink(os.path.join(path, "config.json"))
    os.symlink("/dev/zero", os.path.join(path, "config.json"))
    _one_line(run_cli("inspect", path), 3, "config.json: a link to /dev/zero, outside the checkpoint folder")


def test_index_values_checked(ckpt, run_cli, seeds, tmp_path):
    from nvfp4tools.synth import synthesize
    path = str(tmp_path / "sharded")
    synthesize(path, config=TINY, fmt="modelopt", shards=2)
    idx = os.path.join(path, "model.safetensors.index.json")
    _edit(idx, lambda d: d["weight_map"].__setitem__(next(iter(d["weight_map"])), 5))
    _one_line(run_cli("inspect", path), 3, "model.safetensors.index.json: weight_map maps", "to 5")
    _edit(idx, lambda d: d["weight_map"].__setitem__(next(iter(d["weight_map"])), "a\x00b.safetensors"))
    _one_line(run_cli("inspect", path), 3, "shard name", "control character, NUL or lone surrogate")


# -- safetensors headers: names and dtypes ---------------------------------------------------------------
def _write_st(path, header, data=b""):
    blob = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.parametrize("name,needle", [
    ("a\x00b", "control character, NUL or lone surrogate"), ("\ud800.weight", "lone surrogate"),
    ("\x1b[2J", "control character"), ("x" * 5000, "5,000 characters long"),
])
def test_tensor_name_with_nul_surrogate_or_control_is_refused(name, needle, tmp_path, run_cli):
    _write_st(tmp_path / "m.safetensors", {name: {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)
    _one_line(run_cli("inspect", str(tmp_path)), 3, "m.safetensors: tensor name", needle)


def test_dtype_given_as_a_list_is_refused(tmp_path, run_cli):
    _write_st(tmp_path / "m.safetensors", {"a": {"dtype": ["U8"], "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
    _one_line(run_cli("inspect", str(tmp_path)), 3, "tensor 'a': unknown dtype ['U8']")


def test_header_with_huge_integer_or_deep_nesting_is_refused(tmp_path, run_cli):
    for blob in (b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 1]}}',
                 b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        with open(tmp_path / "m.safetensors", "wb") as fh:
            fh.write(struct.pack("<Q", len(blob)) + blob)
        _one_line(run_cli("inspect", str(tmp_path)), 3, "m.safetensors: header is not a safetensors header")


@pytest.mark.parametrize("meta", [{"k": [1]}, {"k": "\ud800"}, {"\udfff": "v"}])
def test_metadata_values_must_be_strings(meta, tmp_path, run_cli):
    _write_st(tmp_path / "m.safetensors", {"__metadata__": meta,
                                           "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    for extra in ((), ("--metadata",), ("--metadata", "--format", "json")):
        _one_line(run_cli("inspect", str(tmp_path), *extra), 3, "__metadata__ is", "expected an object of strings")


# -- tensors whose shapes lie ------------------------------------------------------------------------------
def _rebuild(path: str, change) -> None:
    from tests.fuzz.mutate import _read_st, _rebuild_st
    header, data = _read_st(path)
    _rebuild_st(path, header, data, change)


def test_zero_size_quantized_tensor_is_refused(ckpt, run_cli):
    path = ckpt("mo")
    key = "model.language_model.layers.0.mlp.up_proj.weight"

    def change(rows):
        for r in rows:
            if r[0] == key:
                r[2], r[3] = [0, r[2][1]], b""
            if r[0] == key + "_scale":
                r[2], r[3] = [0, r[2][1]], b""
    _rebuild(os.path.join(path, "model.safetensors"), change)
    for cmd in COMMANDS + (("convert", path, path + ".o", "--to", "compressed-tensors"),):
        _one_line(run_cli(*cmd) if cmd[0] == "convert" else run_cli(*cmd, path), 3, key, "non-empty")


def test_0d_packed_weight_is_refused(ckpt, run_cli):
    path = ckpt("w4")
    key = "model.language_model.layers.0.mlp.up_proj.weight_packed"

    def change(rows):
        for r in rows:
            if r[0] == key:
                r[2], r[3] = [], r[3][:4]
    _rebuild(os.path.join(path, "model.safetensors"), change)
    _one_line(run_cli("inspect", path), 3, key, "has shape [], expected a matrix [out, in]")


def test_experts_of_one_layer_with_different_shapes_are_refused(ckpt, run_cli):
    path = ckpt("bf16")
    key = "model.language_model.layers.0.experts.1.up_proj.weight"

    def change(rows):
        for r in rows:
            if r[0] == key:
                r[2] = [r[2][0] * 2, r[2][1] // 2]   # same bytes, another matrix
    _rebuild(os.path.join(path, "model.safetensors"), change)
    _one_line(run_cli("convert", path, path + ".gguf", "--to", "gguf", "--allow-lossy"), 3,
              key, "the experts of one layer must share a shape")
    assert not os.path.exists(path + ".gguf")


def test_unquantized_int32_tensor_keeps_its_stored_shape(ckpt, run_cli):
    """An I32 buffer without scales is not packed int4: its shape is what the header says."""
    path = ckpt("bf16")
    key = "model.language_model.layers.1.input_layernorm.weight"

    def change(rows):
        for r in rows:
            if r[0] == key:
                r[1] = "I32"
                r[3] = r[3] + r[3]   # [64] BF16 -> [64] I32
    _rebuild(os.path.join(path, "model.safetensors"), change)
    r = run_cli("inspect", path, "--tensors", "--format", "json")
    assert r.exit_code in (0, 1), r.stderr
    t = next(t for t in json.loads(r.stdout)["tensors"] if t["name"] == key)
    assert t["shape"] == [64]
    r = run_cli("convert", path, path + ".o", "--to", "compressed-tensors", "--allow-lossy", "--quantize", "nvfp4")
    assert r.exit_code in (0, 3) and "internal error" not in r.stderr, r.stderr


def test_gguf_nvfp4_scale_with_no_value_is_refused(seeds, tmp_path, run_cli):
    src = str(tmp_path / "m.gguf")
    assert run_cli("convert", seeds["mo"], src, "--to", "gguf").exit_code == 0
    g = read_gguf(src)
    t = next(t for t in g.tensors if t[0].endswith(".input_scale"))
    t[1] = [0]
    write_gguf(src, g)
    for cmd in COMMANDS:
        _one_line(run_cli(*cmd, src), 3, f"tensor '{t[0]}' has shape [0] (0 values), expected 1")


def test_per_expert_scale_must_be_expert_major(tmp_path, run_cli):
    from nvfp4tools.synth import synthesize
    path = str(tmp_path / "fused")
    synthesize(path, config=TINY, fmt="modelopt", experts="fused")
    key = "model.language_model.layers.1.experts.gate_up_proj_weight_scale_2"

    def change(rows):
        for r in rows:
            if r[0] == key:
                r[2] = [1, r[2][0]]   # [E] -> [1, E]: the same values, read as one shared scale
    _rebuild(os.path.join(path, "model.safetensors"), change)
    for cmd in COMMANDS:
        _one_line(run_cli(*cmd, path), 3, key, "has shape [1, 2]", "or [2] (one per expert)")


# -- GGUF metadata ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_seed(tmp_path_factory):
    from nvfp4tools.synth_gguf import write_gemma4_gguf
    p = str(tmp_path_factory.mktemp("gguf") / "m.gguf")
    write_gemma4_gguf(p, header_only=True)
    return p


@pytest.mark.parametrize("key,vt,value,needle", [
    ("gemma4.attention.head_count_kv", 6, float("nan"), "gemma4.attention.head_count_kv is nan"),
    ("gemma4.attention.sliding_window", 4, 0, "gemma4.attention.sliding_window is 0, expected a window size"),
    ("gemma4.attention.sliding_window", None, None, "marks 5 sliding layers but gemma4.attention.sliding_window is None"),
    ("gemma4.block_count", 4, 0, "gemma4.block_count is 0, expected an integer in 1..1,024"),
    ("gemma4.block_count", 4, 2**32 - 1, "gemma4.block_count is 4294967295"),
    ("gemma4.attention.key_length", 5, -5, "gemma4.attention.key_length is -5"),
    ("gemma4.expert_count", 9, (4, [1, 2]), "gemma4.expert_count is [1, 2]"),
    ("gemma4.context_length", 9, (6, [float("nan")]), "gemma4.context_length is [NaN]"),
    ("general.architecture", 9, (8, ["x"]), 'general.architecture is ["x"]'),
    ("nvfp4tools.config_json", 8, "[" * 5000, "nvfp4tools.config_json: JSON nested too deeply"),
    ("nvfp4tools.config_json", 8, '{"num_hidden_layers": 1e12}', "num_hidden_layers is 1000000000000.0"),
    ("nvfp4tools.restore.x.scale", 9, (6, [float("inf")]), "nvfp4tools.restore.x.scale[0] is inf"),
    ("nvfp4tools.hf_names", 9, (8, ["blk.0.attn_q.weight=model.layers.0.q_proj.weight|BF1\x0b"]),
     "nvfp4tools.hf_names entry"),
])
def test_gguf_metadata_of_wrong_type_or_range_is_one_line_exit_3(key, vt, value, needle, gguf_seed, tmp_path,
                                                                  run_cli):
    g = read_gguf(gguf_seed)
    hit = [kv for kv in g.kvs if kv[0] == key]
    if vt is None:
        g.kvs.remove(hit[0])
    elif hit:
        hit[0][1:] = [vt, value]
    else:
        g.kvs.append([key, vt, value])
    p = str(tmp_path / "m.gguf")
    write_gguf(p, g)
    for cmd in COMMANDS:
        _one_line(run_cli(*cmd, p), 3, "m.gguf", needle)


def test_gguf_tensor_with_a_zero_dimension_is_refused(gguf_seed, tmp_path, run_cli):
    g = read_gguf(gguf_seed)
    t = next(t for t in g.tensors if t[0] == "blk.1.attn_output.weight")
    t[1] = [0] + t[1][1:]
    p = str(tmp_path / "m.gguf")
    write_gguf(p, g)
    _one_line(run_cli("verify", "--sample", "2", p), 3, "'blk.1.attn_output.weight'", "no zero dimension")


# -- patterns -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,file,where", [
    ("mo", "hf_quant_config.json", ("quantization", "exclude_modules")),
    ("ct", "config.json", ("quantization_config", "ignore")),
])
def test_catastrophic_regex_does_not_hang(seed, file, where, ckpt, run_cli):
    path = ckpt(seed)
    _edit(os.path.join(path, file), lambda d: d[where[0]].__setitem__(where[1], d[where[0]][where[1]] + [
        r"re:([\w.]+)+!", r"re:(a|a)*$", r"re:(x+x+)+y"]))
    for cmd in COMMANDS:
        t0 = time.monotonic()
        r = run_cli(*cmd, path, "--format", "json")
        assert time.monotonic() - t0 < 5
        assert r.exit_code in (0, 1), r.stderr
    findings = json.loads(run_cli("inspect", path, "--format", "json").stdout)["findings"]
    assert any(f["code"] == "pattern_matches_nothing" and "([\\\\w.]+)+!" in f["message"] for f in findings) or \
        any(f["code"] == "pattern_matches_nothing" and r"([\w.]+)+!" in f["message"] for f in findings), findings


def test_unsupported_regex_is_named_and_treated_as_matching_nothing(ckpt, run_cli):
    path = ckpt("ct")
    _edit(os.path.join(path, "config.json"), lambda d: d["quantization_config"]["ignore"].extend(
        [r"re:(?=model).*", r"re:(a)\1", r"re:(?i)LM_HEAD"]))
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code in (0, 1), r.stderr
    got = {f["message"] for f in json.loads(r.stdout)["findings"] if f["code"] == "pattern_not_evaluated"}
    assert any("a lookaround" in m for m in got) and any("a backreference" in m for m in got), got
    assert any("a flag other than" in m for m in got), got


def test_20000_entry_exclude_list_is_fast(ckpt, run_cli):
    path = ckpt("mo")
    _edit(os.path.join(path, "hf_quant_config.json"), lambda d: d["quantization"].__setitem__(
        "exclude_modules", [f"model.x.{i}.mlp*" for i in range(20_000)] + [f"model.y.{i}" for i in range(20_000)]))
    t0 = time.monotonic()
    r = run_cli("inspect", path)
    assert r.exit_code in (0, 1), r.stderr
    assert time.monotonic() - t0 < 5


def test_automaton_budget_is_an_input_error(ckpt, run_cli):
    path = ckpt("ct")
    _edit(os.path.join(path, "config.json"), lambda d: d["quantization_config"]["ignore"].append("re:(x{1000}){1000}"))
    _one_line(run_cli("inspect", path), 3, "quantization_config.ignore: patterns too complex")
    _edit(os.path.join(path, "config.json"), lambda d: d["quantization_config"].__setitem__(
        "ignore", [f"re:.*layers\\.{i}\\.x" for i in range(5000)]))
    _one_line(run_cli("inspect", path), 3, "5,000 regex or wildcard entries (at most 4,096")


def test_pattern_engine_agrees_with_python_re():
    """The linear-time engine gives re.match's answer on every pattern and name re handles quickly."""
    import fnmatch
    import random
    import re

    from nvfp4tools.formats._patterns import PatternSet

    atoms = ["a", "b", ".", r"\.", r"\d", r"\w", "[ab]", "[^a]", "(a|b)", "(ab|a)", "x", r"\s"]
    quant = ["", "*", "+", "?", "{2}", "{1,3}", "*?"]
    rng = random.Random(0)
    pats = [r"re:.*lm_head", r"re:.*mlp\.gate$", r"re:^model\.layers\.\d+\.mlp\.(gate|up)_proj", r"re:a\Z",
            "model.layers.1*", "*.mlp.*", "model.layers.?.x*", "[!m]*", "model.layers.[0-3].*", "[z-a]", "plain.name"]
    for _ in range(300):
        body = "".join(rng.choice(atoms) + rng.choice(quant) for _ in range(rng.randrange(1, 5)))
        pats.append("re:" + body + rng.choice(["", "$", r"\Z"]))
    names = ["model.layers.0.mlp.gate", "model.layers.12.mlp.up_proj", "lm_head", "a", "ab", "aab", "ba", "x.y",
             "a\n", "", "a1b2", "abab", "model.lm_head", "plain.name", "plain.name.sub", " a", "xx", "b.a"]
    for p in pats:
        if p.startswith("re:"):
            rx = re.compile(p[3:])
        elif any(c in p for c in "*?["):
            rx = re.compile(fnmatch.translate(p))
        else:
            rx = re.compile(re.escape(p) + r"\Z")
        ps = PatternSet([p])
        for n in names:
            assert ps.matches(n) == (rx.match(n) is not None), (p, n)


# -- files ------------------------------------------------------------------------------------------
def test_fifo_named_model_safetensors_is_refused_not_waited_on(ckpt, run_cli):
    path = ckpt("mo")
    os.unlink(os.path.join(path, "model.safetensors"))
    os.mkfifo(os.path.join(path, "model.safetensors"))
    for cmd in COMMANDS:
        _one_line(run_cli(*cmd, path), 3, "model.safetensors: not a regular file (a FIFO)")


@pytest.mark.parametrize("name", ["config.json", "hf_quant_config.json"])
def test_fifo_side_file_is_refused(name, ckpt, run_cli):
    path = ckpt("mo")
    os.unlink(os.path.join(path, name))
    os.mkfifo(os.path.join(path, name))
    _one_line(run_cli("inspect", path), 3, f"{name}: not a regular file (a FIFO)")


def test_fifo_gguf_in_a_folder_is_refused(gguf_seed, tmp_path, run_cli):
    os.mkfifo(tmp_path / "m.gguf")
    r = run_cli("inspect", str(tmp_path))
    assert r.exit_code == 3 and "\n" not in r.stderr.strip(), r.stderr


def test_weights_linked_out_of_the_folder_are_refused(ckpt, run_cli, tmp_path):
    path = ckpt("mo")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(os.path.join(path, "model.safetensors"), outside / "x.safetensors")
    os.symlink(outside / "x.safetensors", os.path.join(path, "model.safetensors"))
    for cmd in COMMANDS:
        _one_line(run_cli(*cmd, path), 3, "model.safetensors: a link to", "outside the checkpoint folder")
    r = run_cli("convert", path, str(tmp_path / "o"), "--to", "compressed-tensors")
    _one_line(r, 3, "outside the checkpoint folder")
    assert not os.path.exists(tmp_path / "o") and not [n for n in os.listdir(tmp_path) if "nvfp4tools-tmp" in n]


def test_a_file_named_on_the_command_line_may_be_a_link(ckpt, run_cli, tmp_path):
    """The user named it: its link is followed (only the folder's own contents are distrusted)."""
    path = ckpt("bf16")
    link = tmp_path / "named.safetensors"
    os.symlink(os.path.join(path, "model.safetensors"), link)
    r = run_cli("inspect", str(link))
    assert r.exit_code in (0, 1), r.stderr


def test_index_entry_leaving_the_folder_is_refused_before_anything_is_copied(tmp_path, run_cli):
    from nvfp4tools.synth import synthesize
    path = str(tmp_path / "sharded")
    synthesize(path, config=TINY, fmt="modelopt", shards=2)
    (tmp_path / "outside").mkdir()
    shutil.move(os.path.join(path, "model-00002-of-00002.safetensors"), tmp_path / "outside" / "x.safetensors")
    _edit(os.path.join(path, "model.safetensors.index.json"), lambda d: d["weight_map"].update(
        {k: "../outside/x.safetensors" for k, v in d["weight_map"].items() if v.startswith("model-00002")}))
    r = run_cli("convert", path, str(tmp_path / "o"), "--to", "compressed-tensors")
    _one_line(r, 3, "'../outside/x.safetensors' points outside the checkpoint folder")
    assert sorted(os.listdir(tmp_path)) == ["outside", "sharded"]


# -- interrupts, crashes, overwrites, reports ----------------------------------------------------------
def test_gguf_output_is_not_overwritten_without_force(ckpt, run_cli, tmp_path):
    path = ckpt("bf16")
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"precious")
    _one_line(run_cli("convert", path, str(dst), "--to", "gguf", "--allow-lossy", "--quantize", "q4_0"), 2,
              "already exists", "--force")
    assert dst.read_bytes() == b"precious"
    r = run_cli("convert", path, str(dst), "--to", "gguf", "--allow-lossy", "--quantize", "q4_0", "--force")
    assert r.exit_code == 0, r.stderr
    assert dst.read_bytes()[:4] == b"GGUF"


def test_stale_temporary_outputs_of_dead_processes_are_removed(ckpt, run_cli, tmp_path):
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = ckpt("mo")
    stale = tmp_path / f".out.nvfp4tools-tmp-{dead.pid}"
    stale.mkdir()
    (stale / "junk").write_text("x")
    live = tmp_path / f".out.nvfp4tools-tmp-{os.getppid()}"   # a live process's: left alone
    live.mkdir()
    r = run_cli("convert", path, str(tmp_path / "out"), "--to", "compressed-tensors")
    assert r.exit_code == 0, r.stderr
    assert not stale.exists() and live.exists()


def test_previous_output_parked_by_a_killed_publish_is_restored(ckpt, run_cli, tmp_path):
    from nvfp4tools.convert.publish import remove_stale
    dst = tmp_path / "out"
    parked = tmp_path / ".out.nvfp4tools-tmp-999999999.old"   # no such process
    parked.mkdir()
    (parked / "config.json").write_text("{}")
    remove_stale(str(dst))
    assert (dst / "config.json").exists() and not parked.exists()


def test_lossy_convert_of_nan_weights_writes_a_strict_json_report_before_publishing(ckpt, run_cli, tmp_path):
    from tests.fuzz.mutate import _read_st, _write_st
    path = ckpt("bf16")
    st = os.path.join(path, "model.safetensors")
    header, data = _read_st(st)
    b, e = header["model.language_model.layers.0.mlp.up_proj.weight"]["data_offsets"]
    data = data[:b] + b"\xc0\x7f" * ((e - b) // 2) + data[e:]   # BF16 NaN
    _write_st(st, header, data)
    dst = tmp_path / "out"
    r = run_cli("convert", path, str(dst), "--to", "modelopt", "--allow-lossy", "--quantize", "nvfp4",
                "--format", "json")
    assert r.exit_code in (0, 3), r.stderr
    assert "\n" not in r.stderr.strip() and "internal error" not in r.stderr
    if r.exit_code == 0:
        report = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))
        on_disk = json.loads((dst / "nvfp4tools_conversion_report.json").read_text(),
                             parse_constant=lambda c: pytest.fail(f"{c} in the report file"))
        nan_row = next(x for x in on_disk["tensors"] if "layers.0.mlp.up_proj" in x["tensor"])
        assert None in (nan_row["sqnr_db"], nan_row["max_abs_err"], nan_row["rel_rms_err"])
        assert report["lossy"]
    else:
        assert not dst.exists()
    assert not [n for n in os.listdir(tmp_path) if "nvfp4tools-tmp" in n]


def test_numpy_warnings_never_precede_the_one_line_result(ckpt, run_cli):
    import warnings
    path = ckpt("mo")
    from tests.fuzz.mutate import _read_st, _write_st
    st = os.path.join(path, "model.safetensors")
    header, data = _read_st(st)
    for k in [k for k in header if k.endswith("weight_scale")][:3]:
        b, e = header[k]["data_offsets"]
        data = data[:b] + b"\x7f" * (e - b) + data[e:]   # E4M3 NaN block scales
    _write_st(st, header, data)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for cmd in (("inspect", "--deep"), ("verify", "--sample", "8")):
            r = run_cli(*cmd, path)
            assert r.exit_code in (0, 1), r.stderr
    assert not [w for w in seen if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in seen]


def test_ctrl_c_outside_a_command_is_one_line_exit_130(monkeypatch, capsys):
    from nvfp4tools.cli import _root

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(_root.cli, "main", interrupted)
    with pytest.raises(SystemExit) as e:
        _root.run(["inspect", "x"])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# -- signals during a real conversion (subprocesses) ----------------------------------------------------
@pytest.fixture(scope="module")
def slow_source(tmp_path_factory):
    """A BF16 checkpoint whose lossy Q4_0 conversion takes long enough to be interrupted midway."""
    import copy

    from nvfp4tools.synth import synthesize
    cfg = copy.deepcopy(TINY)
    cfg["text_config"].update(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_experts=4,
                              moe_intermediate_size=512, vocab_size=1024,
                              layer_types=["sliding_attention", "full_attention"] * 2)
    path = str(tmp_path_factory.mktemp("slow") / "bf16")
    synthesize(path, config=cfg, fmt="bf16")
    return path


def _convert_until_tmp(src: str, out_dir, sig):
    """Start a conversion into OUT_DIR, send SIG once its temporary output exists; (returncode, stderr)."""
    import signal
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "nvfp4tools", "convert", src, str(out_dir / "out.gguf"), "--to",
                          "gguf", "--allow-lossy", "--quantize", "q4_0"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        if any("nvfp4tools-tmp" in n for n in os.listdir(out_dir)):
            time.sleep(0.05)   # well inside the write
            p.send_signal(sig)
            break
        time.sleep(0.002)
    else:
        p.kill()
        pytest.skip("the conversion ended before it could be interrupted")
    _, err = p.communicate(timeout=120)
    return p.returncode, err.strip()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_interrupted_convert_removes_its_temporary_output(signame, slow_source, tmp_path):
    import signal
    out = tmp_path / "o"
    out.mkdir()
    code, err = _convert_until_tmp(slow_source, out, getattr(signal, signame))
    assert code == 130, (code, err)
    assert err == "interrupted", err
    assert os.listdir(out) == []


def test_killed_convert_leftover_is_removed_by_the_next_run(slow_source, tmp_path, run_cli):
    import signal
    out = tmp_path / "o"
    out.mkdir()
    code, _ = _convert_until_tmp(slow_source, out, signal.SIGKILL)
    assert code == -9
    assert [n for n in os.listdir(out) if "nvfp4tools-tmp" in n]   # SIGKILL cannot be caught
    r = run_cli("convert", slow_source, str(out / "out.gguf"), "--to", "gguf", "--allow-lossy", "--quantize", "q4_0")
    assert r.exit_code == 0, r.stderr
    assert os.listdir(out) == ["out.gguf"]
