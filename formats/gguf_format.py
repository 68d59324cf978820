"""GGUF checkpoints (llama.cpp): single files and ``-00001-of-0000N.gguf`` splits.

Tensors become logical tensors with row-major shapes (ggml ``ne`` reversed). Stacked experts
(``blk.N.ffn_*_exps``, ``[E, out, in]``) are routed experts. NVFP4 sidecars written by llama.cpp's
converter, ``<t>.scale`` (per-tensor, or ``[E]`` per expert; a multiplier, ModelOpt's
``weight_scale_2``) and ``<t>.input_scale``, are attached to their NVFP4 tensor as parts, not listed
as weights (``convert_hf_to_gguf.py`` ``_repack_nvfp4``; ``formats.md`` 3.6). Roles come from the GGUF
tensor names (gguf-py ``constants.TENSOR_NAMES`` spellings); the architecture from
``{arch}.*`` metadata, producing the same :class:`ArchInfo` config.json produces.
"""

from __future__ import annotations

import os
import re
from typing import Any

from nvfp4tools import schemes
from nvfp4tools.arch import check_against_tensors
from nvfp4tools.errors import FormatError, UnsupportedError
from nvfp4tools.model import ArchInfo, Checkpoint, Finding, LayerAttention, TensorInfo, TensorPart

from . import register, validate
from ._gguf_container import GGUFFile, GGUFTensorInfo, parse_gguf
from ._ggml_types import FILE_TYPES, GGML_TYPES, UNQUANTIZED
from .base import FormatSpec

_SPLIT = re.compile(r"^(?P<base>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")

# GGUF tensor base name (after "blk.N.") -> (role, proj)
_BLK_ROLES: dict[str, tuple[str, str | None]] = {
    "attn_q": ("attention", "q"), "attn_k": ("attention", "k"), "attn_v": ("attention", "v"),
    "attn_output": ("attention", "o"), "attn_qkv": ("attention", "qkv"), "attn_q_a": ("attention", "q_a"),
    "attn_q_b": ("attention", "q_b"), "attn_kv_a_mqa": ("attention", "kv_a"), "attn_kv_b": ("attention", "kv_b"),
    "attn_k_b": ("attention", "k_b"), "attn_v_b": ("attention", "v_b"), "attn_sinks": ("attention", None),
    "ffn_gate": ("mlp", "gate"), "ffn_up": ("mlp", "up"), "ffn_down": ("mlp", "down"),
    "ffn_gate_exps": ("experts", "gate"), "ffn_up_exps": ("experts", "up"), "ffn_down_exps": ("experts", "down"),
    "ffn_gate_up_exps": ("experts", "gate_up"),
    "ffn_gate_shexp": ("shared_expert", "gate"), "ffn_up_shexp": ("shared_expert", "up"),
    "ffn_down_shexp": ("shared_expert", "down"),
    "ffn_gate_inp": ("router", None), "ffn_gate_inp_shexp": ("router", None), "exp_probs_b": ("router", None),
}
_TOP_ROLES = {"token_embd": "embedding", "output": "lm_head", "output_norm": "norm", "rope_freqs": "other",
              "per_layer_token_embd": "embedding", "per_layer_model_proj": "other", "per_layer_proj_norm": "norm",
              "token_embd_norm": "norm"}


