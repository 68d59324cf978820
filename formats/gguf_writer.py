"""Writing GGUF from canonical tensors (llama.cpp's layout), through the gguf package's writer.

Tensor names come from gguf-py's tensor-name map for the architecture (``get_tensor_name_map``,
``language_model.`` stripped as llama.cpp's converter does). NVFP4 weights are re-nibbled into
64-element ``block_nvfp4`` blocks with the E4M3 scale bytes kept; the per-tensor global goes to
an F32 ``<t>.scale`` sidecar and the input scale to ``<t>.input_scale`` (never folded into block
scales); per-expert weights are stacked ``[E, out, in]`` with ``[E]`` sidecars. A scale of exactly 1.0
is omitted (llama.cpp's converter also drops values within 1e-6 of 1.0, which is lossy: we don't).
Gemma 4: ``router.per_expert_scale`` is multiplied into the down projection's scale, as llama.cpp's
converter does; the original values are stored under ``nvfp4tools.restore.*`` keys so a conversion
back restores them bit for bit. int4 group-symmetric weights with group 32 (or a multiple, by
repeating the scale) become Q4_0. 1-D tensors are written F32, other unquantized tensors as stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from nvfp4tools.errors import UnsupportedError, UsageError
from nvfp4tools.kernels_ref.bf16 import bf16_bits_to_f32
from nvfp4tools.model import Checkpoint, TensorInfo

ARCHES = {"gemma4": "GEMMA4", "gemma4_text": "GEMMA4", "llama": "LLAMA", "mistral": "LLAMA", "mixtral": "LLAMA",
          "qwen2": "QWEN2", "qwen3": "QWEN3", "qwen2_moe": "QWEN2MOE", "qwen3_moe": "QWEN3MOE"}


@dataclass(frozen=True)
class GOut:
    key: str
    gtype: str                 # "NVFP4", "Q4_0", "F32", "BF16", "F16"
    shape: tuple[int, ...]     # row-major logical shape
    what: str                  # "nvfp4" | "q4_0" | "raw" | "scale" | "input_scale"
    nbytes: int
    dtype: str = ""            # for raw: source dtype


def _nb(gtype: str, shape: tuple[int, ...]) -> int:
    n = int(np.prod(shape)) if shape else 1
    return {"NVFP4": n // 64 * 36, "Q4_0": n // 32 * 18, "F32": 4 * n, "BF16": 2 * n, "F16": 2 * n}[gtype]


def _gguf_arch(src: Checkpoint) -> tuple[Any, str]:
    import gguf

    mt = (src.arch.model_type if src.arch else "") or ""
    key = ARCHES.get(mt)
    if key is None:
        raise UnsupportedError(f"{src.source}: writing GGUF for architecture {mt!r} is not supported",
                               hint=f"supported: {', '.join(sorted(set(ARCHES)))}")
    arch = getattr(gguf.MODEL_ARCH, key)
    return arch, gguf.MODEL_ARCH_NAMES[arch]


def _name(tmap, hf: str) -> str | None:
    n = hf.replace("model.language_model.", "model.").replace("language_model.model.", "model.")
    if n.endswith(".router.scale"):
        return n.replace("model.layers.", "blk.").replace(".router.scale", ".ffn_gate_inp.scale")
    if n.endswith(".router.per_expert_scale"):
        return n.replace("model.layers.", "blk.").replace(".router.per_expert_scale", ".ffn_down_exps.scale")
    suffix = ".weight" if n.endswith(".weight") else (".bias" if n.endswith(".bias") else "")
    base = n[: -len(suffix)] if suffix else n
    g = tmap.get_name(base)
    return None if g is None else g + (suffix or ".weight")


def plan_gguf(src: Checkpoint, allow_lossy: bool = False, quantize: str | None = None):
    import gguf

    from nvfp4tools.convert import Job, Plan

    if src.format == "gguf":
        raise UsageError("the source is already GGUF", hint="convert to modelopt or compressed-tensors instead")
    if quantize is not None and (quantize != "q4_0" or not allow_lossy):
        raise UsageError("--to gguf quantizes with --allow-lossy --quantize q4_0" if quantize == "q4_0" or quantize is None
                         else f"--to gguf takes --quantize q4_0, not {quantize}")
    arch, arch_name = _gguf_arch(src)
    tmap = gguf.get_tensor_name_map(arch, src.arch.n_layers)
    p = Plan(src, "gguf", [])
    p.notes.append(f"architecture {arch_name}")
    tensors = list(src.tensors.values())
    # stack per-expert tensors: (layer prefix, proj) -> members
    groups: dict[tuple[str, str], list[TensorInfo]] = {}
    for t in tensors:
        if t.role == "experts" and t.expert is not None and t.proj in ("gate", "up", "down"):
            groups.setdefault((t.name.split(f".experts.{t.expert}.")[0], t.proj), []).append(t)
    # llama.cpp folds router.per_expert_scale into an NVFP4 down projection's scale; requantized to
    # Q4_0 (--quantize q4_0) the down projection keeps no scale, so the tensor is written instead
    nvfp4_down_layers = set() if (allow_lossy and quantize == "q4_0") else \
        {k[0] for k, v in groups.items() if k[1] == "down" and v[0].scheme.name == "nvfp4"}
    done: set[tuple[str, str]] = set()
    for t in tensors:
        if t.role in ("vision", "projector"):
            continue  # llama.cpp puts the vision tower in a separate mmproj file
        if t.name.endswith("router.per_expert_scale") and t.name.split(".router.")[0] in nvfp4_down_layers:
            continue  # folded into the down projection's scale (see the module docstring)
        if t.role == "experts" and t.expert is not None and t.proj in ("gate", "up", "down"):
            k = (t.name.split(f".experts.{t.expert}.")[0], t.proj)
            if k in done:
                continue
            done.add(k)
            members = sorted(groups[k], key=lambda x: x.expert)
            gname = _name(tmap, f"{k[0]}.experts.{t.proj}_proj.weight") or \
                f"blk.{t.layer}.ffn_{t.proj}_exps.weight"
            if gname.startswith("blk.") and "_exps" not in gname:
                gname = f"blk.{t.layer}.ffn_{t.proj}_exps.weight"
            shape = (len(members),) + tuple(members[0].shape)
            p.jobs.append(_job(members, gname, shape, t.scheme.name, allow_lossy,
                               fold=k[0] + ".router.per_expert_scale" if (t.proj == "down" and k[0] in nvfp4_down_layers) else None,
                               quantize=quantize))
            continue
        gname = _name(tmap, t.name)
        if gname is None:
            raise UnsupportedError(f"{src.source}: no GGUF name for tensor '{t.name}' (architecture {arch_name})",
                                   hint="llama.cpp's converter may know it; nvfp4tools uses gguf-py's name tables")
        p.jobs.append(_job([t], gname, tuple(t.shape), t.scheme.name, allow_lossy, quantize=quantize))
    if src.arch and src.arch.model_type.startswith("gemma4"):
        rope = _gemma4_rope_freqs(src)
        if rope is not None:
            p.jobs.append(Job([], [GOut("rope_freqs.weight", "F32", (len(rope),), "const", 4 * len(rope))], True,
                              "generate", note=json.dumps(rope)))
    return p


def _job(members: list[TensorInfo], gname: str, shape: tuple[int, ...], scheme: str, allow_lossy: bool,
         fold: str | None = None, quantize: str | None = None):
    from nvfp4tools.convert import QUANTIZE_ROLES, Job

    t = members[0]
    base = gname[: -len(".weight")]
    # int4 symmetric without g_idx maps onto Q4_0 exactly when its group is a multiple of 32
    int4_sym = (t.scheme.element == "int4" and t.scheme.symmetric and t.part("zero_point") is None
                and t.part("g_idx") is None and t.part("block_scale") is not None)
    group = t.shape[-1] // t.part("block_scale").stored_shape[-1] if int4_sym else 0
    exact_int4 = int4_sym and group % 32 == 0
    requant = t.role in QUANTIZE_ROLES and len(shape) >= 2 and shape[-1] % 32 == 0 and allow_lossy and (
        # --quantize q4_0: every linear ends up Q4_0 (unquantized ones, and NVFP4 ones too, for
        # llama.cpp builds without NVFP4); int4 that Q4_0 cannot hold exactly only needs --allow-lossy
        (quantize == "q4_0" and (not t.scheme.quantized or t.scheme.name == "nvfp4"))
        or (t.scheme.element == "int4" and not exact_int4))
    if requant:
        # dequantized source -> ggml's reference Q4_0 quantizer (bit-exact with gguf-py's, which mirrors
        # quantize_row_q4_0_ref); per-tensor error goes to the report
        return Job([m.name for m in members], [GOut(gname, "Q4_0", shape, "q4_0", _nb("Q4_0", shape))], False,
                   "quantize->q4_0", note=f"from {t.scheme.name}")
    if scheme == "nvfp4":
        if shape[-1] % 64:
            raise UnsupportedError(f"{t.name}: in_features {shape[-1]} is not a multiple of 64 (GGUF NVFP4 block)")
        lead = shape[:-2]
        gshape = (lead[0],) if lead else (1,)
        outs = [GOut(gname, "NVFP4", shape, "nvfp4", _nb("NVFP4", shape)),
                GOut(base + ".scale", "F32", gshape, "scale", 4 * gshape[0])]
        if t.part("input_scale") is not None:
            outs.append(GOut(base + ".input_scale", "F32", gshape, "input_scale", 4 * gshape[0]))
        return Job([m.name for m in members], outs, True, "renibble" + ("+fold" if fold else ""), note=fold or "")
    if int4_sym:
        if not exact_int4:
            raise UnsupportedError(f"{t.name}: int4 group {group} is not a multiple of 32; Q4_0 cannot hold it exactly")
        return Job([m.name for m in members], [GOut(gname, "Q4_0", shape, "q4_0", _nb("Q4_0", shape))], True,
                   "int4->q4_0", note=f"group {group}")
    if t.scheme.quantized:
        raise UnsupportedError(f"{t.name}: {t.scheme.name} has no exact GGUF form",
                               hint="lossless paths to GGUF: NVFP4, int4 symmetric group 32/64/128 (Q4_0)")
    d = t.part("data").stored_dtype
    # llama.cpp keeps 1-D tensors and MoE routers (ffn_gate_inp) in F32
    f32 = len(shape) == 1 or d == "F32" or gname.endswith(("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"))
    gtype = "F32" if f32 else ("F16" if d == "F16" else "BF16")
    return Job([m.name for m in members], [GOut(gname, gtype, shape, "raw", _nb(gtype, shape), d)], True, "copy")


def _gemma4_rope_freqs(src: Checkpoint) -> list[float] | None:
    """llama.cpp's Gemma 4 rope_freqs: full layers use proportional RoPE (partial factor p): ggml's
    neox RoPE rotates the first dims, so frequency factors 1.0 for the rotated pairs and 1e30 for
    the rest (conversion/gemma.py generate_extra_tensors)."""
    from nvfp4tools.arch import text_config

    cfg = text_config(src.config)
    rp = (cfg.get("rope_parameters") or {}).get("full_attention") or {}
    if rp.get("rope_type") != "proportional":
        return None
    full = [l for l in src.arch.layers if l.kind == "full"]
    if not full:
        return None
    hd = full[0].head_dim_k
    n_rot = int(hd * float(rp.get("partial_rotary_factor", 1.0)) / 2)
    return [1.0] * n_rot + [1e30] * (hd // 2 - n_rot)


def _metadata(w, src: Checkpoint, arch_name: str, ftype: int) -> None:
    import gguf

    from nvfp4tools.arch import text_config

    a = src.arch
    cfg = text_config(src.config)
    p = arch_name + "."
    w.add_uint32(p + "block_count", a.n_layers)
    w.add_uint32(p + "context_length", a.max_position_embeddings or 4096)
    w.add_uint32(p + "embedding_length", a.hidden_size)
    if a.intermediate_size:
        w.add_uint32(p + "feed_forward_length", a.intermediate_size)
    w.add_uint32(p + "attention.head_count", a.n_heads)
    kvs = [l.n_kv_heads for l in a.layers]
    if len(set(kvs)) == 1:
        w.add_uint32(p + "attention.head_count_kv", kvs[0])
    else:
        w.add_array(p + "attention.head_count_kv", kvs)
    full = [l for l in a.layers if l.kind == "full"] or list(a.layers)
    swa = [l for l in a.layers if l.kind == "sliding"]
    w.add_uint32(p + "attention.key_length", full[0].head_dim_k)
    w.add_uint32(p + "attention.value_length", full[0].head_dim_v)
    eps = cfg.get("rms_norm_eps")
    if eps is not None:
        w.add_float32(p + "attention.layer_norm_rms_epsilon", float(eps))
    if swa:
        w.add_uint32(p + "attention.key_length_swa", swa[0].head_dim_k)
        w.add_uint32(p + "attention.value_length_swa", swa[0].head_dim_v)
        w.add_uint32(p + "attention.sliding_window", int(swa[0].window or 0))
        w.add_array(p + "attention.sliding_window_pattern", [l.kind == "sliding" for l in a.layers])
    rp = cfg.get("rope_parameters") or {}
    theta_full = (rp.get("full_attention") or rp).get("rope_theta") or cfg.get("rope_theta")
    if theta_full:
        w.add_float32(p + "rope.freq_base", float(theta_full))
    if "sliding_attention" in rp:
        w.add_float32(p + "rope.freq_base_swa", float(rp["sliding_attention"].get("rope_theta", 10000.0)))
    w.add_string("general.type", "model")
    if arch_name == "gemma4":
        w.add_uint32(p + "embedding_length_per_layer_input", int(cfg.get("hidden_size_per_layer_input") or 0))
        w.add_uint32(p + "attention.shared_kv_layers", int(cfg.get("num_kv_shared_layers") or 0))
        # full layers: proportional RoPE over the whole head (rope_freqs masks the unrotated pairs)
        w.add_uint32(p + "rope.dimension_count", full[0].head_dim_k)
        if swa:
            part = float(((rp.get("sliding_attention") or {}).get("partial_rotary_factor")) or 1.0)
            w.add_uint32(p + "rope.dimension_count_swa", int(swa[0].head_dim_k * part))
        if cfg.get("final_logit_softcapping"):
            w.add_float32(p + "final_logit_softcapping", float(cfg["final_logit_softcapping"]))
    if a.n_experts:
        w.add_uint32(p + "expert_count", a.n_experts)
        w.add_uint32(p + "expert_used_count", a.n_experts_active or 0)
        if a.expert_intermediate_size:
            w.add_uint32(p + "expert_feed_forward_length", a.expert_intermediate_size)
    w.add_uint32("general.file_type", ftype)
    w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
    w.add_string("general.name", os.path.basename(os.path.abspath(src.source)))


def _tokenizer(w, src: Checkpoint, arch_name: str) -> None:
    """Vocabulary from tokenizer.json (read as JSON: no transformers needed): tokens by id, token
    types (byte-fallback ``<0xNN>`` = BYTE, added special tokens = CONTROL, else NORMAL), BPE merges,
    and bos/eos/pad/unk ids from the added tokens' names in tokenizer_config.json."""
    path = os.path.join(src.root, "tokenizer.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as fh:
            tj = json.load(fh)
        model = tj["model"]
        vocab: dict[str, int] = dict(model["vocab"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnsupportedError(f"{path}: cannot read the vocabulary ({e})") from None
    special: dict[int, str] = {}
    for at in tj.get("added_tokens") or []:
        vocab.setdefault(at["content"], at["id"])
        if at.get("special"):
            special[at["id"]] = at["content"]
    n = max(vocab.values()) + 1
    toks = [f"[PAD{i}]" for i in range(n)]
    for text, i in vocab.items():
        toks[i] = text
    types = []
    for i, text in enumerate(toks):
        if i in special:
            types.append(3)                       # CONTROL
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(6)                       # BYTE
        else:
            types.append(1)                       # NORMAL
    w.add_string("tokenizer.ggml.model", "gemma4" if arch_name == "gemma4" else "llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * n)
    w.add_token_types(types)
    merges = model.get("merges")
    if merges:
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    tc_path = os.path.join(src.root, "tokenizer_config.json")
    tc = {}
    if os.path.isfile(tc_path):
        with open(tc_path) as fh:
            tc = json.load(fh)
    # gguf-py Keys.Tokenizer spellings
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):
        tok = tc.get(f"{role}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and tok in vocab:
            w.add_uint32(f"tokenizer.ggml.{key}", vocab[tok])
    if "add_bos_token" in tc or arch_name.startswith("gemma"):
        w.add_bool("tokenizer.ggml.add_bos_token", bool(tc.get("add_bos_token", True)))


def write_gguf_plan(p, out_dir: str, basename: str) -> list[str]:
    import gguf
    from gguf import GGMLQuantizationType as T

    from nvfp4tools.convert import _Progress, _exact_meta

    src = p.src
    arch, arch_name = _gguf_arch(src)
    outs = [(j, o) for j in p.jobs for o in j.outs]
    # drop sidecars that would hold exactly 1.0 (decided from the small scale tensors, before writing)
    ones = _unit_sidecars(src, p)
    outs = [(j, o) for j, o in outs if o.key not in ones]
    kinds = {o.gtype for _, o in outs}
    ftype = gguf.LlamaFileType.MOSTLY_NVFP4 if "NVFP4" in kinds else (
        gguf.LlamaFileType.MOSTLY_Q4_0 if "Q4_0" in kinds else gguf.LlamaFileType.MOSTLY_BF16)
    name = basename if basename.endswith(".gguf") else basename + ".gguf"
    path = os.path.join(out_dir, name)
    w = gguf.GGUFWriter(path, arch_name)
    _metadata(w, src, arch_name, int(ftype))
    _tokenizer(w, src, arch_name)
    if src.config:
        w.add_string("nvfp4tools.config_json", json.dumps(src.config))
    # the safetensors name(s) and stored dtype behind every GGUF tensor, so a conversion back restores them
    w.add_array("nvfp4tools.hf_names", [
        f"{o.key}={','.join(j.sources)}" + (f"|{src.tensors[j.sources[0]].part('data').stored_dtype}" if o.what == "raw"
                                             else f"|{_scale_dtype(src.tensors[j.sources[0]])}" if o.what == "q4_0" else "")
        for j, o in outs if o.what in ("nvfp4", "q4_0", "raw")])
    restore = _fold_restore(src, p)
    for k, v in restore.items():
        w.add_array(k, [float(x) for x in v])
    ttype = {"NVFP4": T.NVFP4, "Q4_0": T.Q4_0, "F32": T.F32, "BF16": T.BF16, "F16": T.F16}
    for _, o in outs:
        if o.gtype in ("NVFP4", "Q4_0"):
            per = 36 if o.gtype == "NVFP4" else 18
            blk = 64 if o.gtype == "NVFP4" else 32
            bshape = o.shape[:-1] + (o.shape[-1] // blk * per,)
            w.add_tensor_info(o.key, bshape, np.dtype(np.uint8), o.nbytes, raw_dtype=ttype[o.gtype])
        else:
            np_dt = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}[o.gtype]
            w.add_tensor_info(o.key, o.shape, np.dtype(np_dt), o.nbytes, raw_dtype=ttype[o.gtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    align = 32
    exact = _exact_meta(src)
    prog = _Progress(sum(o.nbytes for _, o in outs))
    with open(path, "r+b") as fh:
        fh.seek(0, os.SEEK_END)
        start = -(-fh.tell() // align) * align
        off = 0
        offsets = {}
        for _, o in outs:
            offsets[o.key] = start + off
            off += -(-o.nbytes // align) * align
        for j in p.jobs:
            keys = {o.key for o in j.outs if o.key not in ones}
            for key, data in _gguf_job_bytes(src, j, exact, restore):
                if key in keys:
                    fh.seek(offsets[key])
                    fh.write(data)
                    prog.add(len(data))
        fh.truncate(start + off)
    prog.close()
    return [name]


def _unit_sidecars(src: Checkpoint, p) -> set[str]:
    from nvfp4tools.io import PartReader
    from nvfp4tools.model import canonical_scale

    ones: set[str] = set()
    with PartReader(src.root) as r:
        for j in p.jobs:
            if not j.action.startswith("renibble") or j.note:
                continue  # folded down scales are never trivially 1
            for role, what in (("global_scale", "scale"), ("input_scale", "input_scale")):
                vals = []
                for n in j.sources:
                    part = src.tensors[n].part(role)
                    if part is None:
                        break
                    vals += [canonical_scale(v, part) for v in r.values(part)]
                if vals and all(np.float32(v) == np.float32(1.0) for v in vals):
                    ones.update(o.key for o in j.outs if o.what == what)
    return ones


def _fold_restore(src: Checkpoint, p) -> dict[str, np.ndarray]:
    """Original per_expert_scale and down weight_scale_2 values of folded Gemma 4 layers."""
    from nvfp4tools.tensors import load_part

    out: dict[str, np.ndarray] = {}
    for j in p.jobs:
        if j.action == "renibble+fold":
            pes = src.tensors[j.note]
            out[f"nvfp4tools.restore.{j.note}"] = np.asarray(load_part(src.root, pes.part("data")), np.float32).reshape(-1)
            # the down projections' own weight_scale_2, so the fold can be undone bit for bit
            from nvfp4tools.model import canonical_scale
            from nvfp4tools.io import PartReader
            with PartReader(src.root) as r:
                g = [canonical_scale(r.values(src.tensors[n].part("global_scale"))[0], src.tensors[n].part("global_scale"))
                     for n in j.sources]
            out[f"nvfp4tools.restore.{j.outs[0].key}.scale"] = np.array(g, np.float32)
    return out


def _gguf_job_bytes(src: Checkpoint, j, exact, restore):
    from nvfp4tools.convert import canon_of
    from nvfp4tools.kernels_ref.ggml_quants import nvfp4_to_gguf_blocks

    if j.action == "generate":
        yield j.outs[0].key, np.asarray(json.loads(j.note), "<f4").tobytes()
        return
    if j.action == "quantize->q4_0":
        from nvfp4tools.convert import LOSSY_REPORT
        from nvfp4tools.kernels_ref.ggml_quants import dequantize_q4_0, quantize_q4_0
        from nvfp4tools.tensors import dequantize
        blobs = []
        for n in j.sources:
            w = dequantize(src, src.tensors[n]).astype(np.float32)
            q = quantize_q4_0(w)
            back = dequantize_q4_0(q).reshape(w.shape)
            blobs.append(q.tobytes())
            err = back.astype(np.float64) - w
            sig, noise = float(np.sum(w.astype(np.float64) ** 2)), float(np.sum(err ** 2))
            LOSSY_REPORT.append({"tensor": n, "from": src.tensors[n].scheme.name, "to": "q4_0",
                                 "max_abs_err": float(np.max(np.abs(err))) if err.size else 0.0,
                                 "rel_rms_err": (noise / sig) ** 0.5 if sig else 0.0,
                                 "sqnr_db": 10 * np.log10(sig / noise) if noise and sig else None})
        yield j.outs[0].key, b"".join(blobs)
        return
    canons = [canon_of(src, src.tensors[n], exact) for n in j.sources] if len(j.sources) == 1 else None
    if canons is None:  # stacked experts, one at a time
        blobs, gl, inp = [], [], []
        key = j.outs[0].key
        for n in j.sources:
            c = canon_of(src, src.tensors[n], exact)
            if c.kind == "nvfp4":
                blobs.append(nvfp4_to_gguf_blocks(c.codes, c.scale_bytes).tobytes())
                gl.append(np.float32(c.global_mult))
                if c.input_mult is not None:
                    inp.append(np.float32(c.input_mult))
            elif c.kind == "int4":
                blobs.append(_q4_0_bytes(c))
            else:
                blobs.append(np.ascontiguousarray(c.array).tobytes())
        yield key, b"".join(blobs)
        if gl:
            g = np.array(gl, np.float32)
            if j.note:  # Gemma 4: fold router.per_expert_scale into the down scale (fp32 product)
                g = (g * restore[f"nvfp4tools.restore.{j.note}"].astype(np.float32)).astype(np.float32)
            yield next(o.key for o in j.outs if o.what == "scale"), g.astype("<f4").tobytes()
        if inp:
            yield next(o.key for o in j.outs if o.what == "input_scale"), np.array(inp, "<f4").tobytes()
        return
    c = canons[0]
    o = j.outs[0]
    if c.kind == "nvfp4":
        yield o.key, nvfp4_to_gguf_blocks(c.codes, c.scale_bytes).tobytes()
        yield o.key[: -len(".weight")] + ".scale", np.asarray(c.global_mult, "<f4").reshape(-1).tobytes()
        if c.input_mult is not None:
            yield o.key[: -len(".weight")] + ".input_scale", np.asarray(c.input_mult, "<f4").reshape(-1).tobytes()
    elif c.kind == "int4":
        yield o.key, _q4_0_bytes(c)
    else:
        a = c.array
        if o.gtype == "F32":
            if c.dtype == "BF16":
                a = bf16_bits_to_f32(a)
            elif c.dtype == "F16":
                a = np.asarray(a).view(np.float16).astype(np.float32)
            a = np.asarray(a, np.float32)
        yield o.key, np.ascontiguousarray(a).tobytes()


def _q4_0_bytes(c) -> bytes:
    """int4 group-symmetric -> Q4_0 blocks: nibble = q + 8, d = the group scale in fp16 (repeated for
    groups of 64/128). bf16 scales convert exactly while representable in fp16; otherwise refused."""
    from nvfp4tools.kernels_ref.ggml_quants import q4_0_join

    rep = c.group // 32
    d = np.asarray(c.group_scales)
    if c.dtype == "BF16":
        f = bf16_bits_to_f32(d)
        with np.errstate(over="ignore"):
            h = f.astype(np.float16)
        if not np.array_equal(h.astype(np.float32), f):
            bad = f[h.astype(np.float32) != f][0]
            raise UnsupportedError(f"{c.name}: bf16 group scale {float(bad)!r} is not representable in fp16 (Q4_0's d)",
                                   hint="this tensor cannot become Q4_0 exactly")
        d16 = h
    elif c.dtype == "F16":
        d16 = d.view(np.float16)
    else:
        f = np.asarray(d, np.float32)
        d16 = f.astype(np.float16)
        if not np.array_equal(d16.astype(np.float32), f):
            raise UnsupportedError(f"{c.name}: {c.dtype} group scales are not representable in fp16 (Q4_0's d)")
    d16 = np.repeat(d16, rep, axis=-1)
    codes = (np.asarray(c.q).astype(np.int16) + 8).astype(np.uint8)
    return q4_0_join(codes, d16).tobytes()


def _scale_dtype(t: TensorInfo) -> str:
    bs = t.part("block_scale")
    return bs.stored_dtype if bs is not None else "F16"   # quantized here: Q4_0's own fp16 scales
