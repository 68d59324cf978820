"""GPU backends against the float64 reference (skipped, with the reason, where CUDA is absent).

Run on a GPU machine: ``bash bench/gpu.sh`` (prints the tables pasted into bench/RESULTS.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nvfp4tools.kernels_ref.dispatch import LayerCase, names, status

pytestmark = pytest.mark.gpu  # see needs_cuda: skipped with the reason where CUDA is absent

try:
    import torch
    _CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _CUDA = False

needs_cuda = pytest.mark.skipif(not _CUDA, reason="CUDA is absent (torch missing or no GPU): GPU backends cannot run")

# full-size Gemma-4-26B-A4B linear shapes (N = out, K = in)
SHAPES = [(2816, 4096), (4096, 2816), (2816, 2112), (2112, 2816), (704, 2816), (2816, 704), (8192, 2816), (2816, 8192)]


def test_registered_backends_run_somewhere_and_say_why_not_here():
    """No placeholders: every registered backend has a run path; one that cannot run here says why."""
    rows = {s["name"]: s for s in status()}
    assert set(names()) == {"ref", "ggml-cpu", "ggml-cuda", "torch", "triton", "triton-w4a4", "scaled_mm", "vllm-marlin"}
    for name, row in rows.items():
        if not row["available"]:
            assert row["reason"], name
    if not _CUDA:
        assert "CUDA" in rows["ggml-cuda"]["reason"] or "NVIDIA driver" in rows["ggml-cuda"]["reason"]


@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backend_on_tiny_checkpoint(backend, synth_dir, run_cli):
    import json

    r = run_cli("verify", synth_dir(fmt="modelopt", recipe="all-linear"), "--backend", backend, "--format", "json")
    rep = json.loads(r.stdout)
    assert r.exit_code == 0 and rep["verdict"] == "pass", [x for x in rep["layers"] if x["verdict"] == "fail"][:2]


@needs_cuda
def test_full_size_shapes_all_backends(capsys):
    from nvfp4tools.kernels_ref.dispatch import resolve
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
    from nvfp4tools.kernels_ref.gemm import gemm_reference, quantize_activations_nvfp4
    from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4

    from nvfp4tools.kernels_ref.ggml_backend import nvfp4_blocks

    backends = [b for b in resolve("all") if b.name != "ref"]
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        q = quantize_nvfp4(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
        w = dequantize_nvfp4(q)
        x = rng.standard_normal((16, k)).astype(np.float32)
        codes = unpack_nibbles_hf(q.packed)
        case = LayerCase(f"{n}x{k}", x, w, codes=codes, scale_bytes=q.block_scale,
                         global_scale=float(q.global_scale), input_scale=float(np.abs(x).max() / 2688),
                         ggml_type="NVFP4", ggml_bytes=nvfp4_blocks(codes, q.block_scale),
                         ggml_out_scale=float(q.global_scale))
        for b in backends:
            if b.reference is not None:
                ref = b.reference(case)     # ggml: over the activations as ggml converts them to Q8
            elif b.activations == "w4a16":
                ref = gemm_reference(x, w)
            else:
                ref = gemm_reference(quantize_activations_nvfp4(x, case.input_scale), w)
            y = np.asarray(b.run(case), np.float64)
            assert np.all(np.isfinite(y)), (b.name, n, k)
            err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
            rows.append((b.name, n, k, err, b.tolerance_rel))
            assert err <= b.tolerance_rel, (b.name, n, k, err)
    with capsys.disabled():
        print("\nbackend      N      K      rel err     tolerance")
        for name, n, k, err, tol in rows:
            print(f"{name:<11} {n:<6} {k:<6} {err:.3e}   {tol:g}")


def test_bench_without_cuda_says_why(run_cli, synth_dir):
    if _CUDA:
        pytest.skip("CUDA present: the GPU path is exercised by bench/gpu.sh")
    r = run_cli("bench", synth_dir(fmt="modelopt", recipe="all-linear"))
    assert r.exit_code == 4 and "needs a CUDA GPU" in r.stderr


@needs_cuda
def test_bench_timers_compute_the_backend_result():
    """What bench times is each backend's GEMM: every timer's output matches the float64 reference
    within that backend's tolerance (an odd shape: masked tails in every kernel)."""
    import torch

    from nvfp4tools.kernels_ref.dispatch import DeviceCase, resolve
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
    from nvfp4tools.kernels_ref.gemm import quantize_activations_nvfp4
    from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import random_weight

    gw = random_weight(515, 1056, np.random.default_rng(3))
    w = gw.w.double().cpu().numpy()
    codes = unpack_nibbles_hf(gw.packed.cpu().numpy())
    timed = [b for b in resolve("all") if b.timer is not None]
    assert {"torch", "triton", "triton-w4a4"} <= {b.name for b in timed}
    for m in (1, 9, 40):
        x = torch.randn(m, 1056, device="cuda").to(torch.bfloat16)
        xs = x.float().cpu().numpy()
        inp = float(np.abs(xs).max() / 2688)
        for b in timed:
            y = b.timer(DeviceCase(x, gw.packed, gw.scales, gw.global_scale, inp))()
            y = y.double().cpu().numpy()
            xr = quantize_activations_nvfp4(xs, inp) if b.activations == "w4a4" else xs
            ref = xr.astype(np.float64) @ w.T
            if b.reference is not None:   # vllm-marlin: its output is bf16, and so is its reference
                ref = b.reference(LayerCase("t", xs, w, codes=codes, scale_bytes=gw.scales.cpu().numpy(),
                                            global_scale=float(gw.global_scale)))
            err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
            assert np.isfinite(y).all() and err <= b.tolerance_rel, (b.name, m, err)
    with pytest.raises(ValueError, match="input scale"):
        next(b for b in timed if b.name == "triton-w4a4").timer(DeviceCase(x, gw.packed, gw.scales, 1.0, None))


