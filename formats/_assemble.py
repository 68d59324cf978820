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
from typing import Any, Callable, Iterable, Mapping

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


# -- exclude / ignore / targets patterns ------------------------------------------------------------
# Patterns come from the checkpoint, so matching them must not be a way to hang the reader. Python's
# re backtracks: ``re:([\w.]+)+!`` takes minutes on one module name. Two ways out were weighed:
#   * the third-party ``regex`` package with a timeout: full syntax, but a new dependency, and a
#     timeout makes the answer depend on the machine's speed (a checkpoint reads differently on a
#     loaded CI runner);
#   * a linear-time engine (RE2's approach): the pattern is parsed by Python's own parser
#     (re._parser, so the syntax and the meaning of every construct are Python's) and matched by a
#     lazily built DFA, so the work is bounded by the name length times a fixed state budget.
# nvfp4tools takes the second: deterministic, no dependency. Its cost is the constructs a DFA cannot
# express (backreferences, lookarounds, atomic groups, possessive repeats, \b, case-insensitive
# flags): a pattern using one is not evaluated; it matches nothing and inspect says so in a
# finding. Real exclude/ignore lists use literals, ".*", classes, alternation and "$".
try:  # Python >= 3.11
    from re import _constants as _C, _parser as _P
except ImportError:  # Python 3.10
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _P  # type: ignore[no-redef]

MAX_NFA_STATES = 20_000   # per pattern set: a {m,n} repeat is unrolled, so "x{1000}{1000}" stops here
MAX_DFA_WORK = 2_000_000  # NFA states summed over the DFA states built (bounds time and memory)
MAX_AUTOMATON_PATTERNS = 4_096  # regex / wildcard entries (plain names and "prefix*" cost nothing)
_ALLOWED_FLAGS = _C.SRE_FLAG_UNICODE | _C.SRE_FLAG_DOTALL | _C.SRE_FLAG_VERBOSE
_CHAR, _EPS, _SPLIT, _BEGIN, _END, _END_STRING, _MATCH = range(7)


class Unsupported(Exception):
    """A regex construct the linear-time engine does not evaluate (the message names it)."""


class PatternTooComplex(FormatError):
    """A pattern set whose automaton would exceed the state budget."""


def _category(cat: Any) -> Callable[[str], bool]:
    name = cat.name
    base = {"CATEGORY_DIGIT": str.isdecimal, "CATEGORY_SPACE": str.isspace,
            "CATEGORY_WORD": lambda c: c.isalnum() or c == "_"}   # Python re's Unicode meanings
    for key, fn in base.items():
        if name == key:
            return fn
        if name == key.replace("CATEGORY_", "CATEGORY_NOT_"):
            return lambda c, fn=fn: not fn(c)
    raise Unsupported(f"character category {name}")


def _charset(items: list) -> Callable[[str], bool]:
    negate = False
    chars: set[str] = set()
    ranges: list[tuple[int, int]] = []
    cats: list[Callable[[str], bool]] = []
    for op, av in items:
        name = op.name
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            chars.add(chr(av))
        elif name == "RANGE":
            ranges.append(av)
        elif name == "CATEGORY":
            cats.append(_category(av))
        else:
            raise Unsupported(f"{name} in a character class")

    def test(c: str) -> bool:
        hit = c in chars or any(lo <= ord(c) <= hi for lo, hi in ranges) or any(f(c) for f in cats)
        return hit != negate
    return test


