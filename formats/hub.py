"""Hugging Face Hub ids (``org/name`` or ``org/name@revision``): headers fetched with
``huggingface_hub`` (``HfApi.get_safetensors_metadata`` reads each shard's header with HTTP Range
requests; ``hf_hub_download`` fetches config.json / hf_quant_config.json). No tensor bytes are
downloaded, so per-tensor scale values are not checked remotely (inspect says so).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

from nvfp4tools.errors import BackendUnavailable, FormatError

from ._safetensors import DTYPE_BITS, RawTensor, Source

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def is_hub_id(path: str) -> bool:
    return not os.path.exists(path) and _HUB_ID.match(path) is not None and not path.startswith((".", "/"))


def _split(path: str) -> tuple[str, str | None]:
    m = _HUB_ID.match(path)
    assert m is not None
    return m.group("repo"), m.group("rev")


@lru_cache(maxsize=8)
def fetch(path: str) -> tuple[Source, dict[str, RawTensor], int]:
    """(Source with the JSON side files, raw tensors from the remote headers, total tensor bytes)."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
    except ImportError:
        raise BackendUnavailable("reading a Hub id needs huggingface_hub", hint="pip install huggingface_hub") from None
    repo, rev = _split(path)
    api = HfApi()
    try:
        meta = api.get_safetensors_metadata(repo, revision=rev)
    except RepositoryNotFoundError:
        raise FormatError(f"{path}: no such Hub repository (or it is private: set HF_TOKEN)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read safetensors headers from the Hub ({type(e).__name__}: {e})",
                          hint="check the id and your network; or download the checkpoint and pass its folder") from None
    root = ""
    side: dict[str, Any] = {}
    for name in ("config.json", "hf_quant_config.json"):
        try:
            local = hf_hub_download(repo, name, revision=rev)
            root = os.path.dirname(local)
            side[name] = local
        except (EntryNotFoundError, HfHubHTTPError, OSError):
            continue
    import json
    src = Source(root, path, sorted(meta.files_metadata))
    for name, local in side.items():
        with open(local, "rb") as fh:
            data = json.load(fh)
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