@needs_cuda
@pytest.mark.parametrize("timing", ["graph", "single"])
def test_bench_command_times_every_backend(run_cli, synth_dir, timing):
    import json
    import math

    path = synth_dir(fmt="modelopt", recipe="all-linear")
    r = run_cli("bench", path, "--ms", "1,16", "--max-shapes", "2", "--timing", timing, "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    _validate_bench_schema(rep)
    assert rep["timing"] == timing and {"torch", "triton"} <= set(rep["backends"])
    assert "scaled_mm" in rep["not_timed"] and rep["not_timed"]["scaled_mm"]
    assert len(rep["rows"]) == 4 and {x["M"] for x in rep["rows"]} == {1, 16}
    for x in rep["rows"]:
        assert math.isfinite(x["cublas_bf16_us"]) and x["cublas_bf16_us"] > 0
        assert x["triton_us"] == x["backends"]["triton"]["us"] > 0
        assert set(x["backends"]) | set(x["skipped"]) == set(rep["backends"])
    if "ggml-cuda" in rep["backends"]:   # llama.cpp's CUDA kernels, timed on the same shapes
        assert all(x["backends"]["ggml-cuda"]["us"] > 0 for x in rep["rows"]), rep["rows"][0]
    t = run_cli("bench", path, "--ms", "1", "--max-shapes", "1", "--timing", timing)
    assert t.exit_code == 0 and "triton us (vs bf16)" in t.stdout and "not timed: scaled_mm" in t.stdout


def _validate_bench_schema(rep) -> None:
    import json
    import os

    try:
        import jsonschema
    except ImportError:  # the GPU machine may lack it; CI (the CPU test below) has it
        return
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "schema", "bench.json")) as fh:
        jsonschema.validate(rep, json.load(fh))


def test_bench_table_renders_backends_and_reasons():
    from nvfp4tools.cli.bench import render_table

    row = {"tensor": "l.0.q_proj", "N": 64, "K": 128, "M": 1, "cublas_bf16_us": 10.0, "triton_us": 4.0, "speedup_vs_bf16": 2.5,
           "triton_weight_GBps": 1.2, "kernel": "gemv", "config": [], "weight_copies": [1, 1],
           "backends": {"triton": {"us": 4.0, "speedup_vs_bf16": 2.5, "weight_GBps": 1.2},
                        "torch": {"us": 40.0, "speedup_vs_bf16": 0.25, "weight_GBps": 0.1}},
           "skipped": {"triton-w4a4": "no static input scale on this layer (W4A4 needs one)"}}
    rep = {"schema": "nvfp4tools/bench/v1", "tool_version": "0", "source": "/c", "device": "GPU", "timing": "graph",
           "roofline_speedup_limit": 3.556, "backends": ["triton", "triton-w4a4", "torch"],
           "not_timed": {"scaled_mm": "needs compute capability 10.x/12.x"}, "rows": [row]}
    _validate_bench_schema(rep)
    out = render_table(rep)
    assert "4.0 (2.50x)" in out and "40.0 (0.25x)" in out and "CUDA-graph replay" in out
    assert "triton-w4a4 skipped on some shapes: no static input scale" in out
    assert "not timed: scaled_mm: needs compute capability 10.x/12.x" in out