def _split_files(path: str) -> tuple[str, list[str]] | None:
    """(root, files) of a GGUF path: a file, a split's first shard, or a folder with one model."""
    if os.path.isdir(path):
        ggufs = sorted(n for n in os.listdir(path) if n.endswith(".gguf"))
        if not ggufs:
            return None
        firsts = [n for n in ggufs if (m := _SPLIT.match(n)) and m.group("i") == "00001"] or \
                 [n for n in ggufs if not _SPLIT.match(n)]
        if len(firsts) != 1:
            raise UnsupportedError(f"{path}: {len(firsts)} GGUF models in one folder ({', '.join(firsts[:4])})",
                                   hint="name the file to inspect")
        return _split_files(os.path.join(path, firsts[0]))
    if not os.path.isfile(path):
        return None
    root, name = os.path.split(os.path.abspath(path))
    m = _SPLIT.match(name)
    if not m:
        return root, [name]
    n = int(m.group("n"))
    files = [f"{m.group('base')}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    for f in files:
        if not os.path.isfile(os.path.join(root, f)):
            raise FormatError(f"{name}: split shard '{f}' is missing (the model has {n} parts)",
                              hint="download every part of the split")
    return root, files


def sniff(path: str) -> bool:
    try:
        if os.path.isdir(path):
            return any(n.endswith(".gguf") for n in os.listdir(path))
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF" or path.endswith(".gguf")
    except OSError:
        return False


def _role(name: str) -> tuple[str, str | None, int | None]:
    # a bias has its module's role: attn_q.bias is attention (Qwen2, gpt-oss), exp_probs_b.bias the
    # router's (DeepSeek's expert score correction bias), ffn_gate_exps.bias the experts' (gpt-oss)
    base = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    if base.startswith("blk."):
        parts = base.split(".", 2)
        try:
            layer = int(parts[1])
        except (IndexError, ValueError):
            return "other", None, None
        rest = parts[2] if len(parts) > 2 else ""
        if rest in _BLK_ROLES:
            role, proj = _BLK_ROLES[rest]
            return role, proj, layer
        if "norm" in rest or rest in ("layer_output_scale",) or rest.endswith(".scale"):
            if rest.startswith("ffn_gate_inp"):
                return "router", None, layer
            return "norm", None, layer
        return "other", None, layer
    if base.startswith(("v.", "mm.", "vision.", "a.")):
        return "vision", None, None
    return _TOP_ROLES.get(base, "other"), None, None


def _scheme_for(type_name: str, has_input: bool):
    if type_name in UNQUANTIZED:
        return {"F32": schemes.FP32, "F16": schemes.FP16, "BF16": schemes.BF16, "F64": schemes.FP64}.get(
            type_name, schemes.INT_PLAIN)
    if type_name == "NVFP4":
        return schemes.NVFP4 if has_input else schemes.NVFP4_A16
    if type_name == "MXFP4":
        return schemes.MXFP4
    _, block, nbytes = next(v for v in GGML_TYPES.values() if v[0] == type_name)
    return schemes.ggml(type_name, nbytes * 8 / block, block, "f16")


def _part(t: GGUFTensorInfo, role: str) -> TensorPart:
    return TensorPart(role, t.name, t.file, t.offset, t.nbytes, t.type_name, tuple(reversed(t.ne)),  # type: ignore[arg-type]
                      "multiplier" if role in ("global_scale", "input_scale") else "value")


def read(path: str) -> Checkpoint:
    found = _split_files(path)
    if found is None:
        raise UnsupportedError(f"{path}: no GGUF file")
    root, files = found
    named = os.path.basename(path) if os.path.isfile(path) else None  # read wherever the user's file links
    parsed: list[GGUFFile] = [parse_gguf(root, f, trusted=f == named) for f in files]
    return from_parsed(path, root, files, parsed)


def from_parsed(path: str, root: str, files: list[str], parsed: list[GGUFFile], *, remote: bool = False) -> Checkpoint:
    """The checkpoint of PARSED GGUF headers (a file and its split parts, read locally or, REMOTE,
    from a Hub repository's HTTP range reads: then no tensor byte is ever read)."""
    findings: list[Finding] = _check_split(parsed)
    kv: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for g in parsed:
        for k, v in g.kv.items():
            kv.setdefault(k, v)
        lengths.update({k: v for k, v in g.array_lengths.items() if k not in lengths})
    all_t: dict[str, GGUFTensorInfo] = {}
    for g in parsed:
        for t in g.tensors:
            if t.name in all_t:
                raise FormatError(f"{g.file}: tensor '{t.name}' also appears in {all_t[t.name].file}")
            all_t[t.name] = t
    tensors: dict[str, TensorInfo] = {}
    used: set[str] = set()
    for name, t in all_t.items():
        if name.endswith((".scale", ".input_scale")):
            continue
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        parts = [_part(t, "data")]
        g_s = all_t.get(f"{base}.scale") if base else None
        i_s = all_t.get(f"{base}.input_scale") if base else None
        # .scale belongs to the weight only for NVFP4 (for a BF16 ffn_down_exps it is the router's
        # per_expert_scale, listed on its own)
        if t.type_name == "NVFP4":
            if g_s is not None:
                parts.append(_part(g_s, "global_scale"))
                used.add(g_s.name)
            if i_s is not None:
                parts.append(_part(i_s, "input_scale"))
                used.add(i_s.name)
        role, proj, layer = _role(name)
        shape = tuple(reversed(t.ne))
        scheme = _scheme_for(t.type_name, i_s is not None and t.type_name == "NVFP4")
        if scheme.quantized and 0 in shape:   # (nothing to dequantize: a quantized weight has elements)
            raise FormatError(f"{t.file}: tensor '{name}' is {t.type_name} with shape {list(shape)}, "
                              "expected no zero dimension")
        for sc in (g_s, i_s) if t.type_name == "NVFP4" else ():
            n_sc = 1
            for d in (sc.ne if sc is not None else ()):
                n_sc *= d
            if sc is not None and n_sc not in (1, shape[0] if len(shape) == 3 else 1):
                # one multiplier per tensor, or per expert of a stacked one (convert_hf_to_gguf _repack_nvfp4)
                raise FormatError(f"{sc.file}: tensor '{sc.name}' has shape {list(reversed(sc.ne))} ({n_sc} values), "
                                  f"expected 1" + (f" or {shape[0]} (one per expert)" if len(shape) == 3 else ""))
        # a weight (not a bias: attn_q.bias is 1-D, gpt-oss's ffn_*_exps.bias 2-D) of a projection is a matrix
        if name.endswith(".weight") and ((len(shape) < 2 and proj is not None) or (role == "experts" and len(shape) != 3)):
            raise FormatError(f"{t.file}: tensor '{name}' ({role}) has shape {list(shape)}, expected "
                              + ("[experts, out, in]" if role == "experts" else "a matrix [out, in]"))
        tensors[name] = TensorInfo(name, shape, scheme, tuple(parts), role, proj, layer, "blk" if layer is not None else None,
                                   None, shape[0] if (len(shape) == 3 and role == "experts") else None)
    for name, t in all_t.items():
        if name.endswith((".scale", ".input_scale")) and name not in used:
            role, proj, layer = _role(name)
            if name.endswith("ffn_down_exps.scale"):
                role = "router"  # Gemma 4 router.per_expert_scale lives here in BF16 files
            shape = tuple(reversed(t.ne))
            tensors[name] = TensorInfo(name, shape, _scheme_for(t.type_name, False), (_part(t, "data"),),
                                       role, proj, layer, "blk" if layer is not None else None)
    validate.gguf_metadata(kv, files[0])  # types and ranges of every key read below
    arch_name = str(kv.get("general.architecture", "unknown"))
    arch = arch_from_gguf(kv, lengths, arch_name, tensors)
    check_against_tensors(arch, tensors)   # llama.cpp builds the graph from these keys, then loads the tensors
    ftype = kv.get("general.file_type")
    meta = {
        "general.file_type": FILE_TYPES.get(ftype, str(ftype)) if ftype is not None else None,
        "general.quantization_version": kv.get("general.quantization_version"),
        "tokenizer.ggml.model": kv.get("tokenizer.ggml.model"),
        "vocab_size": lengths.get("tokenizer.ggml.tokens") or (len(kv["tokenizer.ggml.tokens"]) if isinstance(
            kv.get("tokenizer.ggml.tokens"), list) else None),
        "gguf_version": parsed[0].version,
        "alignment": parsed[0].alignment,
        "architecture": arch_name,
    }
    if len(parsed) > 1:
        meta["split.count"] = len(parsed)
    # every key/value of the header (the first part's: gguf-split writes the metadata there), for
    # inspect --metadata: {source: ((key, type, value, array length), ...)}; a long array's value is
    # its first items only
    first = parsed[0]
    meta["key_values"] = {f"{first.file} (GGUF header)": tuple(
        (k, first.types[k], first.array_heads.get(k, v), first.array_lengths.get(k)) for k, v in first.kv.items())}
    # what an nvfp4tools-written GGUF records to restore the safetensors names and Gemma 4 scales
    for k, v in kv.items():
        if k.startswith("nvfp4tools."):
            meta[k] = v
    nv = [t for t in tensors.values() if t.scheme.name == "nvfp4"]
    if nv and not any(t.part("global_scale") for t in nv):
        findings.append(Finding("gguf_nvfp4_no_global", "warning",
                                f"{len(nv)} NVFP4 tensors carry no '.scale' sidecar: a natively quantized GGUF "
                                "(llama-quantize) whose block scales hold the whole magnitude; small weights may sit "
                                "in E4M3 subnormals (llama.cpp #22858)"))
    return Checkpoint(
        format="gguf", source=path, root=root, tensors=tensors, files=tuple(files),
        file_bytes=sum(g.size for g in parsed), config=_embedded_config(kv, files[0]), arch=arch,
        producer=str(kv.get("general.quantized_by") or ("nvfp4tools" if "nvfp4tools.hf_names" in kv else "llama.cpp/gguf")),
        producer_version=None, quant_method="gguf", algorithm=meta["general.file_type"],
        kv_cache_scheme=None, findings=tuple(findings), metadata={**meta, **({"remote": True} if remote else {})})


def _check_split(parsed: list[GGUFFile]) -> list[Finding]:
    """The parts of a split against llama.cpp's gguf-split layout (``tools/gguf-split``): part i
    carries ``split.no`` = i (from 0), every part ``split.count`` = the number of parts and
    ``split.tensors.count`` = the tensors of all parts; the first part holds every other key.
    llama.cpp's loader finds the other parts by name from the first one's ``split.count``."""
    first = parsed[0]
    count = first.kv.get("split.count")
    if len(parsed) == 1:
        if isinstance(count, int) and count > 1:
            raise FormatError(f"{first.file}: split.count is {count} but the name is not <name>-00001-of-{count:05d}"
                              ".gguf, so the other parts cannot be found",
                              hint="keep the names gguf-split gave the parts")
        return []
    if not any("split.count" in g.kv for g in parsed):
        return [Finding("gguf_split_unmarked", "warning",
                        f"{len(parsed)} parts named as a split carry no split.* keys: llama.cpp reads only the "
                        f"first one ({first.file})", file=first.file)]
    n_tensors = sum(len(g.tensors) for g in parsed)
    for i, g in enumerate(parsed):
        no, cnt, tc = g.kv.get("split.no"), g.kv.get("split.count"), g.kv.get("split.tensors.count")
        if no != i:
            raise FormatError(f"{g.file}: split.no is {no}, expected {i} (part {i + 1} of {len(parsed)})",
                              hint="a part was renamed or comes from another split")
        if cnt != len(parsed):
            raise FormatError(f"{g.file}: split.count is {cnt}, the name says {len(parsed)} parts")
        if tc is not None and tc != n_tensors:
            raise FormatError(f"{g.file}: split.tensors.count is {tc} but the {len(parsed)} parts hold {n_tensors}",
                              hint="a part comes from another split or is damaged")
    return []


def _embedded_config(kv: dict[str, Any], file: str) -> dict[str, Any]:
    """The config.json an nvfp4tools-written GGUF carries, checked like a config.json."""
    raw = kv.get("nvfp4tools.config_json")
    if not isinstance(raw, str):
        return {}
    label = f"{file}: nvfp4tools.config_json"
    return validate.config(validate.parse_json(raw, label), label)


def _at(v: Any, i: int, default: Any = None) -> Any:
    if isinstance(v, list):
        return v[i] if i < len(v) else default
    return v if v is not None else default


def arch_from_gguf(kv: dict[str, Any], lengths: dict[str, int], arch: str,
                   tensors: dict[str, TensorInfo]) -> ArchInfo | None:
    """The architecture from ``{arch}.*`` keys (llama.cpp ``llama-model.cpp`` hparams)."""
    p = arch + "."
    n_layers = kv.get(p + "block_count")
    hidden = kv.get(p + "embedding_length")
    heads = kv.get(p + "attention.head_count")
    if not isinstance(n_layers, int) or not isinstance(hidden, int) or heads is None:
        return None
    heads0 = _at(heads, 0)
    kv_heads = kv.get(p + "attention.head_count_kv", heads)
    k_len = kv.get(p + "attention.key_length") or hidden // heads0
    v_len = kv.get(p + "attention.value_length") or k_len
    k_swa = kv.get(p + "attention.key_length_swa") or k_len
    v_swa = kv.get(p + "attention.value_length_swa") or v_len
    window = kv.get(p + "attention.sliding_window")
    pattern = kv.get(p + "attention.sliding_window_pattern")
    shared = kv.get(p + "attention.shared_kv_layers") or 0
    kv_lora = kv.get(p + "attention.kv_lora_rank")
    rope_dim = kv.get(p + "rope.dimension_count")
    layers = []
    first_shared = n_layers - shared
    kinds = []
    for i in range(n_layers):
        if isinstance(pattern, list):
            sliding = bool(_at(pattern, i, False))
        elif isinstance(pattern, int) and pattern > 1 and window:
            sliding = (i + 1) % pattern != 0     # gemma3-style integer pattern
        else:
            sliding = False
        kinds.append("sliding" if sliding else "full")
    has_v = {t.layer for t in tensors.values() if t.role == "attention" and t.proj == "v"}
    for i, kind in enumerate(kinds):
        nkv = int(_at(kv_heads, i, heads0) or heads0)
        hd_k, hd_v = (k_swa, v_swa) if kind == "sliding" else (k_len, v_len)
        shared_from = None
        if shared and i >= first_shared:
            same = [j for j in range(first_shared) if kinds[j] == kind]
            shared_from = same[-1] if same else None
        mla = (kv_lora + (rope_dim or 0)) if kv_lora else None
        layers.append(LayerAttention(kind, int(_at(heads, i, heads0)), nkv, int(hd_k), int(hd_v),
                                     window=int(window) if (kind == "sliding" and window) else None,
                                     k_eq_v=bool(has_v) and i not in has_v and arch.startswith("gemma4"),
                                     kv_shared_from=shared_from, mla_latent_dim=mla))
    n_exp = kv.get(p + "expert_count") or None
    vocab = kv.get(p + "vocab_size") or lengths.get("tokenizer.ggml.tokens") or 0
    ff = kv.get(p + "feed_forward_length")
    return ArchInfo(
        model_type=arch, n_layers=n_layers, hidden_size=hidden, n_heads=int(heads0), vocab_size=int(vocab),
        layers=tuple(layers), intermediate_size=_at(ff, 0) if ff else None, n_experts=n_exp,
        n_experts_active=kv.get(p + "expert_used_count") if n_exp else None,
        expert_intermediate_size=kv.get(p + "expert_feed_forward_length") if n_exp else None,
        n_shared_experts=kv.get(p + "expert_shared_count"),
        dense_mlp_with_experts=bool(n_exp) and any(t.role == "mlp" for t in tensors.values()),
        tie_word_embeddings="output.weight" not in tensors,
        max_position_embeddings=kv.get(p + "context_length"),
        has_vision=any(t.role == "vision" for t in tensors.values()),
    )


def _writer():
    from .gguf_writer import GGUFWriter
    return GGUFWriter()


SPEC = register(FormatSpec("gguf", sniff, read, "GGUF (llama.cpp), single file or split",
                               writer=_writer))
