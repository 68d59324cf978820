"""Hub ids without a working Hub: every network or Hub failure is one line and exit 3; a model in the
local Hugging Face cache is read from disk with no network call; a missing path written like a path
is 'no such file or directory', never a Hub lookup.

No network here: huggingface_hub's calls are replaced by fakes raising the exception classes the
library raises (HTTP errors are built by huggingface_hub's own ``hf_raise_for_status`` from an HTTP
response), and the HTTP client's ``Client.send`` is replaced so that any request that slips through
is recorded and refused. The cache is a folder under tmp_path in huggingface_hub's cache layout.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil

import pytest

from tests.formats.test_hub import install_fake_hub

hf = pytest.importorskip("huggingface_hub")

REPO = "acme/tiny-nvfp4"
SHA = "1234abcd" * 5  # a commit hash: 40 hex digits


def _httpx():
    """The HTTP client module huggingface_hub builds its errors on (httpx2 in 2.x, httpx in 1.x)."""
    from huggingface_hub import errors

    mod = importlib.import_module(errors.HTTPError.__module__.split(".")[0])
    if not hasattr(mod, "ConnectError"):
        pytest.skip(f"huggingface_hub {hf.__version__} uses {mod.__name__}; these fakes build httpx errors")
    return mod


def http_error(status: int, headers: dict[str, str] | None = None,
               url: str = "https://huggingface.co/acme/x/resolve/main/model.safetensors") -> Exception:
    """The exception huggingface_hub raises for this HTTP answer (its own hf_raise_for_status builds it)."""
    httpx = _httpx()
    from huggingface_hub.utils import hf_raise_for_status

    response = httpx.Response(status, headers=headers or {}, request=httpx.Request("HEAD", url))
    try:
        hf_raise_for_status(response)
    except Exception as e:  # noqa: BLE001 - the point is to get it
        return e
    raise AssertionError(f"hf_raise_for_status did not raise for HTTP {status}")


@pytest.fixture
def hf_cache(empty_hf_cache):
    return empty_hf_cache


@pytest.fixture
def hub_calls(monkeypatch, hf_cache):
    """Every way to the Hub is refused (as with no network) and recorded in the returned list."""
    httpx = _httpx()
    calls: list[str] = []

    def refuse(what):
        def fake(*args, **kw):
            calls.append(what)
            raise httpx.ConnectError("[Errno 101] Network is unreachable")
        return fake

    monkeypatch.setattr(httpx.Client, "send", refuse("http request"))
    monkeypatch.setattr(hf.HfApi, "get_safetensors_metadata", refuse("get_safetensors_metadata"))
    monkeypatch.setattr(hf.HfApi, "repo_info", refuse("repo_info"))
    monkeypatch.setattr(hf, "hf_hub_download", refuse("hf_hub_download"))
    return calls


def cache_snapshot(cache: str, repo: str, local: str, *, names: list[str] | None = None,
                   refs: tuple[str, ...] = ("main",), symlinks: bool = False) -> str:
    """Put the files of the local checkpoint LOCAL (all, or NAMES) in CACHE as huggingface_hub would:
    models--ORG--NAME/{refs/<ref>, snapshots/<sha>/<file>}; with SYMLINKS each file is a relative link
    to blobs/<sha256> (what huggingface_hub writes on Linux), else a copy."""
    storage = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snap = os.path.join(storage, "snapshots", SHA)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(storage, "refs", ref), "w") as fh:
            fh.write(SHA)
    for name in names if names is not None else sorted(os.listdir(local)):
        src = os.path.join(local, name)
        if symlinks:
            with open(src, "rb") as fh:
                blob = hashlib.sha256(fh.read()).hexdigest()
            os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
            shutil.copyfile(src, os.path.join(storage, "blobs", blob))
            os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
        else:
            shutil.copyfile(src, os.path.join(snap, name))
    return snap


def assert_one_line_exit_3(r, hub_id: str) -> str:
    err = r.stderr.strip()
    assert r.exit_code == 3, (r.exit_code, r.stderr)
    assert err and "\n" not in err, r.stderr
    assert hub_id in err
    assert "internal error" not in err and "Traceback" not in err
    return err


# --- failures of the network or of the Hub ------------------------------------------------------------------


def _connect():
    return _httpx().ConnectError("[Errno 101] Network is unreachable")


def _dns():
    return _httpx().ConnectError("[Errno -3] Temporary failure in name resolution")


def _timeout():
    return _httpx().ConnectTimeout("timed out")


FAILURES = [
    # id, hub id, the error, its class, words the message must hold
    ("no-network", "acme/x", _connect, "ConnectError", ["no connection to the Hugging Face Hub", "download it"]),
    ("dns", "acme/x", _dns, "ConnectError", ["DNS failure", "check your network"]),
    ("timeout", "acme/x", _timeout, "ConnectTimeout", ["did not answer in time", "retry"]),
    ("401", "acme/x",
     lambda: http_error(401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
     "HfHubHTTPError", ["HTTP 401", "set HF_TOKEN"]),
    ("403", "acme/x", lambda: http_error(403), "HfHubHTTPError", ["HTTP 403", "set HF_TOKEN"]),
    ("404-repo", "acme/x", lambda: http_error(401, {"X-Error-Code": "RepoNotFound"}),
     "RepositoryNotFoundError", ["no such repository", "check the id", "HF_TOKEN"]),
    ("404-revision", "acme/x@v9",
     lambda: http_error(404, {"X-Error-Code": "RevisionNotFound"},
                        "https://huggingface.co/acme/x/resolve/v9/model.safetensors"),
     "RevisionNotFoundError", ["no revision 'v9'", "after '@'"]),
    ("gated", "acme/x", lambda: http_error(403, {"X-Error-Code": "GatedRepo"}),
     "GatedRepoError", ["gated", "https://huggingface.co/acme/x", "set HF_TOKEN"]),
    ("unknown", "acme/x", lambda: RuntimeError("something new\nover two lines"), "RuntimeError",
     ["RuntimeError: something new", "download it"]),
]


@pytest.mark.parametrize("hub_id,make,cls,words", [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_hub_failure_is_one_line_exit_3(hub_calls, monkeypatch, run_cli, hub_id, make, cls, words):
    err_obj = make()
    assert type(err_obj).__name__ == cls  # the class huggingface_hub / the HTTP client really raises

    def get_safetensors_metadata(self, repo_id, revision=None, **kw):
        hub_calls.append("get_safetensors_metadata")
        raise err_obj

    monkeypatch.setattr(hf.HfApi, "get_safetensors_metadata", get_safetensors_metadata)
    r = run_cli("inspect", hub_id)
    err = assert_one_line_exit_3(r, hub_id)
    assert err.startswith("NetworkError: ")
    for w in words:
        assert w in err, (w, err)
    assert hub_calls == ["get_safetensors_metadata"]


def test_hub_failure_other_commands(hub_calls, run_cli):
    """estimate and verify go through the same reader: the same one line."""
    for args in (("estimate", "acme/x", "--gpu", "rtx4090"), ("verify", "acme/x")):
        err = assert_one_line_exit_3(run_cli(*args), "acme/x")
        assert "no connection to the Hugging Face Hub" in err


def test_missing_repo_as_huggingface_hub_2_reports_it(hub_calls, monkeypatch, run_cli):
    """huggingface_hub 2.x answers a missing (or private) repository with NotASafetensorsRepoError (its file
    checks swallow the 404); the repository itself is then asked, which says 'not found'."""
    from huggingface_hub.errors import NotASafetensorsRepoError

    def get_safetensors_metadata(self, repo_id, revision=None, **kw):
        raise NotASafetensorsRepoError(f"'{repo_id}' is not a safetensors repo.")

    def repo_info(self, repo_id, revision=None, **kw):
        raise http_error(401, {"X-Error-Code": "RepoNotFound"}, f"https://huggingface.co/api/models/{repo_id}")

    monkeypatch.setattr(hf.HfApi, "get_safetensors_metadata", get_safetensors_metadata)
    monkeypatch.setattr(hf.HfApi, "repo_info", repo_info)
    err = assert_one_line_exit_3(run_cli("inspect", "acme/nope"), "acme/nope")
    assert err.startswith("NetworkError: ") and "no such repository" in err

    # the repository exists and holds no safetensors: its GGUFs are looked for (none here)
    from nvfp4tools.formats import hub

    monkeypatch.setattr(hf.HfApi, "repo_info", lambda self, repo_id, revision=None, **kw: object())
    monkeypatch.setattr(hub, "list_files", lambda path: ["README.md", "weights.bin"])
    err = assert_one_line_exit_3(run_cli("inspect", "acme/no-weights"), "acme/no-weights")
    assert err.startswith("UnsupportedError: ") and "no GGUF file and no model.safetensors" in err


def test_side_file_failure_is_network_error(hub_calls, monkeypatch, synth_dir, run_cli):
    """Headers read, then the connection drops while fetching config.json: still one line, exit 3."""
    install_fake_hub(monkeypatch, synth_dir(fmt="modelopt", recipe="all-linear", shards=2), "acme/x")

    def hf_hub_download(repo_id, filename, revision=None, **kw):
        raise _dns()

    monkeypatch.setattr(hf, "hf_hub_download", hf_hub_download)
    err = assert_one_line_exit_3(run_cli("inspect", "acme/x"), "acme/x")
    assert "DNS failure" in err


# --- offline, and the local cache ----------------------------------------------------------------------


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_empty_cache(hub_calls, monkeypatch, run_cli, var):
    monkeypatch.setenv(var, "1")
    err = assert_one_line_exit_3(run_cli("inspect", "acme/x"), "acme/x")
    assert f"acme/x is not in the local Hugging Face cache ({var} is set)" in err
    assert f"unset {var}" in err
    assert hub_calls == []


def test_offline_partial_cache_names_what_is_missing(hub_calls, hf_cache, monkeypatch, synth_dir, run_cli):
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    cache_snapshot(hf_cache, REPO, local, names=["config.json", "hf_quant_config.json", "model.safetensors.index.json",
                                                 "model-00001-of-00002.safetensors"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = assert_one_line_exit_3(run_cli("inspect", REPO), REPO)
    assert "not in the local Hugging Face cache (HF_HUB_OFFLINE is set)" in err
    assert "model-00002-of-00002.safetensors" in err and "model-00001-of-00002.safetensors" not in err
    assert hub_calls == []


def test_online_partial_cache_reads_remote_headers(hf_cache, monkeypatch, synth_dir, run_cli):
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    cache_snapshot(hf_cache, REPO, local, names=["config.json", "model.safetensors.index.json"])
    calls = install_fake_hub(monkeypatch, local)
    r = run_cli("inspect", REPO, "--format", "json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["source"] == REPO and "hub_cache" not in report["metadata"]
    assert "remote_headers_only" in {f["code"] for f in report["findings"]}
    assert any(c.startswith("get_safetensors_metadata") for c in calls)


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_cached_snapshot_is_read_locally(hub_calls, hf_cache, monkeypatch, synth_dir, run_cli, offline):
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    snap = cache_snapshot(hf_cache, REPO, local)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("inspect", REPO, "--format", "json")
    assert r.exit_code == 0, r.stderr
    cached = json.loads(r.stdout)
    ref = json.loads(run_cli("inspect", local, "--format", "json").stdout)
    assert cached["source"] == REPO and cached["format"] == ref["format"] == "modelopt"
    assert cached["coverage"] == ref["coverage"]
    assert cached["summary"] == ref["summary"]
    assert cached["metadata"]["hub_cache"] == snap
    assert "remote_headers_only" not in {f["code"] for f in cached["findings"]}  # scales were read

    r = run_cli("estimate", REPO, "--gpu", "rtx4090", "--context", "1024", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["fits"] is True
    assert hub_calls == []


def test_cached_revisions(hub_calls, hf_cache, monkeypatch, synth_dir, run_cli):
    """@ref reads refs/<ref>, @<commit> the snapshot itself; a revision the cache lacks is not read."""
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    cache_snapshot(hf_cache, REPO, local, refs=("v1",))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for hub_id in (f"{REPO}@v1", f"{REPO}@{SHA}"):
        r = run_cli("inspect", hub_id, "--format", "json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["source"] == hub_id
    for hub_id in (REPO, f"{REPO}@v2"):
        err = assert_one_line_exit_3(run_cli("inspect", hub_id), hub_id)
        assert "not in the local Hugging Face cache" in err
    assert hub_calls == []


def test_cache_under_hf_home(hub_calls, tmp_path, monkeypatch, synth_dir, run_cli):
    """Without HF_HUB_CACHE the cache is $HF_HOME/hub, read when the command runs."""
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    snap = cache_snapshot(str(tmp_path / "hf-home" / "hub"), REPO, local)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("inspect", REPO, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["metadata"]["hub_cache"] == snap
    assert hub_calls == []


def test_cached_symlinked_single_file(hub_calls, hf_cache, monkeypatch, synth_dir, run_cli):
    """huggingface_hub's own layout: snapshot files are links into blobs/."""
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=1)
    snap = cache_snapshot(hf_cache, REPO, local, symlinks=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("inspect", REPO, "--format", "json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["source"] == REPO and report["metadata"]["hub_cache"] == snap
    assert report["coverage"] == json.loads(run_cli("inspect", local, "--format", "json").stdout)["coverage"]
    assert hub_calls == []


def test_cached_symlinked_shards(hub_calls, hf_cache, monkeypatch, synth_dir, run_cli):
    local = synth_dir(fmt="modelopt", recipe="all-linear", shards=2)
    cache_snapshot(hf_cache, REPO, local, symlinks=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("inspect", REPO, "--format", "json")
    assert r.exit_code == 0, r.stderr


def test_cached_gguf(hub_calls, hf_cache, tmp_path, monkeypatch, run_cli):
    from nvfp4tools.synth_gguf import write_gemma4_gguf

    local = tmp_path / "gguf"
    local.mkdir()
    write_gemma4_gguf(str(local / "tiny-Q4_0.gguf"))
    snap = cache_snapshot(hf_cache, "acme/tiny-gguf", str(local), symlinks=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("inspect", "acme/tiny-gguf", "--format", "json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["format"] == "gguf" and report["source"] == "acme/tiny-gguf"
    assert report["metadata"]["hub_cache"] == snap
    assert hub_calls == []


# --- paths written like paths are never Hub ids ------------------------------------------------------------


LOCAL_LOOKING = ["./nope/x", "/abs/nope", "a/b/c", "x.gguf", "models/foo", "nope/x/", "acme\\x", "~/nope",
                 "acme/x.safetensors", "acme/config.json"]


@pytest.mark.parametrize("path", LOCAL_LOOKING)
def test_missing_local_path_is_not_a_hub_lookup(hub_calls, tmp_path, monkeypatch, run_cli, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    r = run_cli("inspect", path)
    assert r.exit_code == 3, r.stderr
    err = r.stderr.strip()
    hint = " (./models is a local folder, so models/foo is not looked up on the Hugging Face Hub)"
    assert err == f"UnknownFormatError: {path}: no such file or directory" + (hint if path == "models/foo" else "")
    assert hub_calls == []


def test_is_hub_id(tmp_path, monkeypatch):
    from nvfp4tools.formats.hub import is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for path in ("acme/x", "acme/x@v1", "acme/x@refs/pr/1", f"acme/x@{SHA}", "Org-1/name_2.v3"):
        assert is_hub_id(path), path
    for path in LOCAL_LOOKING + ["acme", "models"]:
        assert not is_hub_id(path), path
