"""The engine-compatibility model (nvfp4tools.compat): one crafted checkpoint per rule that
triggers it and one that does not, the upstream tools' checkpoints without false alarms, and
inspect / estimate / check agreeing on the kernel path."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from nvfp4tools import compat, formats
from nvfp4tools.compat import facts
from nvfp4tools.compat.rules import Target, gemms, marlin_padded_nk
from nvfp4tools.schemes import int_group
from nvfp4tools.synth import PRESETS, synthesize

SM80, SM89, SM90, SM100, SM120 = (8, 0), (8, 9), (9, 0), (10, 0), (12, 0)


def _codes(a) -> set[str]:
    return {f.code for f in a.findings}


def _errors(a) -> list:
    return [f for f in a.findings if f.severity == "error"]


def _assess(ck, engine, cc, **kw):
    return compat.assess(ck, Target(engine, cc, **kw))


def _tiny(**text) -> dict:
    cfg = copy.deepcopy(PRESETS["gemma4-tiny"])
    cfg["text_config"].update(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], **text)
    return cfg


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """Header-only Gemma-4-style checkpoints (values never read): name -> Checkpoint."""
    base = tmp_path_factory.mktemp("compat")
    specs = {
        "w4a4": dict(config=_tiny()),
        "odd_shapes": dict(config=_tiny(hidden_size=96, intermediate_size=4304, moe_intermediate_size=48)),
        "fused": dict(config=_tiny(), experts="fused"),
        "ct": dict(config=_tiny(), fmt="compressed-tensors"),
        "ct_w4a16": dict(config=_tiny(), fmt="compressed-tensors-w4a16"),
    }
    out = {}
    for name, kw in specs.items():
        synthesize(str(base / name), header_only=True, **kw)
        out[name] = formats.read(str(base / name))
    return out


def _without_input_scale(ck, layer: int, experts: set[int]):
    tensors = {}
    for name, t in ck.tensors.items():
        if t.role == "experts" and t.layer == layer and t.expert in experts:
            t = dataclasses.replace(t, parts=tuple(p for p in t.parts if p.role != "input_scale"))
        tensors[name] = t
    return dataclasses.replace(ck, tensors=tensors)


def _weight_only(ck):
    """CK as a W4A16 NVFP4 checkpoint (ModelOpt W4A16_NVFP4): no input scales."""
    from nvfp4tools.schemes import NVFP4_A16

    return dataclasses.replace(ck, tensors={
        n: (dataclasses.replace(t, scheme=NVFP4_A16, parts=tuple(p for p in t.parts if p.role != "input_scale"))
            if t.scheme.name == "nvfp4" else t) for n, t in ck.tensors.items()})


# -- kernel paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("engine, cc, linear, moe", [
    ("vllm", SM80, "vllm.nvfp4.linear.marlin", "vllm.nvfp4.moe.marlin"),
    ("vllm", SM89, "vllm.nvfp4.linear.marlin", "vllm.nvfp4.moe.marlin"),
    ("vllm", SM90, "vllm.nvfp4.linear.humming", "vllm.nvfp4.moe.humming"),
    ("vllm", SM100, "vllm.nvfp4.linear.native", "vllm.nvfp4.moe.trtllm"),
    ("vllm", SM120, "vllm.nvfp4.linear.native", "vllm.nvfp4.moe.cutlass"),
    ("sglang", SM89, "sglang.nvfp4.linear.marlin", "sglang.nvfp4.moe.marlin"),
    ("sglang", SM90, "sglang.nvfp4.linear.marlin", "sglang.nvfp4.moe.marlin"),
    ("sglang", SM100, "sglang.nvfp4.linear.cutedsl", "sglang.nvfp4.moe.trtllm"),
    ("sglang", SM120, "sglang.nvfp4.linear.cutlass", "sglang.nvfp4.moe.cutlass"),
])
def test_nvfp4_kernel_path_per_gpu_class(crafted, engine, cc, linear, moe):
    a = _assess(crafted["w4a4"], engine, cc)
    assert {u.path.id for u in a.paths} == {linear, moe}
    assert a.loads


def test_weight_only_paths_ignore_input_scales(crafted):
    a = _assess(crafted["w4a4"], "vllm", SM89)
    ignored = [f for f in a.findings if f.code == "engine_scales_ignored"]
    assert len(ignored) == 2 and all(f.severity == "info" for f in ignored)
    assert "input scales are not used" in ignored[0].message
    assert "marlin_utils_fp4.py" in ignored[0].source
    # native W4A4 uses them; a W4A16 checkpoint has none to ignore
    assert "engine_scales_ignored" not in _codes(_assess(crafted["w4a4"], "vllm", SM100))
    a16 = _assess(_weight_only(crafted["w4a4"]), "vllm", SM89)
    assert "engine_scales_ignored" not in _codes(a16)
    assert {u.path.weights for u in a16.paths} == {"nvfp4a16"}


def test_sglang_below_min_capability_refuses(crafted):
    a = _assess(crafted["w4a4"], "sglang", (7, 5))
    assert not a.loads and "engine_no_kernel" in _codes(a)
    assert "Minimum capability: 80" in _errors(a)[0].message
    assert _assess(crafted["w4a4"], "sglang", SM80).loads


def test_actorder_has_no_vllm_kernel(crafted):
    ck = crafted["ct_w4a16"]
    scheme = int_group(4, 128, True, actorder=True)
    acto = dataclasses.replace(ck, tensors={n: (dataclasses.replace(t, scheme=scheme) if t.scheme.quantized else t)
                                            for n, t in ck.tensors.items()})
    a = _assess(acto, "vllm", SM89)
    assert not a.loads
    assert any("activation ordering" in f.message for f in _errors(a))
    plain = dataclasses.replace(ck, tensors={n: (dataclasses.replace(t, scheme=int_group(4, 128, True))
                                                 if t.scheme.quantized else t) for n, t in ck.tensors.items()})
    a = _assess(plain, "vllm", SM89)
    assert a.loads and {u.path.id for u in a.paths} == {"vllm.int4.linear.marlin", "vllm.int4.moe.marlin"}
    # Hopper: Machete when its shape and group rules hold (N % 128, K % 64, group 64/128)
    assert "vllm.int4.linear.machete" in {u.path.id for u in _assess(plain, "vllm", SM90).paths}


# -- shapes ----------------------------------------------------------------------------------

def test_marlin_moe_hidden_size_fails_at_load(crafted):
    a = _assess(crafted["odd_shapes"], "vllm", SM89)
    shape = [f for f in a.findings if f.code == "engine_shape"]
    assert len(shape) == 1 and shape[0].severity == "error" and not a.loads
    assert "hidden_size = 96 unsupported by Marlin tiles" in shape[0].message
    assert "engine_shape" not in _codes(_assess(crafted["w4a4"], "vllm", SM89))


def test_flashinfer_cutlass_moe_intermediate_size(crafted):
    a = _assess(crafted["odd_shapes"], "vllm", SM120)
    assert not a.loads
    assert "expert intermediate size a multiple of 64" in _errors(a)[0].message
    # TRT-LLM (sm_100) pads any intermediate size
    assert _assess(crafted["odd_shapes"], "vllm", SM100).loads


def test_marlin_pads_what_older_releases_refused(crafted):
    a = _assess(crafted["odd_shapes"], "sglang", SM89)
    pad = [f for f in a.findings if f.code == "engine_shape_padded"]
    assert len(pad) == 1 and pad[0].severity == "warning"
    assert "N=8608" in pad[0].message or "K=4304" in pad[0].message   # the 4304-wide MLP
    assert "Model-Optimizer PR #1687" in pad[0].source
    assert "engine_shape_padded" not in _codes(_assess(crafted["w4a4"], "sglang", SM89))


def test_tensor_parallel_splits_the_shape_checked(crafted):
    # hidden 128 passes Marlin MoE; the fused gate/up width per GPU changes with TP
    g1 = {g.name: (g.n, g.k) for g in gemms([t for t in crafted["w4a4"].tensors.values() if t.role == "mlp"], 1)}
    g2 = {g.name: (g.n, g.k) for g in gemms([t for t in crafted["w4a4"].tensors.values() if t.role == "mlp"], 2)}
    for name, (n, k) in g1.items():
        if "down_proj" in name:
            assert g2[name] == (n, k // 2)
        else:
            assert g2[name] == (n // 2, k)


def test_marlin_padded_nk_pinned():
    # vLLM marlin_utils.marlin_padded_nk: smaller padded area of (N to 64, K to lcm(128, g)) and
    # (N to 128, K to lcm(64, g)); ties to the smaller N + K, then the first
    assert marlin_padded_nk(4304, 1152, 16) == (4352, 1152)
    assert marlin_padded_nk(1152, 4304, 16) == (1152, 4352)
    assert marlin_padded_nk(96, 96, 16) == (128, 128)
    assert marlin_padded_nk(64, 96, 16) == (64, 128)     # 8,192 elements against (128, 128)'s 16,384
    assert marlin_padded_nk(2816, 704, 16) == (2816, 704)   # Gemma 4 26B expert down_proj: no padding


# -- scales ----------------------------------------------------------------------------------

def test_experts_without_input_scale(crafted):
    ck = _without_input_scale(crafted["w4a4"], layer=0, experts={3, 5})
    for engine in ("vllm", "sglang"):
        a = _assess(ck, engine, SM100)
        err = [f for f in a.findings if f.code == "engine_missing_expert_input_scale"]
        assert len(err) == 1 and err[0].severity == "error" and not a.loads
        assert "2 experts" in err[0].message and "layer 0 expert 3" in err[0].message
    # Marlin never reads input scales: no false alarm there (vLLM PR #45320's exemption)
    assert "engine_missing_expert_input_scale" not in _codes(_assess(ck, "vllm", SM89))
    assert "engine_missing_expert_input_scale" not in _codes(_assess(crafted["w4a4"], "vllm", SM100))


# -- loaders ---------------------------------------------------------------------------------

def test_sglang_drops_fused_nvfp4_expert_scales(crafted):
    a = _assess(crafted["fused"], "sglang", SM100)
    assert "engine_loader" in _codes(a) and not a.loads
    assert "engine_loader" not in _codes(_assess(crafted["w4a4"], "sglang", SM100))
    assert "engine_loader" not in _codes(_assess(crafted["fused"], "vllm", SM100))


def test_vllm_gemma4_ct_keyerror_is_an_old_release(crafted):
    a = _assess(crafted["ct"], "vllm", SM100)
    old = [f for f in a.findings if f.code == "engine_loader_old"]
    assert len(old) == 1 and old[0].severity == "warning" and a.loads
    assert "0.19.0" in old[0].message and "#39256" in old[0].source
    assert "engine_loader_old" not in _codes(_assess(crafted["w4a4"], "vllm", SM100))


# -- KV cache and formats --------------------------------------------------------------------

def test_kv_dtype_support(crafted):
    ck = crafted["w4a4"]
    assert "engine_kv_dtype" in _codes(_assess(ck, "vllm", (7, 5), kv_dtype="fp8"))
    assert "engine_kv_dtype" not in _codes(_assess(ck, "vllm", SM89, kv_dtype="fp8"))
    assert "engine_kv_dtype" not in _codes(_assess(ck, "vllm", SM89, kv_dtype="bf16"))


def test_llamacpp_reads_gguf_only(crafted):
    a = _assess(crafted["w4a4"], "llamacpp", None)
    assert _codes(a) == {"engine_format"} and not a.loads
    assert "--to gguf" in a.findings[0].message
    # not named by the user: it cannot fail inspect
    assert compat.lowered(a.findings[0]).severity == "info"


# -- GGUF (llama.cpp's own files) ------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf(family_oracle):
    def read(family, kind):
        return formats.read(family_oracle(family, kind))
    return read


def test_gguf_nvfp4_engines(gguf):
    ck = gguf("llama", "nvfp4.gguf")
    ll = _assess(ck, "llamacpp", None)
    assert ll.loads and "engine_min_version" in _codes(ll)
    assert "5eae9cb1d" in next(f for f in ll.findings if f.code == "engine_min_version").message
    v = _assess(ck, "vllm", SM89)
    assert not v.loads and _codes(v) == {"engine_format"}
    s = _assess(ck, "sglang", SM89)
    assert not s.loads and _codes(s) == {"engine_ggml_type"}


def test_gguf_q4_0_engines(gguf):
    ck = gguf("qwen3", "q4_0.gguf")
    assert not _assess(ck, "llamacpp", None).findings
    assert _assess(ck, "sglang", SM89).loads


@pytest.mark.parametrize("family, ignored", [("qwen2", True), ("phi3", True), ("llama", False), ("qwen3", False)])
def test_llamacpp_graph_ignores_ffn_scales(gguf, family, ignored):
    """llama.cpp's own conversion of a ModelOpt export: Qwen2 and Phi-3 graphs never multiply
    their FFN tensors' .scale in (src/models/qwen2.cpp, phi3.cpp)."""
    a = _assess(gguf(family, "nvfp4.gguf"), "llamacpp", None)
    assert ("engine_scale_unused" in _codes(a)) == ignored
    assert a.loads != ignored


