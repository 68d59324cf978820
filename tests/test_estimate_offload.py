"""llama.cpp partial offload (-ngl, --n-cpu-moe) and the solves: hand-computed splits and
properties (more VRAM never fewer tokens or layers; the solved context fits and one more block
does not)."""

from __future__ import annotations

import dataclasses

import pytest

from nvfp4tools import formats
from nvfp4tools.errors import UsageError
from nvfp4tools.estimate import Settings
from nvfp4tools.estimate_offload import layer_split, solve
from nvfp4tools.gpus import get_gpu

from tests.helpers import GiB, estimate_of, gemma4_26b, report



@pytest.fixture(scope="module")
def g26(tmp_path_factory):
    return gemma4_26b(tmp_path_factory, "experts-only")


def _gpu(gib: float):
    return dataclasses.replace(get_gpu("rtx3090"), memory_total_bytes=int(gib * GiB))


def _text_bytes(ck, layer=None, role=None):
    return sum(t.nbytes for t in ck.tensors.values() if t.role not in ("vision", "projector")
               and (layer is None or t.layer == layer) and (role is None or t.role == role))


def test_layer_split_hand_computed(g26):
    a = g26.arch
    n = a.n_layers
    full = layer_split(g26, a, None, 0)
    assert full["all_on_gpu"] and full["cpu_weight_bytes"] == 0 and full["n_gpu_layers"] == n + 1
    # -ngl 1: only the output layer (tied: the embedding's duplicate) on the GPU
    one = layer_split(g26, a, 1, 0)
    per_layer = sum(_text_bytes(g26, layer=i) for i in range(n))
    assert one["layers_on_gpu"] == 0 and one["output_on_gpu"] and one["cpu_weight_bytes"] == per_layer
    # -ngl 0: the embedding too stays on the CPU
    zero = layer_split(g26, a, 0, 0)
    assert zero["cpu_weight_bytes"] == per_layer + _text_bytes(g26, role="embedding")
    # -ngl 11: output + the last 10 layers
    ten = layer_split(g26, a, 11, 0)
    assert ten["on_gpu"] == [i >= n - 10 for i in range(n)]
    assert ten["cpu_weight_bytes"] == sum(_text_bytes(g26, layer=i) for i in range(n - 10))
    # --n-cpu-moe 3 with every layer offloaded: the experts of layers 0, 1, 2 on the CPU
    moe = layer_split(g26, a, None, 3)
    assert moe["cpu_weight_bytes"] == sum(t.nbytes for t in g26.tensors.values()
                                          if t.role == "experts" and t.layer < 3) > 0


def test_partial_offload_estimate_and_launch(g26):
    s = Settings(engine="llamacpp", context=32768, n_gpu_layers=16, n_cpu_moe=2)
    r = report(g26, "rtx3090", s)
    off = r["offload"]
    full = report(g26, "rtx3090", engine="llamacpp", context=32768)
    assert off["gpu_weight_bytes"] == full["weights"]["bytes_per_gpu"] - off["cpu_weight_bytes"]
    assert off["system_ram_bytes"] >= off["cpu_weight_bytes"] + off["cpu_kv_bytes"] > off["cpu_weight_bytes"]
    assert r["margin_bytes"] > full["margin_bytes"]
    argv = r["launch"]["argv"]
    assert argv[argv.index("-ngl") + 1] == "16" and argv[argv.index("-ncmoe") + 1] == "2"
    with pytest.raises(UsageError, match="llama.cpp settings"):
        Settings(engine="vllm", n_gpu_layers=3)


@pytest.mark.parametrize("engine", ["llamacpp", "vllm", "sglang"])
def test_solved_context_fits_and_one_more_block_does_not(g26, engine):
    s = Settings(engine=engine, mem_fraction=None if engine != "sglang" else 0.9)
    g = _gpu(26 if engine == "sglang" else 22)
    x = solve(g26, g, s, "context")
    c = x["value"]
    assert c is not None and c < x["max"]
    assert estimate_of(g26, g, dataclasses.replace(s, context=c)).fits
    assert not estimate_of(g26, g, dataclasses.replace(s, context=c + 1)).fits
    block = 256 if engine == "llamacpp" else 16
    assert not estimate_of(g26, g, dataclasses.replace(s, context=c + block)).fits


