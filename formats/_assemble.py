"""Group the raw tensors of a safetensors checkpoint into logical tensors with their scales.

ModelOpt and compressed-tensors store the same NVFP4 bytes under different names and scale
conventions; each format module passes its suffix table and a config-derived expectation,
and everything else (scheme from stored dtypes, logical shapes, shape checks, findings about
config vs. stored reality) is shared here.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import struct
from operator import itemgetter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from nvfp4tools import schemes
from nvfp4tools.errors import FormatError
from nvfp4tools.model import Finding, PartRole, QuantScheme, StoredAs, TensorInfo, TensorPart
from nvfp4tools.roles import LINEAR_ROLES, classify

from ._safetensors import RawTensor


@dataclass(frozen=True)
class Suffix:
    suffix: str
    role: PartRole
    stored_as: StoredAs = "value"


# Expectation hook: what the quantization config says this module should be (None = left
# unquantized by the config), and whether activations are quantized statically.
Expect = Callable[[str], QuantScheme | None]

KV_SUFFIXES = ("k_scale", "v_scale", "q_scale", "k_zero_point", "v_zero_point", "k_bias", "v_bias")


def _compile(pattern: str) -> re.Pattern[str] | None:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error:
            return None
    if any(c in pattern for c in "*?["):
        return re.compile(fnmatch.translate(pattern))
    return re.compile(re.escape(pattern) + r"\Z")


class PatternSet:
    """Exclude/ignore patterns, compiled once.

    ``re:`` prefixes are regular expressions matched at the start of the name (compressed-tensors
    ``match_name`` uses ``re.match``); patterns with ``*``/``?`` are shell wildcards in which
    ``*`` also spans dots (ModelOpt ``exclude_modules`` are fnmatch patterns, e.g.
    ``model.vision_tower*``); anything else must equal the module name.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p for p in patterns if isinstance(p, str))
        self.compiled = [(p, _compile(p)) for p in self.patterns]
        # Real exclude lists are mostly plain names and "prefix*" (ModelOpt writes one
        # "model.language_model.layers.N.router*" per layer): a set lookup and one C-level
        # str.startswith replace a 30-way regex alternation run ~12,000 times.
        self._exact = frozenset(p for p in self.patterns if not p.startswith("re:") and not _WILD.search(p))
        self._prefixes = tuple(p[:-1] for p in self.patterns
                               if not p.startswith("re:") and p.endswith("*") and not _WILD.search(p[:-1]))
        rest = [(p, c) for p, c in self.compiled
                if c is not None and p not in self._exact and not (p.endswith("*") and p[:-1] in self._prefixes)]
        self._rest = re.compile("|".join(f"(?:{c.pattern})" for _, c in rest)) if rest else None
        # Without a digit in any remaining pattern, a match cannot depend on which digits a name
        # holds (".", r"\d", r"\w" and "[^x]" treat all digits alike), so one answer per name
        # template serves 128 experts x 30 layers; a digit ("[0-3]", "{2}") turns this off.
        self._by_template: dict[bytes, bool] | None = (
            {} if not any(c in "0123456789" for p, _ in rest for c in p) else None)

    def matches(self, module: str) -> bool:
        if module in self._exact or (self._prefixes and module.startswith(self._prefixes)):
            return True
        rx = self._rest
        if rx is None:
            return False
        cache = self._by_template
        if cache is None:
            return rx.match(module) is not None
        key = module.encode().translate(_DIGITS_TO_HASH)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = rx.match(module) is not None
        return hit


_WILD = re.compile(r"[*?\[]")
_DIGITS_TO_HASH = bytes.maketrans(b"0123456789", b"##########")


def match_pattern(module: str, pattern: str) -> bool:
    """One pattern against one module name (see :class:`PatternSet`)."""
    c = _compile(pattern)
    return c is not None and c.match(module) is not None


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _part(raw: RawTensor, sfx: Suffix) -> TensorPart:
    return TensorPart(sfx.role, raw.name, raw.file, raw.offset, raw.nbytes, raw.dtype, raw.shape, sfx.stored_as)