@needs_cuda
def test_triton_activation_fakequant_is_bit_exact():
    """The GPU W4A4 activation quantizer gives ModelOpt's codes and block scales exactly, ties included."""
    import torch

    from nvfp4tools.kernels_ref.fp4 import decode_e2m1, unpack_nibbles_hf
    from nvfp4tools.kernels_ref.fp8 import decode_e4m3
    from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import nvfp4_fakequant_activations
    from nvfp4tools.kernels_ref.nvfp4 import quantize_nvfp4

    rng = np.random.default_rng(1)
    ties = np.array([6, 0.75, 1.75, 3.5, 2.5, 0.25, 1.25, 5.0, -0.75, -1.75, -3.5, -2.5, -0.25, 0, -0.0, 4],
                    np.float32)
    x = np.concatenate([np.tile(ties, (4, 1)), rng.standard_normal((4, 16)).astype(np.float32) * 3], axis=1)
    x = np.concatenate([x, rng.standard_normal((12, 32)).astype(np.float32) * 50])
    for g in (1.0, float(np.abs(x).max() / 2688), 3e-3):
        t = quantize_nvfp4(x, np.float32(g))
        want = (decode_e2m1(unpack_nibbles_hf(t.packed)).reshape(x.shape[0], -1, 16)
                * decode_e4m3(t.block_scale)[..., None]).reshape(x.shape)
        got = nvfp4_fakequant_activations(torch.from_numpy(x).cuda(), g).float().cpu().numpy()
        assert np.array_equal(got, want), (g, np.argwhere(got != want)[:5])


@needs_cuda
@pytest.mark.parametrize("split", [2, 3, 6])
def test_split_k_fixup_is_complete_and_repeatable(split):
    """Split-K through the workspace fix-up: every output written (NaN poison gone), the same as no
    split within fp32 reordering, and the arrival counters back at zero for the next launch."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K

    gw = K.random_weight(704, 2816, np.random.default_rng(3))
    x = torch.randn(5, 2816, device="cuda", dtype=torch.bfloat16)
    ref = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=(16, 64, 256, 1, 4, 3, 2, 1))
    for _ in range(3):
        y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True,
                               config=(16, 64, 256, split, 4, 3, 2, 1))
        assert not torch.isnan(y).any()
        assert float((y - ref).abs().max() / ref.abs().max()) < 1e-5
    assert int(K._COUNTERS[("cuda", x.device.index)].abs().sum()) == 0


@needs_cuda
@pytest.mark.parametrize("split", [2, 3, 6, 16])
def test_split_k_sums_are_the_same_bits_either_way(split):
    """The two split-K sums (REDUCE 0: the last slice to arrive sums whole tiles; REDUCE 1: every
    slice sums its share of row bands after all have arrived) add the same planes in the same
    order: equal bits, for plain and swapped operands, partial last tiles (N = 515, M = 100),
    repeated launches, and the counters back at zero; REDUCE 1 beyond one program per SM is
    refused."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K

    gw = K.random_weight(515, 2112, np.random.default_rng(5))
    x = torch.randn(100, 2112, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ gw.w.double().T
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    for tile in ((128, 64, 128, split, 4, 3, 2, 0, 0), (128, 128, 64, split, 8, 2, 2, 1, 0),
                 (64, 32, 64, split, 4, 3, 2, 0, 0)):
        if -(-515 // tile[1]) * -(-100 // tile[0]) * split > sms:   # more than one program per SM
            with pytest.raises(ValueError, match="REDUCE 1 runs one wave"):
                K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=tile + (1,))
            continue
        ys = []
        for reduce in (0, 1, 1, 0):
            y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=tile + (reduce,))
            assert not torch.isnan(y).any(), (tile, reduce)
            ys.append(y)
        assert all(torch.equal(ys[0], y) for y in ys[1:]), tile
        assert float((ys[0].double() - ref).norm() / ref.norm()) < 1e-5
    assert int(K._COUNTERS[("cuda", x.device.index)].abs().sum()) == 0