# -- upstream checkpoints: no false alarms ----------------------------------------------------

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3", "phi3")


@pytest.mark.parametrize("family", FAMILIES)
def test_upstream_modelopt_exports_load_everywhere(family_oracle, family):
    """Real ModelOpt exports of each family: vLLM and SGLang load them on every GPU class. The
    only warning allowed is Marlin's padding of shapes its tiles do not cover, where they really
    do not (DeepSeek-V3's small MLA ranks)."""
    ck = formats.read(family_oracle(family, "modelopt_nvfp4"))
    for a in compat.assess_all(ck, ("vllm", "sglang")):
        assert a.loads, (a.engine, a.ccs, [f.message for f in _errors(a)])
        warnings = [f for f in a.findings if f.severity == "warning"]
        assert all(f.code == "engine_shape_padded" for f in warnings), [f.message for f in warnings]
        if warnings:
            t = ck.tensors[warnings[0].tensor]
            assert t.shape[-1] % 128 or sum(x.shape[-2] for x in ck.tensors.values()
                                            if x.module.rsplit(".", 1)[0] == t.module.rsplit(".", 1)[0]
                                            and x.scheme.quantized) % 64 or t.shape[-2] % 64
        assert a.paths


def test_upstream_gpt_oss_nvfp4_experts_are_dropped(family_oracle):
    ck = formats.read(family_oracle("gpt_oss", "modelopt_nvfp4"))
    for engine in ("vllm", "sglang"):
        a = _assess(ck, engine, SM100)
        assert "engine_loader" in _codes(a) and not a.loads


