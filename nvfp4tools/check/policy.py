"""The gate's policy: a versioned TOML file (or ``[tool.nvfp4tools]`` in a pyproject.toml), read
into typed data and validated before anything is checked. Every error names the file, the line
and the key, what was expected and what was found (docs/commands/check.md documents every key).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from nvfp4tools.errors import UsageError

POLICY_VERSION = 1
SEVERITIES = ("error", "warning", "info")


class PolicyError(UsageError):
    """A policy file that cannot be used as written (exit 2, like any bad option)."""


@dataclass(frozen=True)
class Target:
    """One deployment the checkpoint must serve: estimate's settings plus what it must reach."""

    name: str
    gpu: str
    engine: str = "vllm"
    vram: str | None = None
    context: int | None = None
    kv_dtype: str = "auto"
    tp: int = 1
    max_seqs: int | None = None
    mem_fraction: float | None = None
    swa_ratio: float | None = None
    max_batched_tokens: int | None = None
    text_only: bool = False
    fits: bool = True
    min_kv_tokens: int | None = None
    min_concurrency: float | None = None
    min_decode_tokens_per_s: float | None = None
    line: int | None = None


@dataclass(frozen=True)
class Policy:
    source: str = "built-in defaults"
    version: int = POLICY_VERSION
    fail_on_unchecked: bool = False
    # findings
    fail_on: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    severity: dict[str, str] = field(default_factory=dict)
    deep: bool = True    # the gate reads every block scale and code unless told not to
    # quantization
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    min_share_quantized: float | None = None
    input_scales: tuple[str, ...] = ()
    # deployment targets
    targets: tuple[Target, ...] = ()
    # numerics
    verify: bool = True
    sample: int | None = 16
    tokens: int = 16
    seed: int = 0
    backends: tuple[str, ...] = ("ref",)
    allow_missing_backends: bool = False
    against: str | None = None
    min_sqnr_db: dict[str, float] = field(default_factory=dict)
    max_output_error: dict[str, float] = field(default_factory=dict)
    max_unmatched: int | None = 0
    lines: dict[tuple, int] = field(default_factory=dict, compare=False, repr=False)

    def where(self, *key: Any) -> str:
        """'FILE:LINE: a.b' for KEY (the nearest enclosing key whose line is known)."""
        return _where(self.source, self.lines, key)


# -- reading ---------------------------------------------------------------------------------