@needs_cuda
def test_scale_words_and_bytes_give_the_same_bits():
    """The MMA kernel reads block scales as int32 words of four where the rows allow it
    (scale_words_ok); a view it cannot read so (odd row stride) takes byte loads: equal bits, at
    K blocks of 64, 128 and 256 and with K = 704 (not a multiple of 128: masked word loads)."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K

    for k in (2816, 704):
        gw = K.random_weight(300, k, np.random.default_rng(7))
        wide = torch.empty((300, k // 16 + 1), dtype=torch.uint8, device="cuda")
        wide[:, :-1] = gw.scales
        byte_view = wide[:, :-1]
        assert K.scale_words_ok(gw.scales, 128) and not K.scale_words_ok(byte_view, 128)
        x = torch.randn(40, k, device="cuda", dtype=torch.bfloat16)
        for bk in (64, 128, 256):
            cfg = (64, 64, bk, 1, 4, 3, 2, 0, 0)
            yw = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=cfg)
            yb = K.nvfp4_w4a16_gemm(x, gw.packed, byte_view, gw.global_scale, poison=True, config=cfg)
            assert torch.equal(yw, yb) and not torch.isnan(yw).any(), (k, bk)


@needs_cuda
def test_tuned_table_entry_is_the_default_for_its_gpu_and_bucket(monkeypatch):
    """An mma_tuned.json entry for this GPU's name is the default for its N x K and M bucket (M =
    65-128 for an entry at 128), with TMA only inside graph capture; other M and shapes keep the
    rules; the kernel computes the float64 product with it."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K
    from nvfp4tools.kernels_ref.gpu import tuned

    name = torch.cuda.get_device_properties(torch.cuda.current_device()).name
    entry = (128, 64, 128, 3, 4, 3, 2, 0, 1, 1)
    table = {"gpus": {}}
    tuned.record(table, name, 128, 704, 2112, tuned.TunedEntry(entry, 1.0, 1.0, "test"))
    monkeypatch.setattr(tuned, "_shipped", lambda: table)
    rules = K._config(100, 704, 2112, in_graph=False, use_table=False)
    assert K.default_config(100, 704, 2112, in_graph=True) == ("mma", entry)
    assert K.default_config(128, 704, 2112, in_graph=False) == ("mma", entry[:8] + (0, 1))
    assert K.default_config(64, 704, 2112, in_graph=False)[1] == K._config(64, 704, 2112, False, use_table=False)
    assert K.default_config(100, 2112, 704, in_graph=False)[1] != entry
    gw = K.random_weight(704, 2112, np.random.default_rng(9))
    x = torch.randn(100, 2112, device="cuda", dtype=torch.bfloat16)
    y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True)
    ref = x.double() @ gw.w.double().T
    assert not torch.isnan(y).any() and float((y.double() - ref).norm() / ref.norm()) < 1e-5
    assert rules != entry[:8] + (0, 1)


@needs_cuda
def test_every_shipped_table_entry_for_this_gpu_matches_float64():
    """Every config mma_tuned.json ships for this GPU's name, on its own N x K at the top and the
    bottom M of its bucket (128: M = 128 and 65), as recorded and with TMA off (how an eager call
    takes it): all outputs written (NaN poison gone), equal to the float64 product up to fp32
    summation, and the default config there. The sweep that wrote an entry checked it at one M;
    this checks the shipped file, at both ends of the M range it serves."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K
    from nvfp4tools.kernels_ref.gpu import tuned

    name = torch.cuda.get_device_properties(torch.cuda.current_device()).name
    mine = [(m, n, k, e.config) for gpu, m, n, k, e in tuned.entries(tuned.load_table()) if gpu == name]
    if not mine:
        pytest.skip(f"mma_tuned.json has no entries for {name}: this GPU takes the rules")
    weights = {}
    for bucket, n, k, config in mine:
        gw = weights.setdefault((n, k), K.random_weight(n, k, np.random.default_rng(n + k)))
        for m in (bucket, bucket // 2 + 1):
            assert K.default_config(m, n, k, in_graph=True) == ("mma", config)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ gw.w.double().T
            for cfg in {config, config[:8] + (0,) + config[9:]}:
                y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=cfg)
                err = float((y.double() - ref).norm() / ref.norm())
                assert not torch.isnan(y).any() and err < 1e-5, (name, m, n, k, cfg, err)
    print(f"\n{len(mine)} shipped entries for {name}, each at 2 M, as recorded and without TMA: "
          f"all within 1e-5 of float64")


@needs_cuda
@pytest.mark.parametrize("n,k", [(8192, 2816), (2816, 8192), (704, 2816), (2816, 704), (8192, 2112), (2049, 4096)])
def test_m1_default_is_the_gemv_and_matches_float64(n, k):
    """M = 1 takes a GEMV kernel by default (nvfp4_gemv.py; on layers with 8192 rows or columns
    the diagonal-MMA one of nvfp4_skinny.py): every output written (NaN poison
    gone) and equal to the float64 product of the same bf16 activations and the dequantized
    weights up to fp32 summation (the decode and the scale product are exact), on K that a pass
    of lanes divides and on K that it does not (2112: 66 groups of 32), and on N that 2 rows per
    program do not divide (2049: the last row is clamped for loading and not stored)."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K

    assert K.default_config(1, n, k)[0] == ("gemv-mma" if max(n, k) >= 8192 else "gemv")
    gw = K.random_weight(n, k, np.random.default_rng(5))
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True)
    assert y.shape == (1, n) and not torch.isnan(y).any()
    ref = x.double() @ gw.w.double().T
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-6