# -- the commands agree ----------------------------------------------------------------------

def test_inspect_estimate_check_agree(crafted, tmp_path, run_cli):
    path = str(tmp_path / "ck")
    synthesize(path, header_only=True, config=_tiny(hidden_size=96, moe_intermediate_size=48))
    r = run_cli("inspect", path, "--format", "json")
    assert r.exit_code == 0   # not a named deployment: engine refusals are warnings
    rep = json.loads(r.stdout)
    assert any(f["code"] == "engine_shape" and f["severity"] == "warning" for f in rep["findings"])
    r = run_cli("inspect", path, "--engine", "vllm", "--gpu", "l40s", "--format", "json")
    assert r.exit_code == 1
    named = json.loads(r.stdout)
    assert any(f["code"] == "engine_shape" and f["severity"] == "error" for f in named["findings"])
    r = run_cli("estimate", path, "--gpu", "l40s", "--engine", "vllm", "--format", "json")
    assert r.exit_code == 1
    est = json.loads(r.stdout)
    assert est["fits"] and not est["engine_compat"]["loads"]
    assert [p["id"] for p in est["engine_compat"]["kernel_paths"]] == \
        [p["id"] for p in named["engines"][0]["kernel_paths"]]
    pol = tmp_path / "p.toml"
    pol.write_text('version = 1\n[numerics]\nverify = false\n[[targets]]\nname = "l40s"\ngpu = "l40s"\n'
                   '[[targets]]\nname = "b200"\ngpu = "b200"\n')
    r = run_cli("check", path, "--policy", str(pol), "--format", "json")
    reqs = {q["id"]: q["status"] for q in json.loads(r.stdout)["requirements"]}
    assert reqs["target.l40s.loads"] == "fail" and reqs["target.b200.loads"] == "pass"


