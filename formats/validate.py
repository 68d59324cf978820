"""Hostile-input checks at the reader boundary (stdlib only).

Three things are decided here, before any reader computes with what a checkpoint says:

* **which files may be opened**: regular files inside the checkpoint folder (or, for a snapshot in
  the Hugging Face cache, inside that repository's cache folder, where its links point). A link
  that leaves the folder, a FIFO, a device or a folder in a file's place is refused before it is
  opened, so nothing outside the checkpoint is read and no read can block;
* **how JSON side files are read**: bounded in size, nesting depth and integer length, so a
  ``config.json`` that is ``/dev/zero``, a 2 GB file or ``[[[[...`` ends in one line, not a hang,
  a MemoryError or a RecursionError;
* **what each config key may hold**: the tables below declare, for every key a reader uses, its
  type and range (each bound with its reason). :func:`check` walks a parsed file against its table
  and raises one :class:`FormatError` naming the file, the key and the bad value. Readers and
  everything after them (arch, estimate, convert) may then trust those keys' types and ranges.

Keys a table does not name are only held to strict JSON (no NaN, Infinity or lone surrogate), so
unknown or future keys cannot make a checkpoint unreadable; ``null`` is accepted wherever a key is
accepted (transformers writes ``"head_dim": null`` for "derive it") and means the key is absent.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from nvfp4tools.errors import FormatError

# -- bounds (each with its reason) ----------------------------------------------------------------
# Llama 3.1 405B, the largest dense decoder with a public config, has 126 layers, hidden_size
# 16,384, intermediate_size 53,248 and 128 heads; every bound below is far above any published
# model and far below what would let a per-layer or per-head allocation exhaust memory.
# ~8x 126 layers. Per-layer work scales with it: arch builds one entry per layer, and convert --to
# gguf asks gguf-py for its tensor-name map of every layer (measured: 10,000 layers took 6.3 s and
# 640 MB in that call alone; 1,024 take under a second)
MAX_LAYERS = 1_024
MAX_WIDTH = 1 << 22            # hidden/intermediate widths: ~78x 53,248
MAX_HEADS = 1 << 16            # 512x 128 heads
MAX_HEAD_DIM = 1 << 16         # 128x the widest head (Gemma 4 full layers: 512)
MAX_EXPERTS = 1 << 16          # 128x the most routed experts published (Qwen3-Next: 512)
MAX_VOCAB = (1 << 31) - 1      # token ids are int32 in the engines (llama.cpp llama_token)
MAX_POSITIONS = (1 << 31) - 1  # positions are int32 in the engines (llama.cpp llama_pos)
MAX_BITS = 64                  # QuantizationArgs.num_bits: 2..16 in compressed-tensors' presets
MAX_LIST = 1 << 16             # architectures, layer_types (<= MAX_LAYERS), per-group lists
# exclude/ignore/targets lists: one entry per excluded module of the largest model the bounds
# above allow (1,024 layers x ~100 modules, experts included) still fits; each entry is at most a
# tensor name long.
MAX_PATTERNS = 100_000
MAX_NAME_CHARS = 4096          # tensor, module and shard names (real ones are under ~200)
MAX_ENTRIES = 1 << 22          # index weight_map / ModelOpt quantized_layers: 45x DeepSeek-V3's 92,000
JSON_MAX_BYTES = 64 << 20      # a JSON side file; DeepSeek-V3's index (92,000 tensors) is under 10 MB
JSON_MAX_DEPTH = 64            # real configs nest ~5 deep (rope_parameters inside text_config)
_SHOW_CHARS = 60               # a bad value is quoted at most this long in a message


# -- files ------------------------------------------------------------------------------------------
def allowed_roots(root: str) -> list[str]:
    """Where a checkpoint's files may really live: its folder, and for a snapshot in the Hugging Face
    cache (``models--ORG--NAME/snapshots/REV``, whose files are links into ``../../blobs``) that
    repository's cache folder."""
    real_root = os.path.realpath(root)
    roots = [real_root]
    snapshots = os.path.dirname(os.path.abspath(root))
    repo = os.path.dirname(snapshots)
    if os.path.basename(snapshots) == "snapshots" and os.path.basename(repo).startswith(("models--", "datasets--")):
        roots.append(os.path.realpath(repo))
    return roots


