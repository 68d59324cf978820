"""inspect ORG/NAME: headers through huggingface_hub (no network here: the hub calls are faked with
the answers huggingface_hub would give for a local checkpoint). The local Hugging Face cache is an
empty folder under tmp_path, so every read below goes to the (faked) Hub."""

from __future__ import annotations

import json
import os

import pytest


def install_fake_hub(monkeypatch, local: str, repo: str = "acme/tiny-nvfp4") -> list[str]:
    """Fake huggingface_hub's header reads for REPO with the files of the local checkpoint LOCAL.

    Returns the list the fakes append each call to (so a test can tell whether the Hub was asked)."""
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    from nvfp4tools.formats._safetensors import parse_header

    calls: list[str] = []

    def get_safetensors_metadata(self, repo_id, revision=None, **kw):
        calls.append(f"get_safetensors_metadata {repo_id}")
        if repo_id != repo:
            err = hub.utils.RepositoryNotFoundError.__new__(hub.utils.RepositoryNotFoundError)
            Exception.__init__(err, "404: repository not found")  # built without an HTTP response
            raise err
        files = {}
        for n in sorted(os.listdir(local)):
            if n.endswith(".safetensors"):
                pf = parse_header(local, n)
                base = 8 + (pf.tensors and min(t.offset for t in pf.tensors.values()) - 8)
                tensors = {k: TensorInfo(dtype=t.dtype, shape=list(t.shape),
                                         data_offsets=(t.offset - base, t.offset - base + t.nbytes))
                           for k, t in pf.tensors.items()}
                files[n] = SafetensorsFileMetadata(metadata=pf.metadata, tensors=tensors)
        return SafetensorsRepoMetadata(metadata=None, sharded=True, weight_map={}, files_metadata=files)

    def hf_hub_download(repo_id, filename, revision=None, **kw):
        calls.append(f"hf_hub_download {repo_id} {filename}")
        path = os.path.join(local, filename)
        if not os.path.exists(path):
            err = hub.utils.EntryNotFoundError.__new__(hub.utils.EntryNotFoundError)
            Exception.__init__(err, f"{filename} not found")
            raise err
        return path

    monkeypatch.setattr(hub.HfApi, "get_safetensors_metadata", get_safetensors_metadata)
    monkeypatch.setattr(hub, "hf_hub_download", hf_hub_download)
    return calls


@pytest.fixture
def fake_hub(monkeypatch, synth_dir, empty_hf_cache):
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    install_fake_hub(monkeypatch, local)
    return local


def test_inspect_hub_id(fake_hub, run_cli):
    r = run_cli("inspect", "acme/tiny-nvfp4", "--format", "json")
    assert r.exit_code == 0, r.stderr
    remote = json.loads(r.stdout)
    local = json.loads(run_cli("inspect", fake_hub, "--format", "json").stdout)
    assert remote["format"] == "modelopt" and remote["source"] == "acme/tiny-nvfp4"
    assert remote["summary"]["n_parameters"] == local["summary"]["n_parameters"]
    assert remote["coverage"] == local["coverage"]
    assert "remote_headers_only" in {f["code"] for f in remote["findings"]}
    assert "hub_cache" not in remote["metadata"]


def test_estimate_hub_id(fake_hub, run_cli):
    r = run_cli("estimate", "acme/tiny-nvfp4", "--gpu", "rtx4090", "--context", "1024", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["fits"] is True


def test_unknown_hub_repo(fake_hub, run_cli):
    r = run_cli("inspect", "acme/does-not-exist")
    assert r.exit_code == 3 and "acme/does-not-exist" in r.stderr and "\n" not in r.stderr.strip()
    assert r.stderr.startswith("NetworkError: ") and "HF_TOKEN" in r.stderr