def test_estimate_padding_term_uses_the_kernel_path(tmp_path):
    from nvfp4tools.estimate import Settings, estimate
    from nvfp4tools.gpus import get_gpu

    path = str(tmp_path / "ck")
    synthesize(path, header_only=True, config=_tiny(intermediate_size=4304))
    ck = formats.read(path)
    pad = {}
    for gpu in ("l40s", "b200", "h100-sxm"):
        r = estimate(ck, get_gpu(gpu), Settings(engine="vllm")).report
        pad[gpu] = next(t["bytes"] for t in r["weights"]["terms"] if t["name"] == "kernel_padding")
    # Marlin (sm_89) pads the 8608 x 128 gate/up to 8640 and the down projection's K 4304 to 4352;
    # Humming (sm_90) is not known to pad; CUTLASS (sm_100) pads K 4304 to 4320 (a multiple of 32)
    bpe = 0.5 + 1 / 16
    layers = 2
    assert pad["l40s"] == int(layers * bpe * ((8640 - 8608) * 128 + 128 * (4352 - 4304)))
    assert pad["h100-sxm"] == 0
    assert pad["b200"] == int(layers * bpe * 128 * (4320 - 4304))


def test_every_fact_cites_its_source():
    rows = list(facts.KERNEL_PATHS) + list(facts.KV_DTYPES) + list(facts.GGML_TYPES) + list(facts.LOADERS)
    for r in rows:
        assert r.source.file and r.source.symbol and r.source.versions, r
    ids = [p.id for p in facts.KERNEL_PATHS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_nvfp4tools_gguf_has_no_unused_scale(family_oracle, tmp_path, run_cli, family):
    """What llama.cpp's converter writes for Qwen2 is flagged above; nvfp4tools' own GGUF of the
    same export is not (its writer keeps those FFN tensors BF16 under --allow-lossy)."""
    out = str(tmp_path / "ours.gguf")
    r = run_cli("convert", family_oracle(family, "modelopt_nvfp4"), out, "--to", "gguf", "--allow-lossy")
    assert r.exit_code == 0, r.stderr
    a = _assess(formats.read(out), "llamacpp", None)
    assert a.loads and "engine_scale_unused" not in _codes(a)


def test_docs_table_is_generated_from_the_facts():
    import os

    from nvfp4tools.compat.table import render

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "engine-compat.md")
    with open(path) as fh:
        doc = fh.read()
    assert render() in doc, "docs/engine-compat.md is stale: python -m nvfp4tools.compat.table --update docs/engine-compat.md"


