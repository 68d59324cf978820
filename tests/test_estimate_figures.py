"""The published engine figures of docs/estimate-figures.md, re-run (bench/estimate_figures.py).

Every row whose settings the source states in full is held to its tolerance (weights 5%, KV tokens /
KV bytes / concurrency 10%), or, for the misses the page explains, to the documented error, so a
change that moves one is noticed. The checkpoints are header-only; all but the Gemma 4 rows are
built from transformers' meta-device models (about 15 s in all), skipped when transformers is absent.
The page's table must be the script's output, verbatim."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
ef = importlib.import_module("estimate_figures")

# id -> (documented error, why); docs/estimate-figures.md "The misses"
DOCUMENTED_MISSES = {
    "goss-vllm-triton-w": (-0.051, "vLLM 0.14.1's triton_kernels pads the MXFP4 codes; 0.34.0's, the one "
                                   "estimate models, does not (its scale padding and FP32 biases are charged)"),
    "g4-sgl-full-pred": (+0.126, "the pool carries the weights' unexplained 0.43 GiB (+13% of a 3.3 GiB pool)"),
    "g4-sgl-eo-full": (+0.432, "the pool carries the weights' unexplained 0.47 GiB (+44% of a 1.06 GiB pool)"),
}


def _needs_transformers(case) -> bool:
    return ef.CHECKPOINTS[case.ckpt][1]


def _have_transformers() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    cases = [c for c in ef.CASES if _have_transformers() or not _needs_transformers(c)]
    return {r["id"]: r for r in ef.run_cases(cases, str(tmp_path_factory.mktemp("figures")))}


def test_issue_27_coverage():
    """At least 20 figures from at least 8 models, across vLLM, SGLang and llama.cpp, each with a
    source, settings, a published value and a tolerance."""
    assert len(ef.CASES) >= 20
    assert len({c.model for c in ef.CASES}) >= 8
    engines = " ".join(c.engine for c in ef.CASES)
    assert all(e in engines for e in ("vLLM", "SGLang", "llama.cpp"))
    assert len({c.id for c in ef.CASES}) == len(ef.CASES)
    for c in ef.CASES:
        assert c.source and c.flags and c.published > 0 and c.kind in ("weights", "kv")
        if not c.known or c.id in DOCUMENTED_MISSES:
            assert c.note, f"{c.id}: a miss or an incompletely specified row says why"


@pytest.mark.parametrize("case", ef.CASES, ids=[c.id for c in ef.CASES])
def test_figure(case, rows):
    if case.id not in rows:
        pytest.skip("needs transformers and torch (meta-device checkpoint)")
    r = rows[case.id]
    if case.id in DOCUMENTED_MISSES:
        want, why = DOCUMENTED_MISSES[case.id]
        assert r["error"] == pytest.approx(want, abs=0.005), why
        assert not r["within"]
    elif case.known:
        assert r["within"], f"{case.id}: {r['estimate']:.4g} vs published {case.published} ({r['error']:+.1%})"


def test_page_holds_the_scripts_table(rows):
    if len(rows) != len(ef.CASES):
        pytest.skip("needs transformers and torch for every row")
    page = open(os.path.join(ROOT, "docs", "estimate-figures.md"), encoding="utf-8").read()
    assert ef.table([rows[c.id] for c in ef.CASES]) in page, "re-run python bench/estimate_figures.py into the page"