class _NFA:
    """Thompson NFA over parallel lists; states are built back to front (each knows its successor)."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.pred: list[Callable[[str], bool] | None] = []
        self.out1: list[int] = []
        self.out2: list[int] = []
        self.tag: list[int] = []   # _MATCH: which pattern matched

    def add(self, kind: int, out1: int = -1, out2: int = -1, pred=None, tag: int = -1) -> int:
        if len(self.kind) >= MAX_NFA_STATES:
            raise PatternTooComplex(f"more than {MAX_NFA_STATES:,} automaton states")
        self.kind.append(kind)
        self.pred.append(pred)
        self.out1.append(out1)
        self.out2.append(out2)
        self.tag.append(tag)
        return len(self.kind) - 1

    def seq(self, items: Any, nxt: int, dotall: bool) -> int:
        for op, av in reversed(list(items)):
            nxt = self.item(op.name, av, nxt, dotall)
        return nxt

    def item(self, name: str, av: Any, nxt: int, dotall: bool) -> int:
        if name == "LITERAL":
            ch = chr(av)
            return self.add(_CHAR, nxt, pred=ch.__eq__)
        if name == "NOT_LITERAL":
            ch = chr(av)
            return self.add(_CHAR, nxt, pred=ch.__ne__)
        if name == "ANY":
            return self.add(_CHAR, nxt, pred=(lambda c: True) if dotall else "\n".__ne__)
        if name == "IN":
            return self.add(_CHAR, nxt, pred=_charset(av))
        if name == "BRANCH":
            alts = [self.seq(sub, nxt, dotall) for sub in av[1]]
            start = alts[-1]
            for a in reversed(alts[:-1]):
                start = self.add(_SPLIT, a, start)
            return start
        if name == "SUBPATTERN":
            _, add_flags, del_flags, sub = av
            if (add_flags | del_flags) & ~_ALLOWED_FLAGS:
                raise Unsupported("an inline flag other than (?s) / (?x)")
            dot = (dotall or bool(add_flags & _C.SRE_FLAG_DOTALL)) and not del_flags & _C.SRE_FLAG_DOTALL
            return self.seq(sub, nxt, dot)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):  # greedy or lazy: the same set of matches
            lo, hi, sub = av
            if hi == _C.MAXREPEAT:
                loop = self.add(_SPLIT, -1, nxt)
                self.out1[loop] = self.seq(sub, loop, dotall)
                start = loop
            else:
                start = nxt
                for _ in range(hi - lo):
                    start = self.add(_SPLIT, self.seq(sub, start, dotall), nxt)
            for _ in range(lo):
                start = self.seq(sub, start, dotall)
            return start
        if name == "AT":
            at = av.name
            if at in ("AT_BEGINNING", "AT_BEGINNING_STRING"):
                return self.add(_BEGIN, nxt)
            if at == "AT_END":
                return self.add(_END, nxt)
            if at == "AT_END_STRING":
                return self.add(_END_STRING, nxt)
            raise Unsupported(f"the anchor {at}")
        raise Unsupported({"GROUPREF": "a backreference", "GROUPREF_EXISTS": "a conditional group",
                           "ASSERT": "a lookaround", "ASSERT_NOT": "a negative lookaround",
                           "ATOMIC_GROUP": "an atomic group", "POSSESSIVE_REPEAT": "a possessive repeat"
                           }.get(name, name))


def _glob_regex(pat: str) -> str:
    """A shell wildcard as a regex in the engine's subset: fnmatch.translate's meaning (``*`` spans
    dots, ``[!...]`` negates, an unclosed ``[`` is literal), without the atomic groups it emits."""
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pat[j] == "!":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
            else:
                cls = fnmatch.translate(pat[i - 1:j + 1])[len("(?s:"):-len(")\\Z")]
                out.append("[^\\s\\S]" if cls == "(?!)" else cls)   # an empty range matches nothing
                i = j + 1
        else:
            out.append(re.escape(c))
    return "(?s:" + "".join(out) + ")\\Z"


def _regex_of(pattern: str) -> str:
    """The regex a pattern means: ``re:`` a regex, a wildcard its translation, else the exact name."""
    if pattern.startswith("re:"):
        return pattern[3:]
    if _WILD.search(pattern):
        return _glob_regex(pattern)
    return re.escape(pattern) + "\\Z"


class Automaton:
    """Patterns compiled into one NFA, matched (``re.match``: anchored at the start) through a DFA
    built lazily from the names it sees, so each name costs one step per character whatever the
    patterns. Patterns the engine cannot express are listed in ``unsupported`` and match nothing."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.nfa = nfa = _NFA()
        self.patterns = list(patterns)
        self.unsupported: dict[str, str] = {}
        starts = []
        for i, p in enumerate(self.patterns):
            try:
                tree = _P.parse(_regex_of(p))
                if tree.state.flags & ~_ALLOWED_FLAGS:
                    raise Unsupported("a flag other than (?s) / (?x)")
                starts.append(nfa.seq(tree, nfa.add(_MATCH, tag=i), bool(tree.state.flags & _C.SRE_FLAG_DOTALL)))
            except Unsupported as e:
                self.unsupported[p] = str(e)
            except (re.error, RecursionError, OverflowError, ValueError) as e:
                self.unsupported[p] = f"not a valid regular expression ({e})"
        self._start_nfa = starts
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._next: list[dict[str, int]] = []
        self._hits: list[frozenset[int]] = []       # patterns matched on reaching this state
        self._end_hits: list[frozenset[int] | None] = []  # ... and with "$" at the end of the name
        self._work = 0
        self.start = self._state(self._closure(starts, begin=True))

    def _closure(self, seeds: Iterable[int], begin: bool) -> frozenset[int]:
        """SEEDS and every state reachable without a character; end anchors are kept as states."""
        kind, out1, out2 = self.nfa.kind, self.nfa.out1, self.nfa.out2
        seen: set[int] = set()
        stack = list(seeds)
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            k = kind[s]
            if k == _SPLIT:
                stack.append(out1[s])
                stack.append(out2[s])
            elif k == _EPS or (k == _BEGIN and begin):
                stack.append(out1[s])
        return frozenset(seen)

    def _state(self, states: frozenset[int]) -> int:
        sid = self._ids.get(states)
        if sid is None:
            self._work += len(states) + 1
            if self._work > MAX_DFA_WORK:
                raise PatternTooComplex(f"more than {MAX_DFA_WORK:,} automaton steps")
            sid = self._ids[states] = len(self._sets)
            self._sets.append(states)
            self._next.append({})
            kind, tag = self.nfa.kind, self.nfa.tag
            self._hits.append(frozenset(tag[s] for s in states if kind[s] == _MATCH))
            self._end_hits.append(None)
        return sid

    def _step(self, sid: int, c: str) -> int:
        kind, pred, out1 = self.nfa.kind, self.nfa.pred, self.nfa.out1
        nxt = self._state(self._closure([out1[s] for s in self._sets[sid] if kind[s] == _CHAR and pred[s](c)],
                                        begin=False))
        self._next[sid][c] = nxt
        return nxt

    def _at_end(self, sid: int, before_newline: bool) -> frozenset[int]:
        """Patterns matched when the name ends here ("$"; BEFORE_NEWLINE: only a final "\\n" is left,
        where "$" but not "\\Z" holds)."""
        hits = self._end_hits[sid] if not before_newline else None
        if hits is None:
            kind, out1, tag = self.nfa.kind, self.nfa.out1, self.nfa.tag
            ok = (_END,) if before_newline else (_END, _END_STRING)
            seen: set[int] = set()
            stack = [s for s in self._sets[sid] if kind[s] in ok]
            found = set()
            while stack:   # through end anchors and epsilons only: no character is left to consume
                s = stack.pop()
                if s in seen:
                    continue
                seen.add(s)
                k = kind[s]
                if k == _MATCH:
                    found.add(tag[s])
                elif k == _SPLIT:
                    stack += [out1[s], self.nfa.out2[s]]
                elif k == _EPS or k in ok:
                    stack.append(out1[s])
            hits = frozenset(found)
            if not before_newline:
                self._end_hits[sid] = hits
        return hits

    def _run(self, name: str, first: bool) -> set[int]:
        sid, nexts, hits = self.start, self._next, self._hits
        found: set[int] = set(hits[sid])
        if found and first:
            return found
        last = len(name) - 1
        for i, c in enumerate(name):
            if i == last and c == "\n":
                found |= self._at_end(sid, True)
            nxt = nexts[sid].get(c)
            sid = self._step(sid, c) if nxt is None else nxt
            if hits[sid]:
                found |= hits[sid]
                if first:
                    return found
            elif not self._sets[sid]:   # no pattern can match any longer
                return found
        return found | self._at_end(sid, False)

    def match(self, name: str) -> bool:
        """Whether any pattern matches NAME (re.match: at its start)."""
        return bool(self._run(name, True))

    def which(self, name: str) -> set[int]:
        """Indices of the patterns that match NAME."""
        return self._run(name, False)


def _prefixes(patterns: Iterable[str]) -> tuple[frozenset[str], frozenset[str], list[str]]:
    """(exact names, "prefix*" prefixes, the rest): the first two need no automaton."""
    exact, prefixes, rest = set(), set(), []
    for p in patterns:
        if p.startswith("re:"):
            rest.append(p)
        elif not _WILD.search(p):
            exact.add(p)
        elif p.endswith("*") and not _WILD.search(p[:-1]):
            prefixes.add(p[:-1])
        else:
            rest.append(p)
    return frozenset(exact), frozenset(prefixes), rest


class PatternSet:
    """Exclude/ignore/targets patterns, compiled once.

    ``re:`` prefixes are regular expressions matched at the start of the name (compressed-tensors
    ``match_name`` uses ``re.match``); patterns with ``*``/``?``/``[`` are shell wildcards in which
    ``*`` also spans dots (ModelOpt ``exclude_modules`` are fnmatch patterns, e.g.
    ``model.vision_tower*``); anything else must equal the module name. LABEL names the list in
    errors (``hf_quant_config.json quantization.exclude_modules``).
    """

    def __init__(self, patterns: Iterable[str], label: str = "patterns") -> None:
        self.patterns = tuple(p for p in patterns if isinstance(p, str))
        self.label = label
        # Real exclude lists are mostly plain names and "prefix*" (ModelOpt writes one
        # "model.language_model.layers.N.router*" per layer): a set lookup per name, and one per
        # distinct prefix length, whatever the number of entries.
        self._exact, prefixes, rest = _prefixes(self.patterns)
        self._prefixes = prefixes
        self._prefix_lengths = sorted({len(p) for p in prefixes})
        if len(rest) > MAX_AUTOMATON_PATTERNS:
            raise FormatError(f"{label}: {len(rest):,} regex or wildcard entries (at most "
                              f"{MAX_AUTOMATON_PATTERNS:,}; plain names and 'prefix*' entries are not limited)")
        try:
            self._auto = Automaton(rest) if rest else None
        except PatternTooComplex as e:
            raise PatternTooComplex(f"{label}: patterns too complex to match in bounded time ({e.message})") from None
        self.unsupported = dict(self._auto.unsupported) if self._auto else {}
        # Without a digit in any remaining pattern, a match cannot depend on which digits a name
        # holds (".", r"\d", r"\w" and "[^x]" treat all digits alike), so one answer per name
        # template serves 128 experts x 30 layers; a digit ("[0-3]", "{2}") turns this off.
        self._by_template: dict[bytes, bool] | None = (
            {} if not any(c in "0123456789" for p in rest for c in p) else None)

    def _prefixed(self, module: str) -> bool:
        pre = self._prefixes
        for n in self._prefix_lengths:
            if n > len(module):
                return False
            if module[:n] in pre:
                return True
        return False

    def matches(self, module: str) -> bool:
        if module in self._exact or (self._prefixes and self._prefixed(module)):
            return True
        auto = self._auto
        if auto is None:
            return False
        try:
            cache = self._by_template
            if cache is None:
                return auto.match(module)
            key = module.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_HASH)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = auto.match(module)
            return hit
        except PatternTooComplex as e:
            raise PatternTooComplex(f"{self.label}: patterns too complex to match in bounded time "
                                    f"({e.message})") from None

    def unmatched(self, modules: list[str]) -> list[str]:
        """The patterns matching none of MODULES (sorted), nor an ancestor of one for exact names."""
        ordered = modules
        hit: set[str] = set()
        for p in self._exact:
            i = bisect.bisect_left(ordered, p)  # exact: a module, or an ancestor of one
            if i < len(ordered) and (ordered[i] == p or ordered[i].startswith(p + ".")):
                hit.add(p)
        for p in self._prefixes:
            i = bisect.bisect_left(ordered, p)
            if i < len(ordered) and ordered[i].startswith(p):
                hit.add(p + "*")
        if self._auto is not None:
            auto = self._auto
            found: set[int] = set()
            names: Iterable[str] = ordered
            if self._by_template is not None:   # one name per digit template (see __init__)
                names = {m.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_HASH): m for m in ordered}.values()
            try:
                for m in names:
                    found |= auto.which(m)
                    if len(found) == len(auto.patterns):
                        break
            except PatternTooComplex as e:
                raise PatternTooComplex(f"{self.label}: patterns too complex to match in bounded time "
                                        f"({e.message})") from None
            hit.update(auto.patterns[i] for i in found)
        return [p for p in self.patterns if p not in hit]