# -- Marlin's block-scale re-encoding (inspect --deep) ----------------------------------------

def test_marlin_zeroes_subnormal_block_scales(synth_dir, tmp_path, run_cli):
    """vLLM's Marlin FP4 zeroes block scales below 2^-6 after its power-of-two rescale
    (marlin_utils_fp4.nvfp4_marlin_process_scales); native FP4 kernels keep them."""
    from tests.helpers import copy_ckpt, locate, poke

    from nvfp4tools.compat.rules import ScaleStats, e4m3_value, marlin_flushed

    assert e4m3_value(0x08) == 2.0 ** -6 and e4m3_value(0x07) == 7 / 8 * 2.0 ** -6 and e4m3_value(0x7E) == 448.0
    src = synth_dir()
    clean = json.loads(run_cli("inspect", src, "--deep", "--format", "json").stdout)
    assert not [f for f in clean["findings"] if f["code"] == "engine_marlin_flush"]

    ck = copy_ckpt(src, tmp_path / "ck")
    key = "model.language_model.layers.0.mlp.down_proj.weight_scale"
    _, t = locate(ck, key)
    poke(ck, key, bytes([0x03, 0x05, 0x7E]))          # two subnormal blocks, and the largest scale 448
    rep = json.loads(run_cli("inspect", ck, "--deep", "--format", "json").stdout)
    flush = [f for f in rep["findings"] if f["code"] == "engine_marlin_flush"]
    assert len(flush) == 1 and flush[0]["severity"] == "warning"
    assert flush[0]["message"].startswith("vLLM on sm_80-sm_89: Marlin FP4 zeroes 2 blocks in 1 NVFP4 tensors")
    assert "nvfp4_marlin_process_scales" in flush[0]["source"]

    # the rescale: a layer whose largest scale is 224 gets sf = 2: 0x03 (3/8 * 2^-6) is still flushed,
    # 0x05 (5/8 * 2^-6) survives; at 112, sf = 4 and both survive
    ckpt = formats.read(src)
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    small = (0, 0, 1, 0, 1, 0, 0)                      # one 0x03, one 0x05
    assert e4m3_value(0x76) == 224.0 and e4m3_value(0x6E) == 112.0
    assert marlin_flushed(ckpt, {name: ScaleStats(0x7E, small)}) == {name: 2}
    assert marlin_flushed(ckpt, {name: ScaleStats(0x76, small)}) == {name: 1}
    assert marlin_flushed(ckpt, {name: ScaleStats(0x6E, small)}) == {}