class Assembler:
    """Builds TensorInfos and findings for one checkpoint."""

    def __init__(self, raw: Mapping[str, RawTensor], suffixes: tuple[Suffix, ...], expect: Expect,
                 read_bytes: Callable[[TensorPart], bytes], config_label: str, int_bits: int = 4,
                 requires_input_scale: bool = False, has_config: bool = True) -> None:
        self.raw = raw
        self.suffixes = tuple(sorted(suffixes, key=lambda s: -len(s.suffix)))
        self.expect = expect
        self.read_bytes = read_bytes
        self.config_label = config_label
        self.int_bits = int_bits
        self.requires_input_scale = requires_input_scale  # static activation scales are declared
        self.has_config = has_config  # False: nothing declares what should be quantized
        self.findings: list[Finding] = []

    # -- scheme and shape -------------------------------------------------------------------
    def _scheme(self, module: str, parts: dict[PartRole, TensorPart], expected: QuantScheme | None) -> QuantScheme:
        data = parts["data"]
        bs = parts.get("block_scale")
        d, b = data.stored_dtype, (bs.stored_dtype if bs else None)
        static_act = "input_scale" in parts
        act_expected = expected.activations if expected else None
        if d == "U8" and (b == "F8_E4M3" or (b is None and expected is not None and expected.element == "e2m1"
                                              and expected.block_size == 16)):
            return schemes.NVFP4 if (static_act or act_expected == "nvfp4") else schemes.NVFP4_A16
        if d == "U8" and b in ("F8_E8M0", "U8"):
            return schemes.MXFP4
        if d == "I32" and b is not None:
            group = None
            shape = self._logical_int_shape(module, parts)
            if b is not None and bs.stored_shape and shape[-1]:
                cols = bs.stored_shape[-1]
                group = shape[-1] // cols if cols else None
            return schemes.int_group(self.int_bits, group, "zero_point" not in parts, "g_idx" in parts)
        if d == "U8" and b in ("F16", "BF16", "F32"):
            # ModelOpt W4A16_AWQ: signed int4 packed along the output dim (pack_int4_in_uint8).
            cols = bs.stored_shape[-1] if bs.stored_shape else 0
            group = data.stored_shape[-1] // cols if cols else None
            return schemes.int_group(4, group, True)
        if d == "F8_E4M3":
            return schemes.FP8 if (static_act or act_expected == "fp8") else schemes.FP8_A16
        if d == "I8" and b is not None:
            return schemes.INT8 if static_act else schemes.INT8_A16
        return schemes.UNQUANTIZED_BY_DTYPE.get(d, schemes.INT_PLAIN)

    def _logical_int_shape(self, module: str, parts: dict[PartRole, TensorPart]) -> tuple[int, ...]:
        data = parts["data"]
        shp = parts.get("shape")
        if shp is not None and shp.stored_dtype in ("I64", "I32") and _prod(shp.stored_shape) == len(data.stored_shape):
            try:
                raw = self.read_bytes(shp)
            except FormatError:
                raw = None
        else:
            raw = None
        if raw is not None:
            fmt = "<%d%s" % (_prod(shp.stored_shape), "q" if shp.stored_dtype == "I64" else "i")  # type: ignore[union-attr]
            vals = struct.unpack(fmt, raw)
            if len(vals) == len(data.stored_shape) and all(v >= 0 for v in vals):
                expect_cols = -(-vals[-1] * self.int_bits // 32)
                if vals[:-1] != data.stored_shape[:-1] or expect_cols != data.stored_shape[-1]:
                    raise FormatError(f"{data.file}: tensor '{shp.key}' says shape {list(vals)} but "
                                      f"'{data.key}' is {list(data.stored_shape)} (expected last dim {expect_cols} "
                                      f"for int{self.int_bits} packed in int32)")
                return tuple(vals)
        return data.stored_shape[:-1] + (data.stored_shape[-1] * 32 // self.int_bits,)

    def _logical_shape(self, module: str, scheme: QuantScheme, parts: dict[PartRole, TensorPart]) -> tuple[int, ...]:
        data = parts["data"]
        s = data.stored_shape
        if scheme.element == "e2m1":
            if not s:
                raise FormatError(f"{data.file}: tensor '{data.key}' is 0-d, expected packed [out, in/2] uint8")
            shape = s[:-1] + (s[-1] * 2,)
            bs = parts.get("block_scale")
            if bs is not None and scheme.block_size:
                want = shape[:-1] + (-(-shape[-1] // scheme.block_size),)
                if bs.stored_shape != want:
                    raise FormatError(
                        f"{bs.file}: tensor '{bs.key}' has shape {list(bs.stored_shape)}, expected {list(want)} "
                        f"for {scheme.name} block_size={scheme.block_size} over in_features={shape[-1]}")
            return shape
        if scheme.element.startswith("int") and data.stored_dtype == "I32":
            return self._logical_int_shape(module, parts)
        if scheme.element == "int4" and data.stored_dtype == "U8":
            return (s[0] * 2,) + s[1:]
        return s

    def _check_scalars(self, info: TensorInfo) -> None:
        """Per-tensor scales must hold one value (or one per fused expert)."""
        lead = info.shape[0] if len(info.shape) == 3 else 1
        for p in info.parts:
            if p.role in ("global_scale", "input_scale", "kv_scale"):
                n = _prod(p.stored_shape)
                if p.stored_dtype not in ("F32", "F16", "BF16", "F64"):
                    raise FormatError(f"{p.file}: tensor '{p.key}' has dtype {p.stored_dtype}, expected F32 "
                                      f"for a per-tensor scale")
                if n not in (1, lead):
                    raise FormatError(f"{p.file}: tensor '{p.key}' has shape {list(p.stored_shape)} "
                                      f"({n} values), expected a single value" +
                                      (f" or {lead} (one per expert)" if lead > 1 else ""))

    # -- main ---------------------------------------------------------------------------------
    def build(self) -> dict[str, TensorInfo]:
        # Pass 1: each stored tensor becomes a TensorPart in its module's group, keyed by role.
        groups: dict[str, dict[PartRole, TensorPart]] = {}
        kv: list[tuple[str, RawTensor]] = []
        loose: list[TensorPart] = []
        by_last = {sfx.suffix: sfx for sfx in self.suffixes}
        fused_sfx = [sfx for sfx in self.suffixes if sfx.role != "data"]
        kv_set = set(KV_SUFFIXES)
        raw_all = self.raw
        new = tuple.__new__  # TensorPart(...) without the NamedTuple's Python-level __new__ frame
        for name, raw in raw_all.items():
            module, _, last = name.rpartition(".")
            sfx = by_last.get(last)
            if sfx is None:
                if last in kv_set:
                    kv.append((module, raw))
                    continue
                # Fused 3-D parameters carry no ".weight": experts.gate_up_proj + experts.gate_up_proj_weight_scale
                if "_" in last:
                    for f in fused_sfx:
                        if last.endswith("_" + f.suffix) and name[: -len(f.suffix) - 1] in raw_all:
                            module, sfx = name[: -len(f.suffix) - 1], f
                            break
                if sfx is None:
                    module, sfx = name, _DATA
            _, dtype, shape, file, offset, nbytes = raw
            part = new(TensorPart, (sfx.role, name, file, offset, nbytes, dtype, shape, sfx.stored_as))
            g = groups.get(module)
            if g is None:
                groups[module] = {sfx.role: part}
            elif sfx.role in g:
                loose.append(part)
            else:
                g[sfx.role] = part

        # Pass 2: one TensorInfo per group. Scheme, logical shape and the scalar checks depend
        # only on the stored dtypes/shapes and the expectation: 128 experts x 30 layers share a
        # handful of signatures, so they are worked out once per signature.
        out: dict[str, TensorInfo] = {}
        memo: dict[tuple, tuple] = {}
        ordering: dict[tuple, Callable] = {}  # roles in stored order -> parts in canonical order
        orphans: list[str] = []
        not_as_configured: dict[str, list[TensorInfo]] = {}
        quantized_but_excluded: list[TensorInfo] = []
        missing: list[tuple[TensorInfo, str]] = []
        expect = self.expect
        make_info = TensorInfo.fast
        for module, parts in groups.items():
            data = parts.get("data")
            if data is None:
                for p in parts.values():
                    orphans.append(p.key)
                    loose.append(p)
                continue
            key = data.key
            if key == module:  # a parameter stored without a ".weight"-style suffix
                name = key
            elif key.endswith((".weight", ".weight_packed")):
                name = module + ".weight"
            else:
                name = key
            ri = classify(name)
            role = ri.role
            shape_stored = data.stored_shape
            linear_like = len(shape_stored) >= 2 and role != "embedding" and role != "norm"
            expected = (expect(name[:-7] if name.endswith(".weight") else name) if linear_like else None)
            roles = tuple(parts)
            order = ordering.get(roles)
            if order is None:
                ranked = sorted(range(len(roles)), key=lambda i: _ROLE_ORDER[roles[i]])
                order = ordering[roles] = (itemgetter(*ranked) if len(ranked) > 1
                                           else (lambda vals: (vals[0],)))
            stored = order(tuple(parts.values()))
            sig = (id(expected), role == "experts", tuple(map(_SIG, stored)))
            hit = memo.get(sig)
            if hit is None:
                scheme = self._scheme(module, parts, expected)
                shape = tuple(self._logical_shape(module, scheme, parts))
                fused = shape[0] if (len(shape) == 3 and role == "experts") else None
                info = make_info(name, shape, scheme, stored, role, ri.proj, ri.layer, ri.stack, ri.expert, fused)
                self._check_scalars(info)
                if "shape" not in parts:  # compressed-tensors' stored shapes are read per tensor
                    memo[sig] = (scheme, shape, fused, expected)  # keeps id(expected) unique
            else:
                scheme, shape, fused, _ = hit
                info = make_info(name, shape, scheme, stored, role, ri.proj, ri.layer, ri.stack, ri.expert, fused)
            out[name] = info
            if scheme.quantized:
                if expected is None and linear_like and self.has_config:
                    quantized_but_excluded.append(info)
                if scheme.global_scale and "global_scale" not in parts:
                    missing.append((info, "global scale (weight_scale_2 / weight_global_scale)"))
                if scheme.block_size and "block_scale" not in parts:
                    missing.append((info, "block scale (weight_scale)"))
                if (self.requires_input_scale and expected is not None and expected.activations
                        and "input_scale" not in parts):
                    missing.append((info, "input scale (static activation scale)"))
            elif expected is not None and linear_like:
                not_as_configured.setdefault(role, []).append(info)

        # KV-cache scales: ModelOpt puts them on k_proj/v_proj, compressed-tensors on the attention module.
        for owner, raw in kv:
            which = raw.name.rsplit(".", 1)[-1][0]  # "k", "v" or "q"
            target = None
            for cand in (owner + ".weight", f"{owner}.{which}_proj.weight", f"{owner}.k_proj.weight"):
                if cand in out:
                    target = cand
                    break
            part = TensorPart("kv_scale", raw.name, raw.file, raw.offset, raw.nbytes, raw.dtype, raw.shape, "multiplier")
            if target is None:
                loose.append(_part(raw, _DATA))
                continue
            t = out[target]
            out[target] = TensorInfo(t.name, t.shape, t.scheme, t.parts + (part,), t.role, t.proj, t.layer,
                                     t.stack, t.expert, t.n_experts_fused)

        for p in loose:
            ri = classify(p.key)
            scheme = schemes.UNQUANTIZED_BY_DTYPE.get(p.stored_dtype, schemes.INT_PLAIN)
            out.setdefault(p.key, TensorInfo(
                p.key, p.stored_shape, scheme, (p._replace(role="data", stored_as="value"),), ri.role, ri.proj,
                ri.layer, ri.stack, ri.expert))

        self._findings(orphans, not_as_configured, quantized_but_excluded, missing)
        return out

    def _findings(self, orphans, not_as_configured, quantized_but_excluded, missing) -> None:
        if orphans:
            self.findings.append(Finding(
                "orphan_scale", "error",
                f"{len(orphans)} scale tensors have no weight next to them (e.g. '{orphans[0]}')",
                tensor=orphans[0]))
        for role, infos in not_as_configured.items():
            n = sum(i.n_elements for i in infos)
            sev = "error" if role in LINEAR_ROLES else "warning"
            extra = ""
            if role == "experts":
                extra = (" This is the known ModelOpt failure on fused 3-D experts (Model-Optimizer #1173, "
                         "fixed by PR #1219): the experts stayed BF16 and the checkpoint is ~3x larger than intended.")
            self.findings.append(Finding(
                "not_quantized_as_configured", sev,
                f"{len(infos)} {role} tensors ({n:,} parameters) are stored {infos[0].scheme.name} but "
                f"{self.config_label} says they should be quantized (e.g. '{infos[0].name}').{extra}",
                tensor=infos[0].name))
        if quantized_but_excluded:
            i = quantized_but_excluded[0]
            self.findings.append(Finding(
                "quantized_but_excluded", "error",
                f"{len(quantized_but_excluded)} tensors are stored quantized but {self.config_label} excludes "
                f"them (e.g. '{i.name}', {i.scheme.name}); engines will load them as unquantized and fail",
                tensor=i.name))
        seen: set[str] = set()
        for info, what in missing:
            key = what
            count = sum(1 for _, w in missing if w == what)
            if key in seen:
                continue
            seen.add(key)
            self.findings.append(Finding(
                "missing_scale", "error",
                f"{count} quantized tensors have no {what} (e.g. '{info.name}', {info.scheme.name})",
                tensor=info.name))


_DATA = Suffix("", "data")
_SIG = itemgetter(0, 5, 6)  # a part's (role, stored_dtype, stored_shape)
_ROLE_ORDER = {"data": 0, "block_scale": 1, "global_scale": 2, "input_scale": 3, "zero_point": 4,
               "g_idx": 5, "shape": 6, "kv_scale": 7}


def unmatched_patterns(patterns: Iterable[str], tensor_names: Iterable[str], tied_embeddings: bool,
                       label: str, params: Iterable[str] = ()) -> list[Finding]:
    """Exclude/ignore entries that match no module (or ancestor of a module) in the checkpoint."""
    # modules, plus logical parameters stored without ".weight" (fused experts, position tables)
    ordered = sorted({n.rpartition(".")[0] for n in tensor_names} | set(params))

    def first_with_prefix(prefix: str) -> int:
        return bisect.bisect_left(ordered, prefix)

    out: list[Finding] = []
    for pat, rx in PatternSet(patterns).compiled:
        if pat in ("lm_head", "re:.*lm_head", "re:lm_head") and tied_embeddings:
            continue  # tied: no lm_head tensor exists, the pattern is harmless
        if re.fullmatch(r"[A-Z][A-Za-z0-9]*", pat):
            continue  # a class name (e.g. "Linear"): cannot be checked from tensor names
        if rx is None:
            hit = False
        elif not pat.startswith("re:") and not any(c in pat for c in "*?["):
            i = first_with_prefix(pat)  # exact: a module, or an ancestor of one
            hit = i < len(ordered) and (ordered[i] == pat or ordered[i].startswith(pat + "."))
        else:
            if pat.startswith("re:"):
                m = re.match(r"[A-Za-z0-9_]+(?:\\?\.[A-Za-z0-9_]+)*", pat[3:])
                prefix = m.group(0).replace("\\", "") if m and not re.match(r"[*+?{]", pat[3 + m.end():]) else ""
            else:
                prefix = re.split(r"[*?\[]", pat, maxsplit=1)[0]
            i = first_with_prefix(prefix)
            hit = False
            while i < len(ordered) and ordered[i].startswith(prefix):
                if rx.match(ordered[i]):
                    hit = True
                    break
                i += 1
        if not hit:
            out.append(Finding("pattern_matches_nothing", "warning",
                               f"{label} entry {pat!r} matches no module in the checkpoint "
                               "(a typo, or a name from another model revision)"))
    return out
