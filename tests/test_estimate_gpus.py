"""estimate over several GPUs: --gpu a,b,c and all, the header line, 100 columns, figures the GPU
table marks unverified, and the note on rows that look inverted."""

from __future__ import annotations

import json
import os

import pytest

from nvfp4tools.errors import UsageError
from nvfp4tools.gpus import all_gpus, get_gpu, get_gpus

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def g26(tmp_path_factory):
    from nvfp4tools.synth import synthesize

    p = str(tmp_path_factory.mktemp("all-linear"))
    synthesize(p, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True)
    return p


def test_get_gpus_lists_and_all():
    assert [g.key for g in get_gpus("l40s, h100 ,rtx4090,l40s")] == ["l40s", "h100-sxm", "rtx4090"]
    assert get_gpus("all") == all_gpus()
    with pytest.raises(UsageError, match="unknown GPU"):
        get_gpus("l40s,nope")
    with pytest.raises(UsageError, match="names no GPU"):
        get_gpus(" , ")


def test_unverified_follows_the_table_sources():
    assert get_gpu("l4").unverified == ("memory", "bandwidth")
    assert get_gpu("rtx5090").unverified == ("bandwidth",)
    assert get_gpu("h100-sxm").unverified == ()


def test_gpu_list_table_header_width_marks_and_inversion_note(run_cli, g26):
    r = run_cli("estimate", g26, "--gpu", "l40s,h100-sxm,l4", "--engine", "vllm")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"{g26}: vllm, context 8192, KV bf16"
    assert max(map(len, lines)) <= 100
    l4 = next(x for x in lines if x.startswith("l4 "))
    assert "22.00*" in l4 and l4.rstrip().endswith("*")        # memory and bandwidth both unverified
    assert "UNVERIFIED" in r.stdout
    # an H100 (79 GiB) gets fewer KV tokens than an L40S (44 GiB) under vLLM's default settings
    assert "KV tokens look inverted: h100-sxm shows fewer than l40s" in r.stdout
    assert "max_num_batched_tokens 8192" in r.stdout
    # with the same settings on both there is nothing to explain
    same = run_cli("estimate", g26, "--gpu", "l40s,h100-sxm", "--max-batched-tokens", "2048", "--max-seqs", "256")
    assert "inverted" not in same.stdout


def test_gpu_all_fits_100_columns_and_json_schema(run_cli, g26):
    jsonschema = pytest.importorskip("jsonschema")
    r = run_cli("estimate", g26, "--gpu", "all", "--context", "32768", "--engine", "sglang")
    assert max(map(len, r.stdout.splitlines())) <= 100, r.stdout
    assert r.stdout.splitlines()[0].endswith("sglang, context 32768, KV bf16")
    j = run_cli("estimate", g26, "--gpu", "rtx3090,l4", "--format", "json")
    rep = json.loads(j.stdout)
    with open(os.path.join(ROOT, "docs", "schema", "estimate-all.json")) as fh:
        jsonschema.validate(rep, json.load(fh))
    assert [x["gpu"] for x in rep["rows"]] == ["rtx3090", "l4"]
    assert rep["rows"][1]["unverified"] == ["memory", "bandwidth"] and rep["rows"][0]["unverified"] == []
    # --vram replaces the table's memory figure, so it is no longer the unverified one
    v = json.loads(run_cli("estimate", g26, "--gpu", "l4,rtx3090", "--vram", "24GiB",
                           "--format", "json").stdout)
    assert v["rows"][0]["unverified"] == ["bandwidth"]


def test_single_gpu_notes_fit_100_columns(run_cli, g26):
    r = run_cli("estimate", g26, "--gpu", "rtx3090", "--engine", "sglang")
    assert max(len(x) for x in r.stdout.splitlines() if x.startswith(("note:", "      "))) <= 100
