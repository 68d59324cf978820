"""Hugging Face Hub ids (``org/name`` or ``org/name@revision``).

A Hub id is read from the local Hugging Face cache first: when a cached snapshot of that revision
holds the checkpoint's weights (every shard its index names, a ``model.safetensors``, or a GGUF
file), the snapshot folder is read as a local checkpoint (scales included) and the result keeps the
id as its source, with ``metadata["hub_cache"]`` naming the folder. No network call is made then.

Otherwise the headers are fetched with ``huggingface_hub`` (``HfApi.get_safetensors_metadata``
reads each shard's header with HTTP Range requests; ``hf_hub_download`` fetches config.json /
hf_quant_config.json). No tensor bytes are downloaded, so per-tensor scale values are not checked
remotely (inspect says so). With ``HF_HUB_OFFLINE`` set (read at call time), nothing goes to the
network: a Hub id the cache cannot serve is a :class:`NetworkError`.

Every failure of the network or of the Hub (no network, DNS, timeout, 401/403, no such repository
or revision, gated repository) becomes a one-line :class:`NetworkError` naming the id, what happened
and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from nvfp4tools.errors import BackendUnavailable, FormatError, NetworkError, Nvfp4ToolsError, UnsupportedError

from ._dtypes import DTYPE_BITS
from ._safetensors import RawTensor, Source

if TYPE_CHECKING:
    from nvfp4tools.model import Checkpoint

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+?))?(?::(?P<sel>[\w.-]+))?$")
# A path ending like one of these names a file, never a Hub repository.
_FILE_SUFFIXES = (".safetensors", ".gguf", ".json", ".bin", ".pt")
_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub.constants.ENV_VARS_TRUE_VALUES
_DNS_FAILURE = re.compile(r"name resolution|name or service not known|nodename nor servname|getaddrinfo|"
                          r"no address associated|failed to resolve", re.IGNORECASE)
_DOWNLOAD = "or download it and pass its folder"


def _written_like_path(path: str) -> bool:
    repo = path.split("@", 1)[0]
    return (os.path.isabs(path) or path.startswith((".", "~")) or "\\" in path or repo.count("/") > 1
            or path.endswith("/") or path.lower().endswith(_FILE_SUFFIXES) or repo.lower().endswith(_FILE_SUFFIXES))


def looks_local(path: str) -> bool:
    """PATH is written like a file-system path, or its first component is a local folder (so a missing
    one is 'no such file or directory', not a Hub id)."""
    return _written_like_path(path) or os.path.isdir(path.split("/", 1)[0])


def is_hub_id(path: str) -> bool:
    """``org/name`` or ``org/name@rev`` that exists nowhere on disk and is not written like a path."""
    return _HUB_ID.match(path) is not None and not os.path.exists(path) and not looks_local(path)


def local_folder_hint(path: str) -> str | None:
    """For a missing ``org/name`` that is not a Hub id only because ./org is a local folder: say so."""
    first = path.split("/", 1)[0]
    if (_HUB_ID.match(path) is None or os.path.exists(path) or _written_like_path(path)
            or not os.path.isdir(first)):
        return None
    return f"./{first} is a local folder, so {path} is not looked up on the Hugging Face Hub"


def _split(path: str) -> tuple[str, str | None]:
    m = _HUB_ID.match(path)
    assert m is not None
    return m.group("repo"), m.group("rev")


def _selector(path: str) -> str | None:
    """The GGUF file selector of ``org/name:Q4_K_M`` (None without one)."""
    m = _HUB_ID.match(path)
    return m.group("sel") if m else None


def offline_var() -> str | None:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), whichever is set true in the environment now, else None.

    ``huggingface_hub.constants.HF_HUB_OFFLINE`` is computed once at import; this is read per call."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return var
    return None


def not_cached(path: str, var: str, detail: str = "") -> NetworkError:
    return NetworkError(f"{path} is not in the local Hugging Face cache ({var} is set){detail}",
                        hint=f"unset {var} to read its headers from the Hub, {_DOWNLOAD}")


def cache_dir() -> str:
    """The Hugging Face hub cache folder as huggingface_hub derives it, from the environment now:
    HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub."""
    env = os.environ
    d = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not d:
        home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        d = os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(d))


def _missing_weights(folder: str) -> list[str]:
    """What a cached snapshot lacks of the checkpoint's weights ([] when it can be read locally)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return ["the snapshot folder"]
    index_names = [n for n in names if n.endswith(".safetensors.index.json")]
    if index_names:
        index_name = "model.safetensors.index.json" if "model.safetensors.index.json" in index_names else index_names[0]
        try:
            with open(os.path.join(folder, index_name), "rb") as fh:
                shards = set(json.load(fh)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []  # a broken index: the local reader names what is wrong with it
        if not all(isinstance(s, str) for s in shards):
            return []
        return sorted(s for s in shards if not os.path.isfile(os.path.join(folder, s)))
    if any(n.endswith((".safetensors", ".gguf")) and os.path.isfile(os.path.join(folder, n)) for n in names):
        return []
    return ["its weights (no *.safetensors, no *.gguf)"]


def cached_snapshot(path: str) -> tuple[str | None, list[str]]:
    """(snapshot folder of PATH's revision in the local cache, what it lacks of the weights).

    The folder is None when the cache has no snapshot of that revision. Never touches the network."""
    repo, rev = _split(path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, []
    try:
        folder = snapshot_download(repo, revision=rev, cache_dir=cache_dir(), local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, an invalid id, ...
        folder = getattr(e, "snapshot_path", None)  # IncompleteSnapshotError: a partial snapshot
        if not isinstance(folder, str):
            return None, []
    folder = str(folder)
    if not os.path.isdir(folder):
        return None, []
    return folder, _missing_weights(folder)


def read(path: str, format: str | None = None) -> Checkpoint:
    """Read Hub id PATH: from a complete cached snapshot (a full local read), else its remote headers."""
    from . import detect, get

    if _selector(path) is not None or format == "gguf":
        return read_gguf(path)
    folder, missing = cached_snapshot(path)
    if folder is not None and not missing:
        spec = get(format) if format else detect(folder)
        ckpt = spec.read(folder)
        return dataclasses.replace(ckpt, source=path, metadata={**ckpt.metadata, "hub_cache": folder})
    var = offline_var()
    if var is not None:
        if folder is None:
            raise not_cached(path, var)
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise not_cached(path, var, f": the cached snapshot {folder} lacks {shown}")
    try:
        spec = get(format) if format else detect(path)
    except NoSafetensors:
        return read_gguf(path)   # a GGUF repository (read_gguf says so when it holds no GGUF either)
    return spec.read(path)


# -- GGUF repositories ------------------------------------------------------------------------------

_SPLIT_PART = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


def choose_gguf(path: str, files: list[str]) -> list[str]:
    """The GGUF file (a split: all its parts, first first) that ``org/name[:SELECTOR]`` names among a
    repository's FILES. The selector matches a quantization tag in the file name (``Q4_K_M``,
    ``UD-Q4_K_XL``, ``BF16``), case-insensitively, between separators; ``mmproj`` files (vision
    projectors) never count. No selector: the repository must hold exactly one model."""
    sel = _selector(path)
    ggufs = [f for f in files if f.endswith(".gguf") and "mmproj" not in os.path.basename(f).lower()]
    if sel:
        pat = re.compile(rf"(^|[-_./]){re.escape(sel)}([-_.]|$)", re.I)
        ggufs = [f for f in ggufs if pat.search(os.path.basename(f))]
    models: dict[str, list[str]] = {}
    for f in ggufs:
        m = _SPLIT_PART.match(f)
        models.setdefault(m.group("stem") if m else f[: -len(".gguf")], []).append(f)
    repo = _split(path)[0]
    if not models:
        what = f"no GGUF file matching ':{sel}'" if sel else "no GGUF file"
        shown = ", ".join(sorted({_tag(f) for f in files if f.endswith(".gguf")})[:8])
        raise UnsupportedError(f"{path}: the Hub repository {repo} has {what}" + (f" (its GGUFs: {shown})" if shown else
                               " and no model.safetensors"), hint=f"name one: {repo}:Q4_K_M" if shown else None)
    if len(models) > 1:
        raise UnsupportedError(f"{path}: {len(models)} GGUF models match ({', '.join(sorted(models)[:6])})",
                               hint=f"pick one with a selector, e.g. {repo}:{_tag(sorted(models)[0])}")
    return sorted(next(iter(models.values())))


def _tag(name: str) -> str:
    """A file name's last separator-delimited field before .gguf (its quantization, usually)."""
    stem = os.path.basename(name)[: -len(".gguf")]
    m = _SPLIT_PART.match(os.path.basename(name))
    if m:
        stem = m.group("stem")
    return re.split(r"[-.]", stem)[-1]


def read_gguf(path: str) -> Checkpoint:
    """A GGUF in a Hub repository: the cached file when the local cache has it (every split part),
    else its header through HTTP range reads (no tensor data)."""
    from . import gguf_format
    from ._gguf_container import parse_gguf_prefix

    repo, rev = _split(path)
    folder, _ = cached_snapshot(path)
    if folder is not None:
        local = [os.path.relpath(os.path.join(d, n), folder) for d, _, ns in os.walk(folder) for n in ns]
        try:
            chosen = choose_gguf(path, local)
        except UnsupportedError:
            chosen = []
        if chosen and all(os.path.isfile(os.path.join(folder, f)) for f in chosen):
            ckpt = gguf_format.read(os.path.join(folder, chosen[0]))
            return dataclasses.replace(ckpt, source=path, metadata={**ckpt.metadata, "hub_cache": folder})
    var = offline_var()
    if var is not None:
        raise not_cached(path, var, " (GGUF)")
    files = list_files(path)
    chosen = choose_gguf(path, files)
    parsed = []
    for f in chosen:
        size, fetch = remote_file(path, f)
        parsed.append(parse_gguf_prefix(fetch, f, size))
    return gguf_format.from_parsed(path, "", chosen, parsed, remote=True)


def list_files(path: str) -> list[str]:
    """The files of the repository PATH names, at its revision."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise BackendUnavailable("reading a Hub id needs huggingface_hub", hint="pip install huggingface_hub") from None
    repo, rev = _split(path)
    try:
        return list(HfApi().list_repo_files(repo, revision=rev))
    except Exception as e:
        raise network_error(path, e) from e


def remote_file(path: str, name: str) -> tuple[int, Any]:
    """(size, fetch) of file NAME of PATH's repository: fetch(n) returns its first n bytes through one
    HTTP range request (huggingface_hub's HTTP client and auth headers)."""
    from huggingface_hub import get_hf_file_metadata, get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    repo, rev = _split(path)
    url = hf_hub_url(repo, name, revision=rev)
    try:
        size = get_hf_file_metadata(url).size
    except Exception as e:
        raise network_error(path, e) from e
    if not isinstance(size, int) or size <= 0:
        raise FormatError(f"{path}/{name}: the Hub gives no size for it", hint="download the file and pass its path")

    def fetch(n: int) -> bytes:
        try:
            r = get_session().get(url, headers={**build_hf_headers(), "Range": f"bytes=0-{n - 1}"},
                                  follow_redirects=True)
            r.raise_for_status()
        except Exception as e:
            raise network_error(path, e) from e
        return bytes(r.content[:n])

    return size, fetch


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 10 and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _class_names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def network_error(path: str, exc: BaseException) -> NetworkError:
    """One line for what went wrong reading Hub id PATH, from whatever huggingface_hub or its HTTP
    client raised (classes matched by name, so any huggingface_hub / httpx / requests version works)."""
    repo, rev = _split(path)
    chain = _chain(exc)

    def find(*names: str) -> BaseException | None:
        wanted = set(names)
        return next((e for e in chain if _class_names(e) & wanted), None)

    if find("OfflineModeIsEnabled"):
        return not_cached(path, offline_var() or "HF_HUB_OFFLINE")
    if find("GatedRepoError"):
        return NetworkError(f"{path}: gated repository, and this account has not been granted access",
                            hint=f"accept its terms on https://huggingface.co/{repo} and set HF_TOKEN to that "
                                 "account's token")
    if find("RevisionNotFoundError"):
        return NetworkError(f"{path}: no revision '{rev or 'main'}' in {repo} on the Hugging Face Hub",
                            hint="check the branch, tag or commit after '@'")
    if find("RepositoryNotFoundError"):
        return NetworkError(f"{path}: no such repository on the Hugging Face Hub, or it is private",
                            hint="check the id; for a private repository set HF_TOKEN")
    if find("HFValidationError"):
        return NetworkError(f"{path}: not a valid Hugging Face Hub id",
                            hint="check the id; a local checkpoint must be an existing path")
    codes = (getattr(getattr(e, "response", None), "status_code", None) for e in chain)
    status = next((c for c in codes if isinstance(c, int)), None)
    if status == 401:
        return NetworkError(f"{path}: the Hugging Face Hub refused the request with HTTP 401, no valid token",
                            hint="set HF_TOKEN to a valid access token")
    if status == 403:
        return NetworkError(f"{path}: the Hugging Face Hub denied access with HTTP 403",
                            hint=f"set HF_TOKEN to a token with read access to {repo}")
    if status == 404:
        return NetworkError(f"{path}: not found on the Hugging Face Hub, HTTP 404",
                            hint="check the id and the revision")
    if status == 429:
        return NetworkError(f"{path}: the Hugging Face Hub is rate-limiting requests, HTTP 429",
                            hint=f"retry later; set HF_TOKEN for a higher limit; {_DOWNLOAD}")
    if status is not None and status >= 400:
        return NetworkError(f"{path}: the Hugging Face Hub answered HTTP {status}",
                            hint=f"retry later, {_DOWNLOAD}")
    if find("TimeoutException", "Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutError", "timeout"):
        return NetworkError(f"{path}: the Hugging Face Hub did not answer in time, a timeout",
                            hint=f"check your network and retry, {_DOWNLOAD}")
    if any(isinstance(e, socket.gaierror) or _DNS_FAILURE.search(str(e)) for e in chain):
        return NetworkError(f"{path}: cannot resolve the Hugging Face Hub's host name, a DNS failure",
                            hint=f"check your network and DNS, {_DOWNLOAD}")
    if find("ConnectError", "NetworkError", "TransportError", "ConnectionError", "ProxyError"):
        return NetworkError(f"{path}: no connection to the Hugging Face Hub",
                            hint=f"check your network or proxy, {_DOWNLOAD}")
    if find("LocalEntryNotFoundError"):
        return NetworkError(f"{path}: the Hugging Face Hub cannot be reached and the local cache does not have it",
                            hint=f"check your network, {_DOWNLOAD}")
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return NetworkError(f"{path}: reading it from the Hugging Face Hub failed: {type(exc).__name__}: {first}",
                        hint=f"check the id and your network, {_DOWNLOAD}")


class NoSafetensors(UnsupportedError):
    """The repository exists and holds no safetensors weights (it may hold GGUFs)."""


def _no_safetensors(path: str, api: Any, repo: str, rev: str | None) -> Nvfp4ToolsError:
    """The Hub found no safetensors weights: huggingface_hub says so for a missing or private repository
    too (its file checks swallow those), so ask for the repository itself to tell them apart."""
    try:
        api.repo_info(repo, revision=rev)
    except Exception as e:  # no such repository / revision, gated, no network
        return network_error(path, e)
    return NoSafetensors(f"{path}: the Hub repository has no model.safetensors or model.safetensors.index.json")


@lru_cache(maxsize=8)
def fetch(path: str) -> tuple[Source, dict[str, RawTensor], int]:
    """(Source with the JSON side files, raw tensors from the remote headers, total tensor bytes)."""
    var = offline_var()  # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it as set now
    if var is not None:
        raise not_cached(path, var)
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise BackendUnavailable("reading a Hub id needs huggingface_hub", hint="pip install huggingface_hub") from None
    repo, rev = _split(path)
    api = HfApi()
    try:
        meta = api.get_safetensors_metadata(repo, revision=rev)
    except Exception as e:
        if "NotASafetensorsRepoError" in _class_names(e):
            raise _no_safetensors(path, api, repo, rev) from e
        raise network_error(path, e) from e
    root = ""
    side: dict[str, Any] = {}
    for name in ("config.json", "hf_quant_config.json"):
        try:
            local = hf_hub_download(repo, name, revision=rev, cache_dir=cache_dir())
        except Exception as e:
            names = _class_names(e)
            if "EntryNotFoundError" in names and "LocalEntryNotFoundError" not in names:
                continue  # the repository has no such file
            raise network_error(path, e) from e
        root = os.path.dirname(local)
        side[name] = local
    src = Source(root, path, sorted(meta.files_metadata))
    for name, local in side.items():
        try:
            with open(local, "rb") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            raise FormatError(f"{path}/{name}: cannot read it ({e})") from e
        if name == "config.json":
            src.config = data
        else:
            src.hf_quant_config = data
    raw: dict[str, RawTensor] = {}
    total = 0
    for fname, fm in meta.files_metadata.items():
        for tname, ti in fm.tensors.items():
            if ti.dtype not in DTYPE_BITS:
                raise FormatError(f"{path}/{fname}: tensor '{tname}' has unknown dtype {ti.dtype!r}")
            b, e = ti.data_offsets
            raw[tname] = RawTensor(tname, ti.dtype, tuple(ti.shape), fname, b, e - b)
            total += e - b
    return src, raw, total