@needs_cuda
def test_gemv_every_config_matches_float64():
    """Every (ROWS, num_warps, CACHE) of the GEMV sweep on an odd shape (N = 515, K = 1056: 33
    groups, so every lane count leaves a masked tail), all outputs written, fp32-summation close."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K
    from nvfp4tools.kernels_ref.gpu.nvfp4_gemv import nvfp4_w4a16_gemv

    gw = K.random_weight(515, 1056, np.random.default_rng(6))
    x = torch.randn(1, 1056, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ gw.w.double().T
    for rows in (1, 2, 4):
        for warps in (1, 2, 4):
            for cache in (0, 1, 2):
                y = nvfp4_w4a16_gemv(x, gw.packed, gw.scales, gw.global_scale, poison=True,
                                     config=(rows, warps, cache))
                assert not torch.isnan(y).any(), (rows, warps, cache)
                err = float((y.double() - ref).norm() / ref.norm())
                assert err < 1e-6, (rows, warps, cache, err)


@needs_cuda
def test_diagonal_mma_gemv_matches_float64():
    """The M = 1 GEMV on mma.sync (nvfp4_skinny.nvfp4_w4a16_gemv_mma: each quad's K range on the
    accumulator's diagonal), on odd shapes (N = 515: the last program's second row is clamped and
    not stored; K = 1056: 33 groups, so the last pass is masked) for every config: all outputs
    written, equal to the float64 product up to fp32 summation."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K
    from nvfp4tools.kernels_ref.gpu.nvfp4_skinny import nvfp4_w4a16_gemv_mma

    for n, k in ((515, 1056), (64, 2816)):
        gw = K.random_weight(n, k, np.random.default_rng(11))
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ gw.w.double().T
        for cfg in (None, (1, 1, 0), (1, 1, 1), (2, 1, 0), (2, 2, 1), (4, 1, 0), (1, 2, 0), (4, 2, 0), (4, 2, 1)):
            y = nvfp4_w4a16_gemv_mma(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=cfg)
            assert y.shape == (1, n) and not torch.isnan(y).any(), (n, k, cfg)
            err = float((y.double() - ref).norm() / ref.norm())
            assert err < 1e-6, (n, k, cfg, err)


