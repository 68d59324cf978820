"""The vllm-marlin backend (vLLM's Marlin FP4 GEMM, kernels_ref/vllm_marlin.py) on a GPU: full-size Gemma-4
shapes against its float64 reference, and planted faults that must fail it. Skipped, with the reason, where
CUDA or the built library is absent.

    bash bench/build_marlin_fp4.sh && python3 -m pytest -q tests/test_gpu_marlin.py -s
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nvfp4tools.kernels_ref import vllm_marlin as V
from nvfp4tools.kernels_ref.dispatch import Backend, LayerCase

pytestmark = pytest.mark.gpu

_WHY = V.available()
needs_marlin = pytest.mark.skipif(_WHY is not None, reason=f"vllm-marlin cannot run here: {_WHY}")

# Gemma-4-26B-A4B (hidden 2816) linear shapes, N (out) x K (in): every one in a Marlin tile family as it is
# (N % 64 == 0 and K % 128 == 0, or N % 128 == 0 and K % 64 == 0); 2112 x 2112 takes vLLM's zero padding
SHAPES = [(2112, 2816), (2816, 2112), (704, 2816), (2816, 704), (4096, 2816), (2816, 4096), (2112, 2112)]
# M = 1 (m_block_size_8 kernels), 7, 16, 33, 64 and 100 (thread_m_blocks 1-4, M split in 64-row parts)
MS = [1, 7, 16, 33, 64, 100]


def _case(n: int, k: int, m: int, seed: int) -> LayerCase:
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
    from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4

    rng = np.random.default_rng(seed)
    q = quantize_nvfp4(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return LayerCase(f"{n}x{k}", x, dequantize_nvfp4(q), codes=unpack_nibbles_hf(q.packed), scale_bytes=q.block_scale,
                     global_scale=float(q.global_scale))


def _rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / np.linalg.norm(ref))


def _table(title: str, head: str, lines: list[str], capsys) -> None:
    with capsys.disabled():
        print(f"\n{title}\n{head}\n" + "\n".join(lines))


def test_registration_lines_construct_a_backend():
    b = Backend(V.BACKEND_NAME, V.DESCRIPTION, V.TOLERANCE_REL, V.available, V.run, V.TOLERANCE_SOURCE,
                reference=V.reference)
    assert b.name == "vllm-marlin" and b.activations == "w4a16"


@needs_marlin
def test_full_size_shapes_within_tolerance(capsys):
    lines, bad = [], []
    for n, k in SHAPES:
        big = _case(n, k, max(MS), seed=n * 7 + k)
        for m in MS:
            case = dataclasses.replace(big, x=big.x[:m])
            y = V.run(case)
            assert y.shape == (m, n) and y.dtype == np.float32 and np.all(np.isfinite(y)), (n, k, m)
            err = _rel(y, V.reference(case))
            unrounded = _rel(y, V.round_bf16(case.x) @ case.w.astype(np.float64).T)
            ok = err <= V.TOLERANCE_REL
            pn, pk = V.marlin_padded_nk(n, k)
            shape = f"{n}x{k}" + (f" (padded {pn}x{pk})" if (pn, pk) != (n, k) else "")
            lines.append(f"{shape:<28} {m:>4}  {err:.3e}  {V.TOLERANCE_REL:g}  {'PASS' if ok else 'FAIL'}   "
                         f"{unrounded:.3e}")
            if not ok:
                bad.append((n, k, m, err))
    _table("vllm-marlin (bf16) against x_bf16 @ W rounded to bf16 (last column: against the unrounded product)",
           f"{'N x K':<28} {'M':>4}  rel err    tol    verdict  unrounded", lines, capsys)
    assert not bad, bad


@needs_marlin
def test_fp16_activations(capsys):
    """The fp16 instances (vLLM's path for fp16 models): against x_fp16 @ W rounded to fp16."""
    import torch

    lines = []
    for n, k in SHAPES[:3]:
        case = _case(n, k, 16, seed=n + k)
        y = V.run_dtype(case, torch.half).astype(np.float64)
        xh = case.x.astype(np.float16).astype(np.float64)
        ref = (xh @ case.w.astype(np.float64).T).astype(np.float32).astype(np.float16).astype(np.float64)
        err = _rel(y, ref)
        lines.append(f"{n}x{k:<10} 16  {err:.3e}  {V.TOLERANCE_REL:g}  {'PASS' if err <= V.TOLERANCE_REL else 'FAIL'}")
        assert err <= V.TOLERANCE_REL, (n, k, err)
    _table("vllm-marlin (fp16 activations) against x_fp16 @ W rounded to fp16", "N x K        M   rel err    tol",
           lines, capsys)


def _flip_largest(case: LayerCase) -> tuple[LayerCase, float]:
    """CASE with the sign bit of its largest-magnitude weight's code flipped (the reference keeps the checkpoint's
    weight), and that fault's own relative size in the float64 output."""
    row, col = np.unravel_index(int(np.argmax(np.abs(case.w))), case.w.shape)
    codes = case.codes.copy()
    codes[row, col] ^= 0x8
    dy = np.zeros((case.x.shape[0], case.w.shape[0]))
    dy[:, row] = -2.0 * float(case.w[row, col]) * case.x[:, col].astype(np.float64)
    y = case.x.astype(np.float64) @ case.w.astype(np.float64).T
    return dataclasses.replace(case, codes=codes), float(np.linalg.norm(dy) / np.linalg.norm(y))


@needs_marlin
def test_planted_faults_fail(capsys):
    """A flipped code nibble (the sign of the largest weight) and a wrong global scale (doubled), planted in what
    the backend receives; the reference keeps the checkpoint's weights: each must exceed the tolerance."""
    lines = []
    for n, k in SHAPES[:3]:
        case = _case(n, k, 16, seed=n * 3 + k)
        ref = V.reference(case)
        good = _rel(V.run(case), ref)
        flipped, size = _flip_largest(case)
        assert size > 1.5 * V.TOLERANCE_REL, (n, k, size)      # the fault is visible at this tolerance
        for fault, bad in (("nibble", flipped), ("global x2", dataclasses.replace(case, global_scale=case.global_scale * 2))):
            err = _rel(V.run(bad), ref)
            lines.append(f"{n}x{k:<8} {fault:<10} {err:.3e}  {V.TOLERANCE_REL:g}  "
                         f"{'FAIL (caught)' if err > V.TOLERANCE_REL else 'PASS (missed)'}   clean {good:.3e}")
            assert err > V.TOLERANCE_REL, (n, k, fault, err)
    _table("vllm-marlin planted faults (each must exceed the tolerance)",
           "N x K      fault      rel err    tol    verdict         clean run", lines, capsys)