def inside(real: str, roots: list[str]) -> bool:
    """Whether resolved path REAL is one of ROOTS or below one."""
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def member(root: str, rel: str, *, trusted: bool = False) -> str:
    """The real path of checkpoint file REL under ROOT, refused unless it is a regular file inside
    the checkpoint folder (:func:`allowed_roots`). TRUSTED: REL is the file the user named on the
    command line, so a link is followed wherever it goes; it must still be a regular file."""
    check_name(rel, rel, "file name")
    full = os.path.join(root, rel)
    real = os.path.realpath(full)
    if not trusted and not inside(real, allowed_roots(root)):
        raise FormatError(f"{rel}: a link to {real}, outside the checkpoint folder; refusing to read it",
                          hint="copy the file into the checkpoint folder if it belongs to it")
    try:
        st = os.stat(real)
    except OSError as e:
        raise FormatError(f"{rel}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{rel}: not a regular file ({_file_kind(st.st_mode)}); refusing to read it",
                          hint="a checkpoint holds regular files only")
    return real


def open_member(root: str, rel: str, *, trusted: bool = False) -> int:
    """A read-only descriptor of :func:`member` (ROOT, REL). Opened non-blocking and checked again
    after opening, so a FIFO swapped in after the check still cannot block the read."""
    real = member(root, rel, trusted=trusted)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise FormatError(f"{rel}: cannot open: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(f"{rel}: not a regular file; refusing to read it")
    return fd


def _file_kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a plain file"


def read_json(root: str, name: str, *, trusted: bool = False) -> Any | None:
    """Side file NAME of the checkpoint at ROOT parsed as bounded JSON, or None when there is none."""
    if not os.path.lexists(os.path.join(root, name)):
        return None
    fd = open_member(root, name, trusted=trusted)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(JSON_MAX_BYTES + 1)
    if len(raw) > JSON_MAX_BYTES:
        raise FormatError(f"{name}: larger than {JSON_MAX_BYTES >> 20} MiB, not a checkpoint's JSON side file",
                          hint="the file is corrupt or not what its name says")
    return parse_json(raw, name)


def parse_json(raw: bytes | str, label: str) -> Any:
    """RAW as strict JSON, with every parser failure (syntax, encoding, depth, integer length, NaN or
    Infinity) one FormatError."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise FormatError(f"{label}: JSON nested too deeply to parse") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{label}: not valid UTF-8 JSON ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{label}: not valid JSON ({e})") from None
    except ValueError:
        # Python refuses to parse integers of more than sys.get_int_max_str_digits() (4,300) digits
        raise FormatError(f"{label}: holds an integer with thousands of digits, not a checkpoint's JSON") from None
    _walk(data, label)
    return data


def _walk(data: Any, label: str) -> None:
    """Refuse nesting deeper than JSON_MAX_DEPTH and any NaN or Infinity, iteratively (a recursive
    walk would itself overflow on what it measures). Python's json reads NaN and Infinity, which
    JSON (RFC 8259) does not have; every consumer downstream, --format json included, would have to
    guess what they meant, so the file is refused naming the key."""
    if (isinstance(data, float) and not math.isfinite(data)) or (isinstance(data, str) and not utf8(data)):
        raise FormatError(f"{label}: is {show(data)}, not a JSON value nvfp4tools reads")
    stack: list[tuple[Any, int, tuple | None]] = [(data, 1, None)] if isinstance(data, (dict, list)) else []
    while stack:   # (value, depth, (parent chain, key))
        v, d, chain = stack.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v)
        if d > JSON_MAX_DEPTH:
            raise FormatError(f"{label}: JSON nested more than {JSON_MAX_DEPTH} levels deep")
        for k, x in items:
            if isinstance(x, (dict, list)):
                stack.append((x, d + 1, (chain, k)))
            elif isinstance(x, float) and not math.isfinite(x):
                raise FormatError(f"{label}: {_chain_path((chain, k))} is {show(x)}; JSON has no NaN or Infinity",
                                  hint=f"fix or remove it in {label.split(':')[0]}")
            elif isinstance(x, str) and not (x.isascii() or utf8(x)):
                # "\ud800": RFC 8259 8.2 leaves lone surrogates undefined; they cannot be printed or written
                raise FormatError(f"{label}: {_chain_path((chain, k))} is {show(x)}, a string with a lone surrogate")
            if isinstance(k, str) and not (k.isascii() or utf8(k)):
                raise FormatError(f"{label}: key {show(k)} under {_chain_path(chain) or 'the top level'} holds a "
                                  "lone surrogate")


def _chain_path(chain: tuple | None) -> str:
    keys: list[str] = []
    while chain is not None:
        chain, k = chain
        keys.append(f"[{k}]" if isinstance(k, int) else ("." + _key(k)))
    return "".join(reversed(keys)).lstrip(".")


# -- names --------------------------------------------------------------------------------------------
def check_name(name: Any, file: str, what: str = "tensor name") -> None:
    """A tensor, module or shard name: a printable string of at most MAX_NAME_CHARS characters.
    Control characters, NUL and lone surrogates reach file systems and terminals badly; no real
    checkpoint has them."""
    if not isinstance(name, str):
        raise FormatError(f"{file}: {what} {show(name)} is not a string")
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        why = ("is empty" if not name else f"is {len(name):,} characters long (at most {MAX_NAME_CHARS:,})"
               if len(name) > MAX_NAME_CHARS else "holds a control character, NUL or lone surrogate")
        raise FormatError(f"{file}: {what} {show(name)} {why}")


def show(v: Any) -> str:
    """A bad value for a one-line message: repr, shortened; huge integers by their size."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"an integer of {v.bit_length():,} bits"
    try:
        text = repr(v) if not isinstance(v, (dict, list)) else json.dumps(v, allow_nan=True, default=str)[:200]
    except (ValueError, RecursionError):
        text = f"a {type(v).__name__}"
    return text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS - 3] + "..."