@needs_cuda
@pytest.mark.parametrize("m", [2, 9, 16])
def test_skinny_mma_kernel_matches_float64(m):
    """The mma.sync kernel fed from registers (nvfp4_skinny.py), on an odd shape (N = 515: a
    partial row tile; K = 1056: 33 groups, so the last pass is masked) and a spread of (warps,
    tiles, K split) including the split-K fix-up: all outputs written, equal to the float64
    product up to fp32 summation, the arrival counters back at zero."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K
    from nvfp4tools.kernels_ref.gpu.nvfp4_skinny import nvfp4_w4a16_skinny

    assert K.default_config(m, 515, 1056)[0] == "skinny"
    gw = K.random_weight(515, 1056, np.random.default_rng(7))
    x = torch.randn(m, 1056, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ gw.w.double().T
    for cfg in (None, (1, 1, 1), (4, 1, 1), (2, 2, 1), (4, 2, 3), (8, 1, 2),
                (1, 1, 1, 1), (4, 1, 1, 1), (2, 1, 3, 1), (8, 1, 2, 1), (2, 2, 1, 1), (4, 2, 3, 1)):  # pipelined
        y = nvfp4_w4a16_skinny(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=cfg)
        assert y.shape == (m, 515) and not torch.isnan(y).any(), cfg
        err = float((y.double() - ref).norm() / ref.norm())
        assert err < 1e-6, (cfg, err)
    assert int(K._COUNTERS[("cuda", x.device.index)].abs().sum()) == 0


@needs_cuda
@pytest.mark.parametrize("m", [17, 100, 128])
def test_mma_kernel_tma_matches_float64(m):
    """The MMA kernel with TMA loads (the default at M >= 17 on sm_90+ inside CUDA-graph capture;
    eager calls keep the per-thread loads), on an odd shape (N = 515:
    a partial 64-row tile that TMA zero-fills; K = 1056 = 8.25 blocks of 128, so the last block
    reads past K) and a 2816x8192 slice, each with and without a K split and against the
    per-thread-load kernel: all outputs written, equal to the float64 product up to fp32 summation,
    the arrival counters back at zero; swapped operands with TMA are refused."""
    import torch

    from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K

    for n, k in ((515, 1056), (704, 8192)):
        gw = K.random_weight(n, k, np.random.default_rng(13))
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ gw.w.double().T
        kernel, default = K.default_config(m, n, k)
        assert kernel == "mma" and default[8] == 0, default   # eager: no host descriptor encoding
        assert K.default_config(m, n, k, in_graph=True)[1] == default[:8] + (1,) + default[9:]
        bm = 64 if m <= 64 else 128
        for cfg in (None, (bm, 64, 128, 1, 4, 4, 2, 0, 1), (bm, 64, 128, 3, 4, 4, 2, 0, 1),
                    (bm, 64, 128, 2, 4, 3, 2, 0, 1), (bm, 128, 64, 2, 8, 3, 2, 0, 1), (bm, 64, 128, 3, 4, 4, 2, 0, 0),
                    (bm, 64, 128, 1, 4, 4, 2, 0, 2), (bm, 64, 128, 3, 4, 4, 2, 0, 2)):
            for _ in range(2):
                y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=cfg)
                assert y.shape == (m, n) and not torch.isnan(y).any(), (n, k, cfg)
                err = float((y.double() - ref).norm() / ref.norm())
                # wgmma's fp32 accumulation aligns addends with truncation: 2.5e-6 measured at K = 8192
                assert err < 1e-5, (n, k, cfg, err)
        # captured into a CUDA graph the default takes TMA (compiled first: no compiling in a capture)
        K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=default[:8] + (1,) + default[9:])
        torch.cuda.synchronize()
        graph, seen = torch.cuda.CUDAGraph(), []
        with torch.cuda.graph(graph):
            seen.append(K.default_config(m, n, k)[1])
            y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True)
        graph.replay()
        torch.cuda.synchronize()
        assert seen[0][8] == 1, seen
        assert not torch.isnan(y).any() and float((y.double() - ref).norm() / ref.norm()) < 1e-5
    assert int(K._COUNTERS[("cuda", x.device.index)].abs().sum()) == 0
    with pytest.raises(ValueError, match="TMA"):
        K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=(128, 64, 128, 2, 4, 3, 2, 1, 1))


# -- llama.cpp's CUDA kernels (ggml-cuda) and the deployed-kernel acceptance --------------------------------

def _ggml_cuda_reason():
    from nvfp4tools.kernels_ref import ggml_cuda

    return ggml_cuda.available()


needs_ggml_cuda = pytest.mark.skipif(_ggml_cuda_reason() is not None,
                                     reason=f"ggml-cuda cannot run here: {_ggml_cuda_reason()}")

# tiny Llama checkpoints made by the upstream tools (tests/oracles/families.py): ModelOpt's NVFP4 export,
# llama.cpp's convert_hf_to_gguf.py of it (NVFP4) and llama_model_quantize's Q4_0 mix
FIXTURES = os.environ.get("NVFP4TOOLS_GPU_FIXTURES",
                          os.path.join(os.path.dirname(__file__), "..", ".cache", "gpu-fixtures", "llama"))
needs_fixtures = pytest.mark.skipif(
    not os.path.isdir(os.path.join(FIXTURES, "modelopt_nvfp4")),
    reason=f"no upstream fixtures in {FIXTURES}: python tests/oracles/families.py .cache/gpu-fixtures llama "
           "(needs the interop oracles) or set NVFP4TOOLS_GPU_FIXTURES")


@needs_ggml_cuda
def test_ggml_cuda_probes_read_back_its_q8_activations(capsys):
    """What the identity probes return is a Q8 quantization of the rows (within half a step), equal to
    the correctly rounded quantizer except where the GPU's fast-math division moved a tie (counted)."""
    from nvfp4tools.kernels_ref import ggml_cuda as C

    lib = C.library()
    x = np.random.default_rng(2).standard_normal((16, 2816)).astype(np.float32)
    lines = []
    for rows, kind in (((0, 1), "q8_0"), ((1, 16), "q8_0"), ((1, 16), "q4_0")):
        xp = x[rows[0]:rows[1]]
        xq = C._probe(lib, kind, xp)
        C._check_activations(xp, xq, kind)
        b = xp.reshape(xp.shape[0], -1, 32).astype(np.float64)
        amax = np.max(np.abs(b), axis=-1, keepdims=True)
        q_exact = np.round(b / (amax / 127))
        q_got = np.round(xq.reshape(b.shape) / (amax / 127))
        diff = int(np.count_nonzero(q_exact != q_got))
        assert np.max(np.abs(q_exact - q_got)) <= 1
        lines.append(f"{'MMVQ' if rows[1] - rows[0] <= 8 else 'MMQ'} {kind} probe, rows {rows}: "
                     f"{diff} of {q_got.size} codes differ by one step from round(x * 127 / amax)")
    s = C._probe(lib, "sum", x[:1])
    assert np.all(np.isfinite(s))
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def _cases_from(path: str, pick: str):
    """(name, LayerCase) for the first quantized linear of PATH whose name contains PICK, built as verify builds it."""
    from nvfp4tools import formats
    from nvfp4tools.tensors import canonical_nvfp4, dequantize
    from nvfp4tools.verify import ggml_weight, verify_units

    ckpt = formats.read(path)
    t = next(u for u in verify_units(ckpt) if pick in u.name)
    k = t.shape[-1]
    w = dequantize(ckpt, t).reshape(-1, k)
    kw = {}
    if t.scheme.name == "nvfp4" and len(t.shape) == 2:
        c = canonical_nvfp4(ckpt, t)
        kw = dict(codes=c.codes, scale_bytes=c.scale_bytes, global_scale=float(c.global_scale.reshape(-1)[0]),
                  input_scale=None if c.input_scale is None else float(c.input_scale.reshape(-1)[0]))
    kw.update(ggml_weight(ckpt, t, kw))
    x = np.random.default_rng(0).standard_normal((16, k)).astype(np.float32)
    return t.name, LayerCase(t.name, x, w, **kw)