@pytest.mark.parametrize("engine", ["llamacpp", "vllm"])
def test_more_vram_never_fewer_tokens_or_layers(g26, engine):
    prev_ctx = prev_ngl = prev_seqs = -1
    s = Settings(engine=engine, context=16384)
    for gib in (12, 16, 19, 20, 22, 24, 32):
        c = solve(g26, _gpu(gib), s, "context")["value"] or 0
        n = solve(g26, _gpu(gib), s, "seqs")["value"] or 0
        assert c >= prev_ctx and n >= prev_seqs
        prev_ctx, prev_seqs = c, n
        if engine == "llamacpp":
            k = solve(g26, _gpu(gib), s, "ngl")["value"]
            k = -1 if k is None else k
            assert k >= prev_ngl
            prev_ngl = k
    assert prev_ngl in (-1, g26.arch.n_layers + 1)     # 32 GiB: everything on the GPU (llama.cpp)


def test_solved_seqs_and_ngl_are_the_largest(g26):
    s = Settings(engine="llamacpp", context=8192)
    n = solve(g26, _gpu(24), s, "seqs")["value"]
    assert estimate_of(g26, _gpu(24), dataclasses.replace(s, max_seqs=n)).fits
    assert not estimate_of(g26, _gpu(24), dataclasses.replace(s, max_seqs=n + 1)).fits
    k = solve(g26, _gpu(14), s, "ngl")["value"]
    assert k is not None and 0 < k < g26.arch.n_layers + 1
    assert estimate_of(g26, _gpu(14), dataclasses.replace(s, n_gpu_layers=k)).fits
    assert not estimate_of(g26, _gpu(14), dataclasses.replace(s, n_gpu_layers=k + 1)).fits
    with pytest.raises(UsageError, match="llamacpp"):
        solve(g26, _gpu(14), Settings(engine="vllm"), "ngl")


def test_cli_solve_and_offload(run_cli, g26):
    r = run_cli("estimate", g26.source, "--gpu", "rtx3090", "--engine", "llamacpp", "--ngl", "20",
                "--solve", "context", "--solve", "ngl")
    assert "offload: -ngl 20" in r.stdout and "solve context:" in r.stdout and "solve ngl:" in r.stdout
    assert max(len(x) for x in r.stdout.splitlines() if x.startswith(("note:", "      "))) <= 100


# -- several GPUs: llama.cpp -ts (--split-mode layer) -----------------------------------------------

def test_tensor_split_places_layers_as_llama_cpp_does(g26):
    """src/llama-model.cpp load_tensors: offloaded layer il (the output layer is il = n_layer) goes to
    the first device whose cumulative split point exceeds (il - i_gpu_start) / act_gpu_layers."""
    a = g26.arch
    n = a.n_layers
    assert n == 30
    even = layer_split(g26, a, None, 0, (1, 1))        # il / 31 < 0.5 for il <= 15
    assert even["device"] == [0] * 16 + [1] * 14 and even["output_device"] == 1
    skew = layer_split(g26, a, None, 0, (3, 1))        # il / 31 < 0.75 for il <= 23
    assert skew["device"] == [0] * 24 + [1] * 6 and skew["output_device"] == 1
    part = layer_split(g26, a, 11, 0, (1, 1))          # start 20, act 11: (il - 20) / 11 < 0.5 for il <= 25
    assert part["device"] == [None] * 20 + [0] * 6 + [1] * 4 and part["output_device"] == 1
    zero_first = layer_split(g26, a, None, 0, (0, 1))  # a 0 share: nothing on GPU0
    assert set(zero_first["device"]) == {1}
    one = layer_split(g26, a, None, 0)
    assert sum(even["layer_weight_bytes"]) == sum(one["layer_weight_bytes"]) == sum(
        _text_bytes(g26, layer=i) for i in range(n))


def test_tensor_split_every_gpu_must_fit(g26):
    """Two GPUs hold a context one cannot; the reported margin is the smallest GPU's, and the per-GPU
    weights add up to the one-GPU figure."""
    one = report(g26, "rtx3090", engine="llamacpp", context=131072)
    two = report(g26, "rtx3090", engine="llamacpp", context=131072, tensor_split=(1, 1))
    devs = two["offload"]["devices"]
    assert len(devs) == 2 and two["margin_bytes"] == min(d["margin_bytes"] for d in devs)
    w_one = next(t["bytes"] for t in one["memory"]["terms"] if t["name"] == "weights")
    assert sum(d["weight_bytes"] for d in devs) == w_one
    assert sum(d["kv_bytes"] for d in devs) == one["capacity"]["kv_bytes"]
    assert two["margin_bytes"] > one["margin_bytes"]
    # all on one side is the one-GPU case plus an idle GPU's compute buffer
    lop = report(g26, "rtx3090", engine="llamacpp", context=131072, tensor_split=(1, 0))
    assert lop["offload"]["devices"][1]["layers"] == 0 and lop["margin_bytes"] <= one["margin_bytes"]
    # the largest context: two GPUs never less than one
    s1 = Settings(engine="llamacpp")
    s2 = Settings(engine="llamacpp", tensor_split=(1, 1))
    c1, c2 = solve(g26, get_gpu("rtx3090"), s1, "context")["value"], solve(g26, get_gpu("rtx3090"), s2, "context")["value"]
    assert c1 is not None and c2 >= c1