# -- schema -------------------------------------------------------------------------------------------
Kind = Literal["int", "number", "str", "bool", "scalar", "list", "dict"]
_KIND_TEXT = {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true or false",
              "scalar": "a string, number or boolean", "list": "a list", "dict": "an object"}


@dataclass(frozen=True)
class Rule:
    """What one key may hold. Bounds are inclusive; for a list they bound each element (``items``)."""

    kind: Kind
    lo: float | None = None
    hi: float | None = None
    max_items: int = MAX_LIST                    # a list's or an object's entries
    items: "Rule | None" = None                  # a list's every element
    fields: Mapping[str, "Rule"] | None = None   # an object's known keys
    values: "Rule | None" = None                 # an object's every value
    alt: "Rule | None" = None                    # also accepted (a GGUF key: one value or one per layer)

    def expect(self) -> str:
        text = _KIND_TEXT[self.kind]
        if self.items is not None:
            text += f" of at most {self.max_items:,}, each {self.items.expect()}"
        elif self.kind == "str" and self.hi is not None:
            text += f" of at most {self.hi:,} characters"
        elif self.lo is not None and self.hi is not None:
            text += f" in {self.lo:,}..{self.hi:,}"
        elif self.lo is not None:
            text += f" >= {self.lo}"
        if self.alt is not None:
            text += f", or {self.alt.expect()}"
        return text


def _int(lo: int, hi: int) -> Rule:
    return Rule("int", lo, hi)


def _num(lo: float | None = None, hi: float | None = None) -> Rule:
    return Rule("number", lo, hi)


_STR = Rule("str", hi=MAX_NAME_CHARS)
_BOOL = Rule("bool")
_SCALAR = Rule("scalar")
_DICT = Rule("dict", max_items=MAX_ENTRIES)
_PATTERNS = Rule("list", max_items=MAX_PATTERNS, items=Rule("str", hi=MAX_NAME_CHARS))
_STR_LIST = Rule("list", items=Rule("str", hi=MAX_NAME_CHARS))