def _faulty(case, fault: str):
    """CASE with the same fault in every form a backend reads (ggml blocks, E2M1 codes, the float
    weight): one code nibble's top bit flipped (NVFP4: the sign of a nonzero element; Q4_0: +-8 steps),
    or the global scale applied twice."""
    import dataclasses

    from nvfp4tools.kernels_ref.fp4 import hf_from_gguf_nvfp4_blocks, unpack_nibbles_hf
    from nvfp4tools.kernels_ref.ggml_quants import dequantize_blocks
    from nvfp4tools.formats._ggml_types import BY_NAME

    if fault == "global_twice":
        g = case.ggml_out_scale
        return dataclasses.replace(case, w=case.w * g, ggml_out_scale=g * g,
                                   global_scale=None if case.global_scale is None else case.global_scale ** 2)
    name, raw = case.ggml_type, np.array(case.ggml_bytes)
    block, size = BY_NAME[name]
    # the element of largest magnitude: its nibble's top bit (NVFP4: the sign; Q4_0: 8 steps)
    row, col = np.unravel_index(int(np.argmax(np.abs(case.w))), case.w.shape)
    at = slice((col // block) * size, (col // block + 1) * size)
    before = dequantize_blocks(name, raw[row, at][None])[0, col % block]
    head = {"NVFP4": 4, "Q4_0": 2}[name]       # the block's scale bytes come first: flip codes only
    for byte, bit in ((i, m) for i in range(head, size) for m in (0x08, 0x80)):
        trial = raw[row, at].copy()
        trial[byte] ^= bit
        if dequantize_blocks(name, trial[None])[0, col % block] != before:
            raw[row, at.start + byte] ^= bit
            break
    w = dequantize_blocks(name, raw.reshape(-1, size)).reshape(case.w.shape).astype(np.float32) * case.ggml_out_scale
    kw = dict(ggml_bytes=raw, w=w)
    if case.codes is not None and name == "NVFP4":
        packed, sb = hf_from_gguf_nvfp4_blocks(raw)
        kw.update(codes=unpack_nibbles_hf(packed), scale_bytes=sb)
    return dataclasses.replace(case, **kw)


@needs_cuda
@needs_fixtures
def test_planted_faults_fail_every_backend(capsys):
    """A flipped code nibble and a global scale applied twice, planted in what each backend receives
    (the reference keeps the checkpoint's weights): every backend that runs the layer fails its tolerance."""
    from nvfp4tools.kernels_ref.dispatch import resolve
    from nvfp4tools.kernels_ref.gemm import gemm_reference, quantize_activations_nvfp4

    backends = resolve("all")
    lines = []
    for label, path, faults in (("modelopt_nvfp4", "modelopt_nvfp4", ("nibble", "global_twice")),
                                ("nvfp4.gguf", "nvfp4.gguf", ("nibble", "global_twice")),
                                ("q4_0.gguf", "q4_0.gguf", ("nibble",))):
        name, case = _cases_from(os.path.join(FIXTURES, path), "ffn_down" if "gguf" in path else "down_proj")
        for fault in faults:
            bad = _faulty(case, fault)
            ran = []
            for b in backends:
                if b.activations == "w4a4":
                    if case.codes is None:
                        continue
                    kwc = dict(input_scale=case.input_scale or 1.0)
                    import dataclasses
                    good, bad_b = dataclasses.replace(case, **kwc), dataclasses.replace(bad, **kwc)
                    ref = gemm_reference(quantize_activations_nvfp4(case.x, kwc["input_scale"]), case.w)
                else:
                    good, bad_b = case, bad
                    if b.ggml_weight and case.ggml_bytes is None:
                        continue
                    if b.name in ("triton", "vllm-marlin") and case.codes is None:
                        continue   # NVFP4 kernels; torch multiplies a Q4_0 layer's float weight
                    ref = b.reference(good) if b.reference is not None else gemm_reference(case.x, case.w)
                y = np.asarray(b.run(bad_b), np.float64)
                err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
                ran.append(b.name)
                lines.append(f"{label:<15} {name:<28} {fault:<13} {b.name:<12} {err:.3e}  {b.tolerance_rel:g}")
                assert not err <= b.tolerance_rel, (label, fault, b.name, err)
            assert {"ref", "ggml-cpu", "ggml-cuda"} <= set(ran) or not _ggml_ok(), ran
            assert "torch" in ran, ran
    with capsys.disabled():
        print("\nplanted fault: relative error of each backend against the checkpoint's reference (all must exceed the tolerance)")
        print(f"{'checkpoint':<15} {'layer':<28} {'fault':<13} {'backend':<12} rel err    tolerance")
        print("\n".join(lines))


def _vllm_marlin_reason():
    from nvfp4tools.kernels_ref import vllm_marlin

    return vllm_marlin.available()


def _ggml_ok() -> bool:
    from nvfp4tools.kernels_ref import ggml_backend

    return ggml_backend.available() is None and _ggml_cuda_reason() is None


@needs_cuda
@needs_fixtures
def test_verify_all_passes_on_upstream_checkpoints(run_cli, tmp_path, capsys):
    """verify --backend all on ModelOpt's NVFP4 export, its compressed-tensors conversion and llama.cpp's
    NVFP4 and Q4_0 GGUFs: every layer PASS, ggml-cpu and ggml-cuda among the backends that ran, and vLLM's
    Marlin FP4 on the three NVFP4 checkpoints where it is built."""
    import json

    ct = str(tmp_path / "ct")
    assert run_cli("convert", os.path.join(FIXTURES, "modelopt_nvfp4"), ct, "--to", "compressed-tensors").exit_code == 0
    lines = []
    for label, path in (("modelopt_nvfp4", os.path.join(FIXTURES, "modelopt_nvfp4")), ("compressed-tensors", ct),
                        ("nvfp4.gguf", os.path.join(FIXTURES, "nvfp4.gguf")),
                        ("q4_0.gguf", os.path.join(FIXTURES, "q4_0.gguf"))):
        r = run_cli("verify", path, "--backend", "all", "--format", "json")
        rep = json.loads(r.stdout)
        assert r.exit_code == 0 and rep["verdict"] == "pass", [x for x in rep["layers"] if x["verdict"] == "fail"][:2]
        states = {b["name"]: b for b in rep["backends"]}
        if _ggml_ok():
            assert states["ggml-cuda"]["state"] == "ran" and states["ggml-cpu"]["state"] == "ran", states
        if label != "q4_0.gguf" and _vllm_marlin_reason() is None:
            assert states["vllm-marlin"]["state"] == "ran", states
        for b in rep["backends"]:
            errs = [x["rel_err"] for layer in rep["layers"] for x in layer["backends"] if x["backend"] == b["name"]]
            lines.append(f"{label:<19} {b['name']:<12} {b['state']:<15} {b['n_layers']:>3} {b.get('n_skipped', 0):>3}  "
                         f"{max(errs) if errs else float('nan'):.2e}  {b.get('tolerance_rel', '-')!s:<7} "
                         f"{(b.get('reason') or '')[:90]}")
    with capsys.disabled():
        print("\nverify --backend all: per checkpoint and backend, layers run / skipped, worst rel err, tolerance")
        print(f"{'checkpoint':<19} {'backend':<12} {'state':<15} ran skp  worst     tol     reason")
        print("\n".join(lines))