def test_upstream_gemma4_checkpoints(oracles):
    """Gemma 4 as ModelOpt exports it (all-linear and experts-only) and as compressed-tensors'
    converter writes it: no error for vLLM on any GPU class; SGLang only where its loader is known
    to drop fused 3-D expert scales."""
    for name in ("modelopt_nvfp4", "modelopt_experts_only", "ct_nvfp4"):
        ck = formats.read(oracles[name])
        fused = any(t.n_experts_fused for t in ck.tensors.values() if t.role == "experts")
        for a in compat.assess_all(ck, ("vllm", "sglang")):
            errors = [f.code for f in _errors(a)]
            if a.engine == "sglang" and fused:
                assert errors == ["engine_loader"], (name, errors)
            else:
                assert errors == [], (name, a.engine, a.ccs, [f.message for f in _errors(a)])


def test_weight_only_int8_loads_only_packed(crafted):
    """compressed-tensors weight-only int8: vLLM and SGLang build a WNA16 (Marlin) scheme only for
    pack-quantized int32 words; stored as int8 (int-quantized) no scheme matches."""
    from nvfp4tools.model import TensorPart

    ck = crafted["ct_w4a16"]
    scheme = int_group(8, 32, True)

    def as_int8(dtype):
        out = {}
        for n, t in ck.tensors.items():
            if t.scheme.quantized:
                parts = tuple(p._replace(stored_dtype=dtype) if p.role == "data" else p for p in t.parts)
                t = dataclasses.replace(t, scheme=scheme, parts=parts)
            out[n] = t
        return dataclasses.replace(ck, tensors=out)

    for engine in ("vllm", "sglang"):
        unpacked = _assess(as_int8("I8"), engine, SM89)
        assert not unpacked.loads and "pack-quantized" in _errors(unpacked)[0].message
        packed = _assess(as_int8("I32"), engine, SM89)
        assert packed.loads and {u.path.weights for u in packed.paths} == {"int8a16"}
    assert isinstance(TensorPart, type)


def test_llamacpp_conversion_obstacles(crafted):
    """Safetensors on llama.cpp: beside 'convert first', what its own converter and the GGUF
    NVFP4 block refuse."""
    odd = _assess(crafted["odd_shapes"], "llamacpp", None)
    conv = [f for f in odd.findings if f.code == "engine_converter"]
    assert len(conv) == 1 and conv[0].severity == "info" and "multiple of 64" in conv[0].message
    assert "QK_NVFP4" in conv[0].source
    assert "engine_converter" not in _codes(_assess(crafted["w4a4"], "llamacpp", None))
    # compressed-tensors with an FP8 group beside the NVFP4 one: llama.cpp's converter refuses it
    ck = crafted["ct"]
    qc = copy.deepcopy(dict(ck.config["quantization_config"]))
    qc["config_groups"] = {"group_0": dict(next(iter(qc["config_groups"].values()))),
                           "group_1": {"format": "float-quantized", "targets": ["re:.*self_attn.*"]}}
    mixed = dataclasses.replace(ck, config={**ck.config, "quantization_config": qc})
    msgs = [f.message for f in _assess(mixed, "llamacpp", None).findings if f.code == "engine_converter"]
    assert len(msgs) == 1 and "several config groups" in msgs[0]
    assert "engine_converter" not in _codes(_assess(ck, "llamacpp", None))


def test_q8_0_written_back_loads_in_vllm_and_sglang(family_oracle, tmp_path, run_cli):
    """A GGUF Q8_0 converted to compressed-tensors is pack-quantized 8-bit: the weight-only int8
    layout vLLM's and SGLang's WNA16 (Marlin) schemes load."""
    out = str(tmp_path / "ct")
    r = run_cli("convert", family_oracle("qwen3", "q8_0.gguf"), out, "--to", "compressed-tensors")
    assert r.exit_code == 0, r.stderr
    with open(f"{out}/config.json") as fh:
        qc = json.load(fh)["quantization_config"]
    assert {g["format"] for g in qc["config_groups"].values()} == {"pack-quantized"}
    ck = formats.read(out)
    for engine in ("vllm", "sglang"):
        a = _assess(ck, engine, SM89)
        assert a.loads, [f.message for f in _errors(a)]
        assert "int8a16" in {u.path.weights for u in a.paths}