# RoPE parameters (transformers rope_scaling / rope_parameters; llama.cpp's converter reads the same)
ROPE: dict[str, Rule] = {
    "rope_type": _STR, "type": _STR, "factor": _num(0), "rope_theta": _num(0),
    "partial_rotary_factor": _num(0, 1), "original_max_position_embeddings": _int(0, MAX_POSITIONS),
    "low_freq_factor": _num(), "high_freq_factor": _num(), "attention_factor": _num(), "attn_factor": _num(),
    "extrapolation_factor": _num(), "beta_fast": _num(), "beta_slow": _num(), "mscale": _num(),
    "mscale_all_dim": _num(), "long_factor": Rule("list", items=_num()), "short_factor": Rule("list", items=_num()),
}
ROPE_NESTED = {**ROPE, "full_attention": Rule("dict", fields=ROPE), "sliding_attention": Rule("dict", fields=ROPE)}

# compressed-tensors QuantizationArgs (compressed_tensors/quantization/quant_args.py)
QUANT_ARGS: dict[str, Rule] = {
    "num_bits": _int(1, MAX_BITS), "type": _STR, "symmetric": _BOOL, "strategy": _STR,
    # group_size -1 is compressed-tensors' spelling of "per channel" (quant_args.py validate_group)
    "group_size": _int(-1, MAX_WIDTH), "actorder": _SCALAR, "dynamic": _SCALAR,
}
QUANT_GROUP: dict[str, Rule] = {
    "targets": _PATTERNS, "weights": Rule("dict", fields=QUANT_ARGS),
    "input_activations": Rule("dict", fields=QUANT_ARGS), "output_activations": Rule("dict", fields=QUANT_ARGS),
    "format": _STR,
}
KV_SCHEME: dict[str, Rule] = {"num_bits": _int(1, MAX_BITS), "type": _STR}
PRODUCER: dict[str, Rule] = {"name": _SCALAR, "version": _SCALAR}

# config.json quantization_config: compressed-tensors (config/base.py) and ModelOpt's own spelling
QUANTIZATION_CONFIG: dict[str, Rule] = {
    "quant_method": _STR, "format": _STR, "quant_algo": _STR, "kv_cache_quant_algo": _STR,
    "config_groups": Rule("dict", max_items=MAX_LIST, values=Rule("dict", fields=QUANT_GROUP)),
    "ignore": _PATTERNS, "exclude_modules": _PATTERNS, "kv_cache_scheme": Rule("dict", fields=KV_SCHEME),
    "version": _SCALAR, "quantization_status": _SCALAR, "producer": Rule("dict", fields=PRODUCER),
    "group_size": _int(-1, MAX_WIDTH), "quantized_layers": Rule("dict", max_items=MAX_ENTRIES, values=_DICT),
}