_WILD = re.compile(r"[*?\[]")
_DIGITS_TO_HASH = bytes.maketrans(b"0123456789", b"##########")


def match_pattern(module: str, pattern: str) -> bool:
    """One pattern against one module name (see :class:`PatternSet`)."""
    return PatternSet((pattern,)).matches(module)


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
            if static_act:
                return schemes.INT8
            # compressed-tensors int-quantized with group scales [out, in/group] (a GGUF Q8_0 written back:
            # group 32, fp16 scales); one scale column is per channel
            cols = bs.stored_shape[-1] if len(bs.stored_shape) >= 2 else 1
            group = data.stored_shape[-1] // cols if cols > 1 and data.stored_shape else None
            return schemes.int_group(8, group, True) if group else schemes.INT8_A16
        return schemes.UNQUANTIZED_BY_DTYPE.get(d, schemes.INT_PLAIN)

    def _logical_int_shape(self, module: str, parts: dict[PartRole, TensorPart]) -> tuple[int, ...]:
        data = parts["data"]
        if not data.stored_shape:
            raise FormatError(f"{data.file}: tensor '{data.key}' is 0-d, expected packed [out, in/{32 // self.int_bits}] "
                              f"int32 words")
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
                # gpt-oss's fused experts as ModelOpt exports them keep transformers' [E, in, out]:
                # codes [E, in/2, out], block scales [E, in/16, out] (see TensorPart.transposed)
                t_shape = s[:-2] + (s[-1], s[-2] * 2) if len(s) == 3 else None
                if bs.stored_shape != want and t_shape is not None and \
                        bs.stored_shape == s[:-2] + (-(-t_shape[-1] // scheme.block_size), s[-1]):
                    return t_shape
                if bs.stored_shape != want:
                    raise FormatError(
                        f"{bs.file}: tensor '{bs.key}' has shape {list(bs.stored_shape)}, expected {list(want)} "
                        f"for {scheme.name} block_size={scheme.block_size} over in_features={shape[-1]}")
            return shape
        if scheme.quantized and scheme.element.startswith("int") and data.stored_dtype == "I32":
            # (an unquantized I32 buffer, INT_PLAIN, is not packed: its stored shape is its shape)
            return self._logical_int_shape(module, parts)
        if scheme.element == "int4" and data.stored_dtype == "U8":
            if not s:
                raise FormatError(f"{data.file}: tensor '{data.key}' is 0-d, expected packed [out/2, in] uint8")
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
                if n not in (1, lead) or (n > 1 and p.stored_shape[0] != lead):
                    # one per expert means expert-major ([E], or [E, 1, ...]): a [1, E] scale would be
                    # read as one value shared by every expert
                    raise FormatError(f"{p.file}: tensor '{p.key}' has shape {list(p.stored_shape)} "
                                      f"({n} values), expected a single value" +
                                      (f" or [{lead}] (one per expert)" if lead > 1 else ""))

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
            part = new(TensorPart, (sfx.role, name, file, offset, nbytes, dtype, shape, sfx.stored_as, False))
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
            if len(shape_stored) < 2 and role in _MATRIX_ROLES and (ri.proj is not None or role in _MATRIX_ROLES[4:]) \
                    and (name.endswith(".weight") or (name == module and len(shape_stored) >= 1)) \
                    and not name.endswith("bias"):   # (a stray 0-d scalar next to a projection is no weight)
                # a projection, embedding or lm_head weight is a matrix; every consumer indexes [out, in]
                raise FormatError(f"{data.file}: tensor '{data.key}' ({role}) has shape {list(shape_stored)}, "
                                  "expected a matrix [out, in] (or [experts, out, in])")
            # gpt-oss stores its experts' biases 2-D ([E, out]): biases are never quantized linears
            linear_like = len(shape_stored) >= 2 and role != "embedding" and role != "norm" and not name.endswith("bias")
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
                transposed = scheme.element == "e2m1" and len(shape) == 3 and \
                    shape[-1] != data.stored_shape[-1] * 2
                extra = [r for r in parts if r in _QUANT_PARTS]
                if extra and scheme.name in ("int", "bool"):
                    # quantization parts beside data of no quantized layout (an F4, U16 or BOOL weight
                    # with a block scale): nothing reads that combination consistently
                    raise FormatError(f"{data.file}: tensor '{data.key}' is stored {data.stored_dtype} beside "
                                      f"{', '.join(parts[r].key for r in extra)}: not a quantized layout nvfp4tools "
                                      "reads", hint="the header's dtype is wrong, or the scales belong elsewhere")
                bs = parts.get("block_scale")
                if bs is not None and shape and scheme.element.startswith("int") and data.stored_dtype in ("I32", "U8") \
                        and (len(bs.stored_shape) != len(shape) or bs.stored_shape[:-1] != shape[:-1]):
                    # one scale per group of a row: [*leading, out, groups] (a 0-d or transposed scale
                    # would be read as another layout by every consumer; e2m1 scales: _logical_shape)
                    raise FormatError(f"{bs.file}: tensor '{bs.key}' has shape {list(bs.stored_shape)}, expected "
                                      f"{list(shape[:-1]) + ['groups']} for {scheme.name} over {list(shape)}")
                if scheme.quantized and (not shape or 0 in shape):
                    # nothing to dequantize or multiply: a quantized layer has [out, in] elements
                    raise FormatError(f"{data.file}: tensor '{data.key}' is stored {scheme.name} with logical shape "
                                      f"{list(shape)}, expected a non-empty [out, in] (or [experts, out, in])")
                fused = shape[0] if (len(shape) == 3 and role == "experts") else None
                info = make_info(name, shape, scheme, _marked(stored) if transposed else stored, role, ri.proj,
                                 ri.layer, ri.stack, ri.expert, fused)
                self._check_scalars(info)
                if "shape" not in parts:  # compressed-tensors' stored shapes are read per tensor
                    memo[sig] = (scheme, shape, fused, expected, transposed)  # keeps id(expected) unique
            else:
                scheme, shape, fused, _, transposed = hit
                info = make_info(name, shape, scheme, _marked(stored) if transposed else stored, role, ri.proj,
                                 ri.layer, ri.stack, ri.expert, fused)
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
        _check_experts(out)
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


def _marked(parts: tuple[TensorPart, ...]) -> tuple[TensorPart, ...]:
    """A transposed 4-bit tensor's codes and block scales, marked so every array reader swaps them."""
    return tuple(p._replace(transposed=True) if p.role in ("data", "block_scale") else p for p in parts)


def _check_experts(out: Mapping[str, TensorInfo]) -> None:
    """The per-expert weights of one layer and projection share a shape: engines (and convert's
    GGUF writer) stack them into one [E, out, in] array, so a differing member is a broken file."""
    first: dict[tuple[str, str | None, str], TensorInfo] = {}
    for t in out.values():
        if t.expert is None or t.role != "experts":
            continue
        key = (t.name.split(f".experts.{t.expert}.")[0], t.proj, t.name.rpartition(".")[2])
        f = first.setdefault(key, t)
        if f.shape != t.shape:
            raise FormatError(f"{t.parts[0].file}: tensor '{t.name}' has shape {list(t.shape)} but '{f.name}' has "
                              f"{list(f.shape)}; the experts of one layer must share a shape")


_DATA = Suffix("", "data")
_MATRIX_ROLES = LINEAR_ROLES + ("embedding", "lm_head")   # (LINEAR_ROLES has four entries)
_QUANT_PARTS = ("block_scale", "global_scale", "input_scale", "zero_point", "g_idx")
_SIG = itemgetter(0, 5, 6)  # a part's (role, stored_dtype, stored_shape)
_ROLE_ORDER = {"data": 0, "block_scale": 1, "global_scale": 2, "input_scale": 3, "zero_point": 4,
               "g_idx": 5, "shape": 6, "kv_scale": 7}


def unmatched_patterns(patterns: Iterable[str], tensor_names: Iterable[str], tied_embeddings: bool,
                       label: str, params: Iterable[str] = ()) -> list[Finding]:
    """Exclude/ignore entries that match no module (or ancestor of a module) in the checkpoint, and
    entries the pattern engine does not evaluate (see :class:`Automaton`)."""
    # modules, plus logical parameters stored without ".weight" (fused experts, position tables)
    ordered = sorted({n.rpartition(".")[0] for n in tensor_names} | set(params))
    ps = PatternSet(patterns, label)
    out: list[Finding] = []
    for pat in ps.unmatched(ordered):
        if pat in ("lm_head", "re:.*lm_head", "re:lm_head") and tied_embeddings:
            continue  # tied: no lm_head tensor exists, the pattern is harmless
        if _CLASS_NAME.fullmatch(pat):
            continue  # a class name (e.g. "Linear"): cannot be checked from tensor names
        why = ps.unsupported.get(pat)
        if why is not None:
            out.append(Finding("pattern_not_evaluated", "warning",
                               f"{label} entry {pat[:200]!r} is not evaluated: {why} (nvfp4tools matches patterns "
                               "in linear time; see docs/hostile-input.md); it is treated as matching nothing"))
            continue
        out.append(Finding("pattern_matches_nothing", "warning",
                           f"{label} entry {pat[:200]!r} matches no module in the checkpoint "
                           "(a typo, or a name from another model revision)"))
    return out


_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
