"""Exclude / ignore / targets patterns of quantization configs: matched in linear time (a lazily built
DFA over Python's own regex parser), so a pattern from a downloaded checkpoint cannot hang a reader;
and the findings about entries that match nothing or are not evaluated."""

from __future__ import annotations

import bisect
import fnmatch
import re
from typing import Any, Callable, Iterable

from nvfp4tools.errors import FormatError
from nvfp4tools.model import Finding

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
