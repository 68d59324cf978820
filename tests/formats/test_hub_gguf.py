"""GGUF repositories on the Hub: ``inspect`` / ``estimate`` ``org/name[:SELECTOR]`` read the chosen
file's header through HTTP range reads (here faked over a local file: no network in tests), or
the file itself when the local Hugging Face cache has it."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from nvfp4tools import formats
from nvfp4tools.errors import UnsupportedError
from nvfp4tools.formats import hub

FILES = ["README.md", "gemma-4-tiny-Q4_0.gguf", "gemma-4-tiny-Q8_0.gguf", "mmproj-gemma-4-tiny-F16.gguf",
         "BF16/gemma-4-tiny-BF16-00001-of-00002.gguf", "BF16/gemma-4-tiny-BF16-00002-of-00002.gguf"]


@pytest.mark.parametrize("sel, want", [
    ("Q4_0", ["gemma-4-tiny-Q4_0.gguf"]),
    ("q8_0", ["gemma-4-tiny-Q8_0.gguf"]),
    ("BF16", ["BF16/gemma-4-tiny-BF16-00001-of-00002.gguf", "BF16/gemma-4-tiny-BF16-00002-of-00002.gguf"]),
])
def test_selector_picks_one_model(sel, want):
    assert hub.choose_gguf(f"acme/tiny-GGUF:{sel}", FILES) == want


def test_selector_refusals():
    with pytest.raises(UnsupportedError, match="3 GGUF models match") as e:
        hub.choose_gguf("acme/tiny-GGUF", FILES)               # mmproj never counts
    assert "acme/tiny-GGUF:" in e.value.hint
    with pytest.raises(UnsupportedError, match="no GGUF file matching ':Q5_K_M'") as e:
        hub.choose_gguf("acme/tiny-GGUF:Q5_K_M", FILES)
    assert "Q4_0" in e.value.message
    assert hub.choose_gguf("acme/one", ["model-Q4_0.gguf", "mmproj-F16.gguf"]) == ["model-Q4_0.gguf"]
    assert hub._split("acme/tiny-GGUF@v1.0:Q4_0") == ("acme/tiny-GGUF", "v1.0")
    assert hub.is_hub_id("acme/tiny-GGUF:Q4_0")


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory):
    from nvfp4tools.synth_gguf import write_gemma4_gguf

    return write_gemma4_gguf(str(tmp_path_factory.mktemp("hubgguf") / "gemma-4-tiny-Q4_0.gguf"), qtype="q4_0")["path"]


@pytest.fixture
def fake_gguf_hub(monkeypatch, q4_gguf, empty_hf_cache):
    """The Hub's file list and range reads, served from the local GGUF; records the byte counts read."""
    reads: list[int] = []
    size = os.path.getsize(q4_gguf)

    def remote_file(path, name):
        assert name == "gemma-4-tiny-Q4_0.gguf"

        def fetch(n):
            reads.append(n)
            with open(q4_gguf, "rb") as fh:
                return fh.read(n)
        return size, fetch

    def no_safetensors(self, repo_id, revision=None, **kw):   # what the Hub answers for a GGUF-only repository
        from huggingface_hub.utils import NotASafetensorsRepoError
        raise NotASafetensorsRepoError(f"{repo_id} is not a safetensors repo")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata", no_safetensors)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, revision=None, **kw: object())
    monkeypatch.setattr(hub, "list_files", lambda path: ["README.md", "gemma-4-tiny-Q4_0.gguf", "mmproj-x-F16.gguf"])
    monkeypatch.setattr(hub, "remote_file", remote_file)
    return reads


def test_remote_header_equals_local_read(fake_gguf_hub, q4_gguf, monkeypatch):
    from nvfp4tools.formats import _gguf_container

    monkeypatch.setattr(_gguf_container, "PREFIX_FIRST", 4096)   # force the prefix to grow
    remote = formats.read("acme/tiny-GGUF:Q4_0")
    local = formats.read(q4_gguf)
    assert remote.source == "acme/tiny-GGUF:Q4_0" and remote.metadata["remote"] is True
    assert {n: (t.shape, t.scheme.name, t.nbytes) for n, t in remote.tensors.items()} == \
        {n: (t.shape, t.scheme.name, t.nbytes) for n, t in local.tensors.items()}
    assert remote.arch == local.arch
    size = os.path.getsize(q4_gguf)
    assert fake_gguf_hub[0] == 4096 and len(fake_gguf_hub) > 1 and max(fake_gguf_hub) < size   # header only


def test_inspect_and_estimate_a_gguf_repo(fake_gguf_hub, run_cli):
    r = run_cli("inspect", "acme/tiny-GGUF:Q4_0", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["format"] == "gguf" and any(f["code"] == "remote_headers_only" for f in rep["findings"])
    r = run_cli("estimate", "acme/tiny-GGUF", "--gpu", "rtx4090", "--format", "json")   # one model: no selector
    assert r.exit_code == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["engine"] == "llamacpp" and est["weights"]["bytes_per_gpu"] > 0


def test_cached_file_is_read_without_the_network(q4_gguf, empty_hf_cache, monkeypatch, run_cli):
    snap = os.path.join(empty_hf_cache, "models--acme--tiny-GGUF", "snapshots", "0" * 40)
    os.makedirs(snap)
    shutil.copy(q4_gguf, os.path.join(snap, "gemma-4-tiny-Q4_0.gguf"))
    os.makedirs(os.path.join(empty_hf_cache, "models--acme--tiny-GGUF", "refs"))
    with open(os.path.join(empty_hf_cache, "models--acme--tiny-GGUF", "refs", "main"), "w") as fh:
        fh.write("0" * 40)

    def no_network(*a, **k):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(hub, "list_files", no_network)
    monkeypatch.setattr(hub, "remote_file", no_network)
    ck = formats.read("acme/tiny-GGUF:Q4_0")
    assert ck.metadata["hub_cache"] == snap and "remote" not in ck.metadata
    r = run_cli("inspect", "acme/tiny-GGUF:Q4_0", "--deep")    # local bytes: the deep scan runs
    assert r.exit_code == 0, r.stderr


def test_offline_and_not_cached(empty_hf_cache, monkeypatch, run_cli):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("inspect", "acme/tiny-GGUF:Q4_0")
    assert r.exit_code == 3 and "HF_HUB_OFFLINE" in r.stderr and len(r.stderr.strip().splitlines()) == 1