def test_tensor_split_launch_command_parses_back(g26):
    from nvfp4tools.launch import launch_command, parse_args

    r = report(g26, "rtx3090", engine="llamacpp", context=8192, tensor_split=(3, 1))
    lc = launch_command(r, "auto", "/m.gguf")
    assert "-ts 3,1" in lc["command"]
    assert parse_args("llamacpp", lc["argv"])["tensor_split"] == (3.0, 1.0)


@pytest.mark.parametrize("kw,msg", [
    (dict(engine="vllm", tensor_split=(1, 1)), "llama.cpp's layer split"),
    (dict(engine="llamacpp", tensor_split=(1,)), "2 to 15 GPUs"),
    (dict(engine="llamacpp", tensor_split=(1, -1)), ">= 0"),
    (dict(engine="llamacpp", tensor_split=(0, 0)), "not all 0"),
    (dict(engine="llamacpp", tensor_split=(1, float("nan"))), ">= 0"),
    (dict(engine="llamacpp", tensor_split=(1, 1), tp=2), "no tensor parallelism"),
])
def test_tensor_split_refusals(kw, msg):
    with pytest.raises(UsageError, match=msg):
        Settings(**kw)


def test_llama_cpp_options_on_the_cli(g26, run_cli):
    import json

    r = run_cli("estimate", g26.root, "--gpu", "rtx3090", "--tensor-split", "1,1", "--context", "131072",
                "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["engine"] == "llamacpp" and len(rep["offload"]["devices"]) == 2
    # llama.cpp's own options name the engine when --engine is left out
    ngl = run_cli("estimate", g26.root, "--gpu", "rtx3090", "--ngl", "10", "--format", "json")
    assert ngl.exit_code in (0, 1) and json.loads(ngl.stdout)["engine"] == "llamacpp", ngl.stderr
    bad = run_cli("estimate", g26.root, "--gpu", "rtx3090", "--tensor-split", "1,x")
    assert bad.exit_code == 2 and "comma list of numbers" in bad.stderr and "Traceback" not in bad.stderr


def test_llama_cpp_compute_buffer_grows_with_the_cache_as_llama_cpp_reports(synth_dir, tmp_path, run_cli):
    """The attention masks (llama-graph.cpp build_attn_inp_kq_mask: n_kv x n_ubatch, f16 under flash
    attention) make llama.cpp's compute buffer grow with the context: llama.cpp's own reported size
    (its CPU backend, the same graph) grows by exactly what the estimate's compute_buffer term does,
    and the two agree within 1 MiB at each context (the fixed part of the term is an estimate)."""
    pytest.importorskip("llama_cpp")
    import re
    import subprocess
    import sys

    gg = str(tmp_path / "m.gguf")
    assert run_cli("convert", synth_dir(fmt="modelopt", recipe="all-linear"), gg, "--to", "gguf").exit_code == 0
    script = ("import sys; from llama_cpp import Llama; "
              "Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=512, n_ubatch=512, n_seq_max=1, "
              "flash_attn=True, swa_full=False, verbose=True)")
    ours, theirs = {}, {}
    for ctx in (1024, 4096):
        p = subprocess.run([sys.executable, "-c", script, gg, str(ctx)], capture_output=True, text=True, timeout=120)
        m = re.findall(r"compute buffer size =\s+([0-9.]+) MiB", p.stdout + p.stderr)
        assert p.returncode == 0 and m, (p.stderr or p.stdout)[-2000:]
        theirs[ctx] = float(m[0]) * 2**20
        r = report(formats.read(gg), "rtx3090", engine="llamacpp", context=ctx)
        ours[ctx] = next(t["bytes"] for t in r["memory"]["terms"] if t["name"] == "compute_buffer")
    assert abs((ours[4096] - ours[1024]) - (theirs[4096] - theirs[1024])) <= 0.01 * 2**20
    assert all(abs(ours[c] - theirs[c]) <= 2**20 for c in ours), (ours, theirs)