# The architecture keys of config.json (and of a multimodal config's text_config) that arch.py and
# the GGUF writer read, with transformers' meanings.
_ARCH: dict[str, Rule] = {
    **{k: _int(1, MAX_LAYERS) for k in ("num_hidden_layers", "n_layer", "num_layers")},
    **{k: _int(1, MAX_WIDTH) for k in ("hidden_size", "n_embd", "d_model")},
    **{k: _int(1, MAX_HEADS) for k in ("num_attention_heads", "n_head", "num_key_value_heads", "num_kv_heads",
                                       "num_global_key_value_heads")},
    **{k: _int(1, MAX_HEAD_DIM) for k in ("head_dim", "global_head_dim")},
    **{k: _int(0, MAX_HEAD_DIM) for k in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")},
    **{k: _int(0, MAX_WIDTH) for k in ("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size",
                                       "expert_feed_forward_length", "shared_expert_intermediate_size",
                                       "hidden_size_per_layer_input")},
    **{k: _int(0, MAX_EXPERTS) for k in ("num_experts", "num_local_experts", "n_routed_experts", "top_k_experts",
                                         "num_experts_per_tok", "experts_per_token", "moe_topk", "n_shared_experts")},
    **{k: _int(0, MAX_LAYERS) for k in ("sliding_window_pattern", "max_window_layers", "num_kv_shared_layers")},
    "vocab_size": _int(0, MAX_VOCAB),
    # 0 is read as "no window" (arch.py); the window is a position count
    "sliding_window": _int(0, MAX_POSITIONS),
    **{k: _int(0, MAX_POSITIONS) for k in ("max_position_embeddings", "n_positions")},
    **{k: _BOOL for k in ("tie_word_embeddings", "attention_k_eq_v", "use_sliding_window", "enable_moe_block")},
    "model_type": _STR, "architectures": _STR_LIST,
    "layer_types": Rule("list", max_items=MAX_LAYERS, items=_STR),
    "per_layer_config": Rule("dict", max_items=MAX_LAYERS, values=Rule("dict", fields={
        "head_dim": _int(1, MAX_HEAD_DIM), "num_key_value_heads": _int(1, MAX_HEADS)})),
    "rms_norm_eps": _num(0), "rope_theta": _num(0), "partial_rotary_factor": _num(0, 1),
    "rope_scaling": Rule("dict", fields=ROPE_NESTED), "rope_parameters": Rule("dict", fields=ROPE_NESTED),
    "torch_dtype": _STR, "dtype": _STR, "transformers_version": _SCALAR, "compressed_tensors_version": _SCALAR,
}
CONFIG: dict[str, Rule] = {
    **_ARCH,
    "text_config": Rule("dict", fields=_ARCH),
    "vision_config": _DICT,
    "quantization_config": Rule("dict", fields=QUANTIZATION_CONFIG),
}

# hf_quant_config.json (Model-Optimizer modelopt/torch/export/unified_export_hf.py)
HF_QUANT_CONFIG: dict[str, Rule] = {
    "producer": Rule("dict", fields=PRODUCER),
    "quantization": Rule("dict", fields={
        "quant_algo": _STR, "kv_cache_quant_algo": _STR, "exclude_modules": _PATTERNS,
        "group_size": _int(-1, MAX_WIDTH), "has_zero_point": _BOOL, "pre_quant_scale": _BOOL,
        "quantized_layers": Rule("dict", max_items=MAX_ENTRIES, values=Rule("dict", fields={
            "quant_algo": _STR, "group_size": _int(-1, MAX_WIDTH)})),
    }),
}

# model.safetensors.index.json (transformers modeling_utils, huggingface_hub serialization)
INDEX: dict[str, Rule] = {
    "weight_map": Rule("dict", max_items=MAX_ENTRIES),  # names: index() below, C-level over ~50,000 entries
    "metadata": Rule("dict", fields={"total_size": _int(0, 1 << 62)}),
}

# GGUF ``{arch}.*`` keys arch_from_gguf reads (llama.cpp llama-model.cpp hparams; gguf-py constants
# Keys.LLM/Attention/Rope). A per-layer key may be one value or an array with one value per layer.
GGUF_ARCH: dict[str, Rule] = {
    "block_count": _int(1, MAX_LAYERS),
    "embedding_length": _int(1, MAX_WIDTH),
    "attention.head_count": Rule("int", 1, MAX_HEADS, alt=Rule("list", max_items=MAX_LAYERS,
                                                               items=_int(1, MAX_HEADS))),
    # 0 KV heads: a recurrent (SSM) layer of a hybrid model (llama.cpp jamba, granitehybrid)
    "attention.head_count_kv": Rule("int", 0, MAX_HEADS, alt=Rule("list", max_items=MAX_LAYERS,
                                                                  items=_int(0, MAX_HEADS))),
    **{f"attention.{k}": _int(0, MAX_HEAD_DIM) for k in ("key_length", "value_length", "key_length_swa",
                                                           "value_length_swa", "kv_lora_rank")},
    "rope.dimension_count": _int(0, MAX_HEAD_DIM),
    "attention.sliding_window": _int(0, MAX_POSITIONS),
    "attention.sliding_window_pattern": Rule("int", 0, MAX_LAYERS, alt=Rule(
        "list", max_items=MAX_LAYERS, items=Rule("int", 0, 1, alt=_BOOL))),
    "attention.shared_kv_layers": _int(0, MAX_LAYERS),
    **{k: _int(0, MAX_EXPERTS) for k in ("expert_count", "expert_used_count", "expert_shared_count")},
    "expert_feed_forward_length": _int(0, MAX_WIDTH),
    "feed_forward_length": Rule("int", 0, MAX_WIDTH, alt=Rule("list", max_items=MAX_LAYERS,
                                                              items=_int(0, MAX_WIDTH))),
    "vocab_size": _int(0, MAX_VOCAB),
    "context_length": _int(0, MAX_POSITIONS),
}
# key prefix -> rule, for the records formats/gguf_writer.py writes (names, per-expert scales)
NVFP4TOOLS_GGUF: tuple[tuple[str, Rule], ...] = (
    ("nvfp4tools.hf_names", Rule("list", max_items=MAX_ENTRIES, items=Rule("str", hi=1 << 20))),
    ("nvfp4tools.restore.", Rule("list", max_items=MAX_EXPERTS, items=_num())),
)
GGUF_GENERAL: dict[str, Rule] = {
    "general.architecture": Rule("str", hi=MAX_NAME_CHARS), "general.file_type": _int(0, 1 << 16),
    "general.quantized_by": _SCALAR, "general.quantization_version": _SCALAR, "tokenizer.ggml.model": _SCALAR,
    "nvfp4tools.config_json": Rule("str", hi=JSON_MAX_BYTES),
}


def check(data: Mapping[str, Any], table: Mapping[str, Rule], file: str, where: str = "") -> None:
    """Check DATA's keys that TABLE names; raise one FormatError naming FILE, the key and its value."""
    for key, rule in table.items():
        if key in data:
            _check_value(data[key], rule, file, f"{where}{key}")


def _check_value(v: Any, rule: Rule, file: str, path: str) -> None:
    if v is None:
        return
    if _fits(v, rule, file, path):
        return
    if rule.alt is not None and _fits(v, rule.alt, file, path):
        return
    raise FormatError(f"{file}: {path} is {show(v)}, expected {rule.expect()}",
                      hint=f"fix or remove '{path}' in {file}")


def _fits(v: Any, rule: Rule, file: str, path: str) -> bool:
    """True when V has RULE's kind and range; a nested container's own bad entry raises."""
    kind = rule.kind
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if isinstance(v, float) and not (math.isfinite(v) and v == int(v)):
            return False  # 4096.0 is an integer; 4096.5, NaN and Inf are not
        return _in_range(v, rule)
    if kind == "number":
        return (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                and _in_range(v, rule))
    if kind == "str":
        return isinstance(v, str) and (rule.hi is None or len(v) <= rule.hi) and utf8(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "scalar":
        return ((isinstance(v, str) and len(v) <= MAX_NAME_CHARS and utf8(v)) or isinstance(v, bool)
                or (isinstance(v, (int, float)) and math.isfinite(v)))
    if kind == "list":
        if not isinstance(v, list):
            return False
        if len(v) > rule.max_items:
            raise FormatError(f"{file}: {path} has {len(v):,} entries (at most {rule.max_items:,})")
        if rule.items is not None:
            for i, x in enumerate(v):
                if x is None or not (_fits(x, rule.items, file, f"{path}[{i}]")
                                     or (rule.items.alt is not None and _fits(x, rule.items.alt, file, path))):
                    raise FormatError(f"{file}: {path}[{i}] is {show(x)}, expected {rule.items.expect()}",
                                      hint=f"fix or remove '{path}' in {file}")
        return True
    if kind == "dict":
        if not isinstance(v, dict):
            return False
        if len(v) > rule.max_items:
            raise FormatError(f"{file}: {path} has {len(v):,} entries (at most {rule.max_items:,})")
        if rule.fields is not None:
            check(v, rule.fields, file, path + ".")
        if rule.values is not None:
            for k, x in v.items():
                if x is None:
                    raise FormatError(f"{file}: {path}.{_key(k)} is null, expected {rule.values.expect()}")
                _check_value(x, rule.values, file, f"{path}.{_key(k)}")
        return True
    raise AssertionError(kind)  # pragma: no cover (the tables use the kinds above)


def _key(k: str) -> str:
    """An object key as it may appear in a message (a hostile key can be huge or unprintable)."""
    return k if len(k) <= _SHOW_CHARS and k.isprintable() else show(k)


def _in_range(v: float, rule: Rule) -> bool:
    return (rule.lo is None or v >= rule.lo) and (rule.hi is None or v <= rule.hi)


def utf8(s: str) -> bool:
    """No lone surrogates (json.loads makes them from "\\ud800"; they cannot be printed or written)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- per file -----------------------------------------------------------------------------------------
def config(data: Any, file: str = "config.json") -> dict[str, Any]:
    """A parsed config.json (or one embedded in a GGUF), checked against :data:`CONFIG`."""
    if not isinstance(data, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(data).__name__}")
    check(data, CONFIG, file)
    return data


def hf_quant_config(data: Any, file: str = "hf_quant_config.json") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(data).__name__}")
    check(data, HF_QUANT_CONFIG, file)
    return data


def index(data: Any, file: str) -> dict[str, Any]:
    """A safetensors index; every tensor and shard name checked."""
    if not isinstance(data, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(data).__name__}")
    check(data, INDEX, file)
    wm = data.get("weight_map")
    if isinstance(wm, dict):
        if not all(len(k) <= MAX_NAME_CHARS and k.isprintable() for k in wm):
            for k in wm:
                check_name(k, file)
        if not all(type(v) is str for v in wm.values()):
            tname, shard = next((k, v) for k, v in wm.items() if type(v) is not str)
            raise FormatError(f"{file}: weight_map maps '{_key(tname)}' to {show(shard)}, expected a shard file name")
    return data


def gguf_metadata(kv: Mapping[str, Any], file: str) -> None:
    """The GGUF keys the reader uses, checked against :data:`GGUF_GENERAL` and :data:`GGUF_ARCH`."""
    check(kv, GGUF_GENERAL, file)
    for key, v in kv.items():   # what an nvfp4tools-written GGUF records for the way back
        for prefix, rule in NVFP4TOOLS_GGUF:
            if key.startswith(prefix):
                _check_value(v, rule, file, _key(key))
                break
    names = kv.get("nvfp4tools.hf_names")
    if isinstance(names, list):
        from ._dtypes import DTYPE_BITS
        for entry in names:
            # "gguf_name=hf_name[|DTYPE],..." (formats/gguf_writer.py); the dtype names a stored dtype
            gname, eq, rest = entry.partition("=")
            dts = [t.partition("|")[2] for t in rest.split(",")]
            if not eq or not gname or any(dt and dt not in DTYPE_BITS for dt in dts):
                raise FormatError(f"{file}: nvfp4tools.hf_names entry {show(entry)} is not "
                                  "'gguf_name=name[|DTYPE],...' with known safetensors dtypes")
    arch = kv.get("general.architecture")
    if isinstance(arch, str):
        p = arch + "."
        check({k: kv[p + k] for k in GGUF_ARCH if p + k in kv}, GGUF_ARCH, file, p)
        pattern, window = kv.get(p + "attention.sliding_window_pattern"), kv.get(p + "attention.sliding_window")
        if isinstance(pattern, list) and any(pattern) and not window:
            # engines size a sliding layer's cache by its window (llama.cpp hparams.n_swa)
            raise FormatError(f"{file}: {p}attention.sliding_window_pattern marks {sum(map(bool, pattern))} "
                              f"sliding layers but {p}attention.sliding_window is {show(window)}, expected a "
                              "window size > 0")