def load(path: str) -> Policy:
    """Read and validate the policy in PATH (a policy TOML, or a pyproject.toml's [tool.nvfp4tools])."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not os.path.isfile(path):
        raise PolicyError(f"{path}: no such policy file", hint="pass --policy FILE, or omit it for the defaults")
    with open(path, "rb") as fh:
        raw = fh.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not valid TOML: {e}") from None
    lines = key_lines(text)
    if os.path.basename(path) == "pyproject.toml":
        tool = data.get("tool", {}).get("nvfp4tools")
        if tool is None:
            raise PolicyError(f"{path}: no [tool.nvfp4tools] table", hint="put the policy keys under [tool.nvfp4tools]")
        data = tool
        lines = {k[2:]: v for k, v in lines.items() if k[:2] == ("tool", "nvfp4tools")}
    return from_dict(data, path, lines)


def from_dict(data: dict[str, Any], source: str = "built-in defaults", lines: dict[tuple, int] | None = None) -> Policy:
    lines = lines or {}
    r = _Reader(source, lines)
    version = r.get(data, ("version",), int, required=True)
    if version != POLICY_VERSION:
        raise PolicyError(f"{r.where(('version',))}: policy version {version} is not supported",
                          hint=f"this nvfp4tools reads version {POLICY_VERSION}")
    r.only(data, (), {"version", "fail-on-unchecked", "findings", "quantization", "targets", "numerics"})
    kw: dict[str, Any] = {"source": source, "lines": lines, "version": version}
    kw["fail_on_unchecked"] = r.get(data, ("fail-on-unchecked",), bool, default=False)

    f = r.table(data, ("findings",))
    r.only(f, ("findings",), {"fail-on", "ignore", "severity", "deep"})
    kw["fail_on"] = tuple(r.get(f, ("findings", "fail-on"), _str_list, default=[]))
    kw["ignore"] = tuple(r.get(f, ("findings", "ignore"), _str_list, default=[]))
    sev = r.table(f, ("findings", "severity"))
    for code, v in sev.items():
        if v not in SEVERITIES:
            raise PolicyError(f"{r.where(('findings', 'severity', code))}: severity {v!r} for {code!r}",
                              hint=f"one of {', '.join(SEVERITIES)}")
    kw["severity"] = dict(sev)
    kw["deep"] = r.get(f, ("findings", "deep"), bool, default=True)

    q = r.table(data, ("quantization",))
    r.only(q, ("quantization",), {"roles", "min-share-quantized", "input-scales"})
    from nvfp4tools.roles import ROLES

    roles = {}
    for role, v in r.table(q, ("quantization", "roles")).items():
        if role not in ROLES:
            raise PolicyError(f"{r.where(('quantization', 'roles', role))}: unknown role {role!r}",
                              hint=f"roles: {', '.join(ROLES)}")
        roles[role] = tuple([v] if isinstance(v, str) else r.get(q["roles"], ("quantization", "roles", role), _str_list))
    kw["roles"] = roles
    kw["min_share_quantized"] = r.get(q, ("quantization", "min-share-quantized"), _fraction, default=None)
    scales = tuple(r.get(q, ("quantization", "input-scales"), _str_list, default=[]))
    for role in scales:
        if role not in ROLES:
            raise PolicyError(f"{r.where(('quantization', 'input-scales'))}: unknown role {role!r}",
                              hint=f"roles: {', '.join(ROLES)}")
    kw["input_scales"] = scales

    targets = data.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise PolicyError(f"{r.where(('targets',))}: 'targets' must be an array of tables ([[targets]])")
    kw["targets"] = tuple(_target(r, t, i) for i, t in enumerate(targets))
    names = [t.name for t in kw["targets"]]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PolicyError(f"{source}: two targets are named {sorted(dup)[0]!r}", hint="give each target its own name")

    n = r.table(data, ("numerics",))
    r.only(n, ("numerics",), {"verify", "sample", "tokens", "seed", "backends", "allow-missing-backends", "against",
                              "min-sqnr-db", "max-output-error", "max-unmatched"})
    kw["verify"] = r.get(n, ("numerics", "verify"), bool, default=True)
    sample = r.get(n, ("numerics", "sample"), lambda v: v if v == "all" else _positive_int(v), default=16)
    kw["sample"] = None if sample == "all" else sample
    kw["tokens"] = r.get(n, ("numerics", "tokens"), _positive_int, default=16)
    kw["seed"] = r.get(n, ("numerics", "seed"), int, default=0)
    kw["backends"] = tuple(r.get(n, ("numerics", "backends"), _str_list, default=["ref"]))
    kw["allow_missing_backends"] = r.get(n, ("numerics", "allow-missing-backends"), bool, default=False)
    against = r.get(n, ("numerics", "against"), str, default=None)
    if against is not None and source != "built-in defaults" and not os.path.isabs(against):
        against = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(source)), against))
    kw["against"] = against
    # a numerics table that turns checking off, or names no backend to check with, cannot also ask
    # for the checks: said here rather than dropped in silence by the gate
    if not kw["backends"] and kw["verify"]:
        raise PolicyError(f"{r.where(('numerics', 'backends'))}: no backend to verify with",
                          hint='name one (backends = ["ref"] runs on any machine), or set verify = false')
    if against is not None and not kw["verify"]:
        raise PolicyError(f"{r.where(('numerics', 'against'))}: an original to check against, but verify = false",
                          hint="remove against, or set verify = true")
    kw["min_sqnr_db"] = _role_numbers(r, n, ("numerics", "min-sqnr-db"), ROLES)
    kw["max_output_error"] = _role_numbers(r, n, ("numerics", "max-output-error"), ROLES)
    kw["max_unmatched"] = r.get(n, ("numerics", "max-unmatched"), _non_negative_int, default=0)
    return Policy(**kw)


_TARGET_KEYS = {
    "name": str, "gpu": str, "engine": str, "vram": str, "context": int, "kv-dtype": str, "tp": int,
    "max-seqs": int, "mem-fraction": float, "swa-ratio": float, "max-batched-tokens": int, "text-only": bool,
    "fits": bool, "min-kv-tokens": int, "min-concurrency": float, "min-decode-tokens-per-s": float,
}
ENGINES = ("vllm", "sglang", "llamacpp")


def _target(r: "_Reader", t: dict[str, Any], i: int) -> Target:
    key = ("targets", i)
    r.only(t, key, set(_TARGET_KEYS))
    kw: dict[str, Any] = {}
    for k, typ in _TARGET_KEYS.items():
        if k in t:
            conv: Callable[[Any], Any] = {int: int, float: _number, str: str, bool: bool}[typ]
            kw[k.replace("-", "_")] = r.get(t, key + (k,), conv)
    if "gpu" not in kw:
        raise PolicyError(f"{r.where(key)}: targets[{i}] has no 'gpu'", hint="e.g. gpu = \"l40s\" (nvfp4tools gpus)")
    kw.setdefault("name", f"{kw['gpu']}-{kw.get('engine', 'vllm')}")
    if kw.get("engine", "vllm") not in ENGINES:
        raise PolicyError(f"{r.where(key + ('engine',))}: engine {kw['engine']!r}", hint=f"one of {', '.join(ENGINES)}")
    return Target(**kw, line=r.lines.get(key))


def _role_numbers(r: "_Reader", tbl: dict[str, Any], key: tuple, roles: tuple[str, ...]) -> dict[str, float]:
    v = tbl.get(key[-1])
    if v is None:
        return {}
    if not isinstance(v, dict):
        return {"*": r.get(tbl, key, _number)}
    out = {}
    for role, x in v.items():
        if role != "*" and role not in roles:
            raise PolicyError(f"{r.where(key + (role,))}: unknown role {role!r}", hint=f"roles: *, {', '.join(roles)}")
        out[role] = r.get(v, key + (role,), _number)
    return out


# -- value checks ----------------------------------------------------------------------------

def _str_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    raise ValueError("a string or a list of strings")


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("a number")
    return float(v)


def _fraction(v: Any) -> float:
    x = _number(v)
    if not 0 <= x <= 1:
        raise ValueError("a number from 0 to 1")
    return x


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("an integer >= 1")
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("an integer >= 0")
    return v


class _Reader:
    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source, self.lines = source, lines

    def where(self, key: tuple) -> str:
        return _where(self.source, self.lines, key)

    def table(self, d: dict[str, Any], key: tuple) -> dict[str, Any]:
        v = d.get(key[-1], {})
        if not isinstance(v, dict):
            raise PolicyError(f"{self.where(key)}: {_dotted(key)} must be a table, found {type(v).__name__}")
        return v

    def only(self, d: dict[str, Any], key: tuple, allowed: set[str]) -> None:
        for k in d:
            if k not in allowed:
                raise PolicyError(f"{self.where(key + (k,))}: unknown key {_dotted(key + (k,))!r}",
                                  hint=f"known here: {', '.join(sorted(allowed))} (docs/commands/check.md)")

    def get(self, d: dict[str, Any], key: tuple, conv: Callable[[Any], Any], *, default: Any = None,
            required: bool = False) -> Any:
        name = key[-1]
        if name not in d:
            if required:
                raise PolicyError(f"{self.source}: missing key {_dotted(key)!r}",
                                  hint=f"start the policy with {_dotted(key)} = {POLICY_VERSION}")
            return default
        v = d[name]
        if conv is bool and not isinstance(v, bool):
            raise PolicyError(f"{self.where(key)}: {_dotted(key)} = {v!r}, expected true or false")
        if conv is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise PolicyError(f"{self.where(key)}: {_dotted(key)} = {v!r}, expected an integer")
        if conv is str and not isinstance(v, str):
            raise PolicyError(f"{self.where(key)}: {_dotted(key)} = {v!r}, expected a string")
        try:
            return conv(v)
        except ValueError as e:
            raise PolicyError(f"{self.where(key)}: {_dotted(key)} = {v!r}, expected {e}") from None


def _dotted(key: tuple) -> str:
    out = ""
    for k in key:
        out += f"[{k}]" if isinstance(k, int) else (("." if out else "") + str(k))
    return out


def _where(source: str, lines: dict[tuple, int], key: tuple) -> str:
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return f"{source}:{lines[key[:n]]}: {_dotted(key)}"
    return f"{source}: {_dotted(key)}"


# -- line numbers ----------------------------------------------------------------------------
# tomllib returns values only; errors must still say which line to fix. Keys are found by a scan
# of the text that follows TOML's structure: [table] and [[array]] headers, dotted and quoted keys.

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_*-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_*-]+))*)\s*=")
_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_*-]+)")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(m.group(1) if m.group(1) is not None else m.group(2) if m.group(2) is not None else m.group(3)
                 for m in _PART.finditer(text))


def key_lines(text: str) -> dict[tuple, int]:
    """{key path: 1-based line} for every table header and key in TOML TEXT; arrays of tables get
    their index in the path (("targets", 0, "gpu"))."""
    lines: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    current: tuple = ()
    for i, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            path = _split_key(h.group(2))
            if h.group(1) == "[[":
                idx = counts.get(path, 0)
                counts[path] = idx + 1
                current = path + (idx,)
            else:
                current = path
            lines.setdefault(current, i)
            continue
        k = _KEY.match(line)
        if k:
            path = current + _split_key(k.group(1))
            lines.setdefault(path, i)
            inline = line[k.end():]
            for m in re.finditer(r"([A-Za-z0-9_*-]+|\"[^\"]*\")\s*=", inline):
                lines.setdefault(path + _split_key(m.group(1)), i)
    return lines
