"""llama.cpp partial offload (-ngl, --n-cpu-moe) and the solves: hand-computed splits and
properties (more VRAM never fewer tokens or layers; the solved context fits and one more block
does not)."""

from __future__ import annotations

import dataclasses

import pytest

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
