"""Writing GGUF (llama.cpp's layout) through the gguf package's header writer and nvfp4tools'
one encoder.

Tensor names come from gguf-py's tensor-name map for the architecture (``get_tensor_name_map``,
``language_model.`` stripped as llama.cpp's converter does); what llama.cpp's converter does per
architecture (Q/K permutation, generated ``rope_freqs``, Gemma 4's per-expert-scale fold) is data in
:mod:`.gguf_arch`. NVFP4 weights are re-nibbled into 64-element ``block_nvfp4`` blocks with the
E4M3 scale bytes kept; the per-tensor global goes to an F32 ``<t>.scale`` sidecar and the input
scale to ``<t>.input_scale`` (conversion/base.py ``_repack_nvfp4``); a global of exactly 1.0 is
omitted (the reader's default). Per-expert weights are stacked ``[E, out, in]`` with ``[E]``
sidecars; a fused ``gate_up_proj`` is split into ``ffn_gate_exps`` and ``ffn_up_exps``. int4
group-symmetric weights with group 32 (or a multiple, by repeating the scale) become Q4_0. 1-D
tensors and MoE routers are written F32, other unquantized tensors as stored.

Everything a conversion back to safetensors needs is recorded under ``nvfp4tools.*`` keys: the
source names and dtypes, config.json, and the values a fold changed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from nvfp4tools.convert.canon import View, is_int4_sym
from nvfp4tools.convert.options import Options
from nvfp4tools.convert.plan import Action, Kind, Plan, RowSlice
from nvfp4tools.errors import UnsupportedError, UsageError
from nvfp4tools.model import Checkpoint, TensorInfo

from ._ggml_types import BY_NAME
from .gguf_arch import ARCHES, REFUSED, GGUFArch, llama3_rope_factors, qk_permute_heads, scaled_in_llama_cpp
from .gguf_metadata import metadata, rope_scaling_keys, tokenizer
from .layouts import Out

QUANTIZE_ROLES = ("attention", "mlp", "experts", "shared_expert")
ALIGN = 32   # gguf-py GGUF_DEFAULT_ALIGNMENT
DROPPED_ROLES = {"vision": "vision tower (llama.cpp keeps it in a separate mmproj file)",
                 "projector": "multimodal projector (llama.cpp keeps it in a separate mmproj file)"}


def gguf_arch(src: Checkpoint) -> tuple[GGUFArch, Any, str]:
    import gguf

    mt = (src.arch.model_type if src.arch else "") or ""
    spec = ARCHES.get(mt)
    if spec is None:
        why = REFUSED.get(mt)
        raise UnsupportedError(
            f"{src.source}: writing GGUF for architecture {mt or '(unknown)'!r} is not supported"
            + (f": {why}" if why else ""),
            hint=f"GGUF output supports {', '.join(sorted(ARCHES))}; convert to modelopt or compressed-tensors instead")
    arch = getattr(gguf.MODEL_ARCH, spec.gguf_arch)
    return spec, arch, gguf.MODEL_ARCH_NAMES[arch]


def _name(tmap, hf: str) -> str | None:
    n = hf.replace("model.language_model.", "model.").replace("language_model.model.", "model.")
    # DeepSeek's router bias is a parameter named like a module (conversion/base.py filter_tensors)
    n = n.replace(".e_score_correction_bias", ".e_score_correction.bias")
    if n.endswith(".router.scale"):
        return n.replace("model.layers.", "blk.").replace(".router.scale", ".ffn_gate_inp.scale")
    if n.endswith(".router.per_expert_scale"):   # not folded (Q4_0 down experts): llama.cpp's own tensor
        return n.replace("model.layers.", "blk.").replace(".router.per_expert_scale", ".ffn_down_exps.scale")
    suffix = ".weight" if n.endswith(".weight") else (".bias" if n.endswith(".bias") else "")
    base = n[: -len(suffix)] if suffix else n
    g = tmap.get_name(base)
    return None if g is None else g + (suffix or ".weight")


def _exps_name(tmap, prefix: str, proj: str, layer: int | None) -> str:
    g = _name(tmap, f"{prefix}.experts.{proj}_proj.weight")
    if g is None or "_exps" not in g:
        g = f"blk.{layer}.ffn_{proj}_exps.weight"
    return g


class GGUFWriter:
    name = "gguf"
    suffix = ".gguf"

    # -- planning ------------------------------------------------------------------------------
    def plan(self, src: Checkpoint, opts: Options, view: View) -> Plan:
        import gguf

        if src.format == "gguf":
            raise UsageError("the source is already GGUF", hint="convert to modelopt or compressed-tensors instead")
        if opts.quantize is not None and opts.quantize != "q4_0":
            raise UsageError(f"--to gguf takes --quantize q4_0, not {opts.quantize}")
        if opts.experts is not None:
            raise UsageError("--experts applies to safetensors outputs; GGUF always stacks experts")
        spec, arch, arch_name = gguf_arch(src)
        self.spec = spec
        from .gguf_arch import gguf_config
        rope_scaling_keys(src, gguf_config(src))   # refused here, before anything is written
        tmap = gguf.get_tensor_name_map(arch, src.arch.n_layers)
        p = Plan(src, "gguf", [])
        p.notes.append(f"architecture {arch_name} ({spec.source})")
        from .validate import read_json
        if read_json(src.root, "tokenizer.json") is None:
            p.notes.append("no tokenizer.json in the source: the GGUF's vocabulary is 'none' (llama.cpp loads it and "
                           "runs token ids, not text); add the tokenizer files to the source folder for text")
        tensors = list(src.tensors.values())
        lossy_q4 = opts.allow_lossy and opts.quantize == "q4_0"
        if not any(t.scheme.quantized for t in tensors) and not lossy_q4:
            p.notes.append("no quantized tensor in the source: the GGUF holds its weights as stored")
        groups: dict[tuple[str, str], list[TensorInfo]] = {}
        for t in tensors:
            if t.role == "experts" and t.expert is not None and t.proj in ("gate", "up", "down"):
                groups.setdefault((t.name.split(f".experts.{t.expert}.")[0], t.proj), []).append(t)
        fold_layers = set()
        if spec.fold_per_expert_scale and not lossy_q4:
            fold_layers = {k[0] for k, v in groups.items() if k[1] == "down" and v[0].scheme.name == "nvfp4"}
        done: set[tuple[str, str]] = set()
        why_dropped: dict[str, str] = {}
        for t in tensors:
            drop = DROPPED_ROLES.get(t.role)
            if spec.drop_mtp and t.layer is not None and t.layer >= src.arch.n_layers:
                drop = "multi-token-prediction layers (llama.cpp's converter drops layers >= num_hidden_layers)"
            if spec.drop_tied_lm_head and t.role == "lm_head" and src.arch.tie_word_embeddings:
                drop = "lm_head (tied to the embedding: llama.cpp's converter skips it)"
            if drop is not None:
                p.dropped.append(t.name)
                why_dropped[t.name] = drop
                continue
            if spec.experts_in_out_interleaved and t.role == "experts" and t.layer is not None:
                p.actions += self._interleaved_experts(t, opts)
                continue
            if t.name.endswith("router.per_expert_scale") and t.name.split(".router.")[0] in fold_layers:
                continue   # folded into the down experts' scale (recorded for the way back)
            if t.role == "experts" and t.expert is not None and t.proj in ("gate", "up", "down"):
                k = (t.name.split(f".experts.{t.expert}.")[0], t.proj)
                if k in done:
                    continue
                done.add(k)
                members = sorted(groups[k], key=lambda x: x.expert)
                if [m.expert for m in members] != list(range(len(members))):
                    raise UnsupportedError(f"{k[0]}: experts {[m.expert for m in members]} of {t.proj}_proj are not "
                                           "0..E-1; they cannot be stacked")
                gname = _exps_name(tmap, k[0], t.proj, t.layer)
                shape = (len(members),) + tuple(members[0].shape)
                fold = k[0] + ".router.per_expert_scale" if (t.proj == "down" and k[0] in fold_layers) else None
                p.actions.append(self._action(view, members, gname, shape, opts, Kind.STACK, fold=fold))
                continue
            if t.role == "experts" and len(t.shape) == 3 and t.proj == "gate_up" and spec.split_gate_up:
                half = t.shape[1] // 2
                prefix = t.name.rsplit(".experts.", 1)[0]
                for i, proj in enumerate(("gate", "up")):
                    gname = _exps_name(tmap, prefix, proj, t.layer)
                    p.actions.append(self._action(view, [t], gname, (t.shape[0], half, t.shape[2]), opts, Kind.SPLIT,
                                                  rows=RowSlice(None, i * half, (i + 1) * half)))
                continue
            if spec.mla_split and t.proj == "kv_b":
                p.actions += self._mla_actions(src, view, t, opts)
                continue
            gname = _name(tmap, t.name)
            if t.role == "experts" and len(t.shape) == 3 and t.proj == "down":
                gname = _exps_name(tmap, t.name.rsplit(".experts.", 1)[0], "down", t.layer)
            if gname is None:
                raise UnsupportedError(f"{src.source}: no GGUF name for tensor '{t.name}' (architecture {arch_name})",
                                       hint="nvfp4tools names GGUF tensors with gguf-py's tables; this tensor has none")
            heads = qk_permute_heads(src.arch, t) if spec.permute_qk else None
            p.actions.append(self._action(view, [t], gname, tuple(t.shape), opts, Kind.COPY, permute=heads))
        rope = self._rope_freqs(src, spec)
        if rope is not None:
            p.actions.append(Action(Kind.GENERATE, (), (Out("rope_freqs.weight", "F32", (len(rope),), "raw"),), True,
                                    "rope_freqs.weight", const=np.asarray(rope, "<f4").tobytes(),
                                    note="llama.cpp's RoPE frequency factors"))
        if p.dropped:
            kinds = sorted(set(why_dropped.values()))
            p.notes.append(f"not written: {len(p.dropped)} tensors of the {'; '.join(kinds)}")
        self._drop_unit_globals(p, view)
        return p

    def _action(self, view: View, members: list[TensorInfo], gname: str, shape: tuple[int, ...], opts: Options,
                kind: Kind, fold: str | None = None, rows: RowSlice | None = None, permute: int | None = None) -> Action:
        t = members[0]
        names = tuple(m.name for m in members)
        base = gname[: -len(".weight")] if gname.endswith(".weight") else gname
        exact_int4 = is_int4_sym(t) and (t.scheme.name == "q4_0" or
                                         (t.shape[-1] // t.part("block_scale").stored_shape[-1]) % 32 == 0)
        requant = opts.allow_lossy and t.role in QUANTIZE_ROLES and len(shape) >= 2 and shape[-1] % 32 == 0 \
            and gname.endswith(".weight") and kind != Kind.SPLIT and (
                (opts.quantize == "q4_0" and (not t.scheme.quantized or t.scheme.name == "nvfp4"))
                or (t.scheme.quantized and t.scheme.name != "nvfp4" and not exact_int4))
        if requant:
            return Action(Kind.QUANTIZE, names, (Out(gname, "Q4_0", shape, "q4_0_blocks"),), False, gname,
                          stack="one" if kind == Kind.STACK else None, quantize_to="q4_0", permute_heads=permute,
                          note=f"from {t.scheme.name}")
        stack = "one" if kind == Kind.STACK else None
        if t.scheme.name == "nvfp4" and not scaled_in_llama_cpp(self.spec.gguf_arch, gname):
            if not opts.allow_lossy:
                raise UnsupportedError(
                    f"{t.name}: llama.cpp's {self.spec.gguf_arch.lower()} graph does not apply an NVFP4 global scale "
                    f"to '{gname}' (gguf_arch.GRAPH_SCALED), so this NVFP4 tensor would load with the wrong "
                    "magnitude", hint="pass --allow-lossy to write such tensors dequantized to BF16, or convert to "
                                      "modelopt or compressed-tensors")
            return Action(Kind.QUANTIZE, names, (Out(gname, "BF16", shape, "raw"),), False, gname, stack=stack,
                          quantize_to="bf16", permute_heads=permute, note=f"from {t.scheme.name}, dequantized")
        if t.scheme.name == "nvfp4":
            block = BY_NAME["NVFP4"][0]
            if shape[-1] % block:
                raise UnsupportedError(f"{t.name}: in_features {shape[-1]} is not a multiple of {block} (GGUF NVFP4 block)",
                                       hint="keep this checkpoint in safetensors (modelopt or compressed-tensors)")
            gshape = (shape[0],) if len(shape) == 3 else (1,)
            outs = [Out(gname, "NVFP4", shape, "nvfp4_blocks"), Out(base + ".scale", "F32", gshape, "global")]
            if t.part("input_scale") is not None:
                outs.append(Out(base + ".input_scale", "F32", gshape, "input"))
            k = kind if kind != Kind.COPY else Kind.RENIBBLE
            return Action(k, names, tuple(outs), True, gname, rows=rows, stack=stack, fold=fold,
                          permute_heads=permute)
        if is_int4_sym(t):
            if not exact_int4:
                raise UnsupportedError(f"{t.name}: int4 group is not a multiple of 32; Q4_0 cannot hold it exactly",
                                       hint="pass --allow-lossy to requantize to Q4_0")
            return Action(kind if kind != Kind.COPY else Kind.REPACK, names, (Out(gname, "Q4_0", shape, "q4_0_blocks"),),
                          True, gname, rows=rows, stack=stack, permute_heads=permute)
        if t.scheme.quantized:
            raise UnsupportedError(f"{t.name}: {t.scheme.name} has no exact GGUF form",
                                   hint="lossless paths to GGUF: NVFP4, int4 symmetric group 32/64/128 (Q4_0); "
                                        "--allow-lossy --quantize q4_0 requantizes")
        d = t.part("data").stored_dtype
        if d not in ("F32", "F16", "BF16"):
            raise UnsupportedError(f"{t.name}: a {d} tensor has no GGUF type nvfp4tools writes exactly",
                                   hint="GGUF output holds F32/F16/BF16 beside its quantized tensors; convert to "
                                        "safetensors, which keep it as stored")
        # llama.cpp keeps 1-D tensors and MoE routers (ffn_gate_inp) in F32
        f32 = len(shape) == 1 or d == "F32" or gname.endswith(("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"))
        gtype = "F32" if f32 else ("F16" if d == "F16" else "BF16")
        return Action(Kind.CAST if kind == Kind.COPY and gtype != d else kind, names, (Out(gname, gtype, shape, "raw"),),
                      True, gname, rows=rows, stack=stack, permute_heads=permute)

    @staticmethod
    def _interleaved_experts(t: TensorInfo, opts: Options) -> list[Action]:
        """gpt-oss experts (transformers GptOssExperts: ``gate_up_proj`` [E, H, 2I] with gate and up
        columns interleaved, ``down_proj`` [E, I, H], biases [E, 2I] / [E, H]) as llama.cpp writes them:
        transposed to [E, out, in], gate = rows 0::2, up = rows 1::2 (conversion/gpt_oss.py
        GptOssModel.modify_tensors); biases F32. Values are only rearranged: exact for unquantized
        experts; a 4-bit expert's blocks run along the other axis and have no exact form here."""
        from nvfp4tools.convert.plan import Rearrange

        from nvfp4tools.convert.encode import rearranged_shape

        if t.scheme.name == "mxfp4" and not any(p.transposed for p in t.parts):
            raise UnsupportedError(f"{t.name}: gpt-oss's own MXFP4 experts are not written to GGUF by nvfp4tools "
                                   "(llama.cpp's convert_hf_to_gguf.py repacks them to its MXFP4 type)",
                                   hint="run llama.cpp's converter on this checkpoint; nvfp4tools inspects and "
                                        "verifies the GGUF it writes")
        if t.scheme.quantized:
            raise UnsupportedError(f"{t.name}: {t.scheme.name} gpt-oss experts stored [E, in, out] cannot be "
                                   "rearranged into llama.cpp's [E, out, in] layout exactly",
                                   hint="convert to modelopt or compressed-tensors, or write GGUF from the BF16 model")
        layer = f"blk.{t.layer}"
        bias = t.name.endswith("_bias") or t.name.endswith(".bias")
        d = t.part("data").stored_dtype
        dtype = "F32" if bias or d == "F32" else ("F16" if d == "F16" else "BF16")
        stem = t.name.rsplit(".", 1)[-1] if not t.name.endswith(".weight") else t.name.rsplit(".", 2)[-2]
        proj = t.proj or ("gate_up" if stem.startswith("gate_up_proj") else "down" if stem.startswith("down_proj")
                          else None)
        if proj == "gate_up":
            halves = (("gate", 0), ("up", 1))
            rs = [(proj, Rearrange(transpose=not bias, axis=-1 if bias else -2, start=i, step=2)) for proj, i in halves]
        elif proj == "down":
            rs = [("down", Rearrange(transpose=not bias, axis=-1, start=0, step=1))]
        else:
            raise UnsupportedError(f"{t.name}: no GGUF name for this gpt-oss expert tensor")
        acts = []
        for proj, r in rs:
            gname = f"{layer}.ffn_{proj}_exps.{'bias' if bias else 'weight'}"
            shape = rearranged_shape(tuple(t.shape), r)
            acts.append(Action(Kind.SPLIT, (t.name,), (Out(gname, dtype, shape, "raw"),), True, gname, rearrange=r))
        return acts

    @staticmethod
    def _mla_actions(src: Checkpoint, view: View, t: TensorInfo, opts: Options) -> list[Action]:
        """kv_b_proj -> attn_k_b, attn_v_b (see plan.MLASplit). The halves are rearranged values:
        exact from unquantized weights; a quantized kv_b has no transposed 4-bit form, so it is
        refused unless --allow-lossy, which writes both halves dequantized to BF16."""
        from nvfp4tools.arch import text_config
        from nvfp4tools.convert.plan import MLASplit

        cfg = text_config(src.config)
        n_head, nope, v = src.arch.n_heads, int(cfg["qk_nope_head_dim"]), int(cfg["v_head_dim"])
        r = t.shape[-1]
        if t.shape[0] != n_head * (nope + v):
            raise UnsupportedError(f"{t.name}: shape {list(t.shape)} is not [n_head * (qk_nope_head_dim + v_head_dim), "
                                   f"kv_lora_rank] = [{n_head} * ({nope} + {v}), {r}]")
        base = t.name.replace("model.language_model.", "model.").replace("model.layers.", "blk.").split(".self_attn.")[0]
        lossy = t.scheme.quantized
        if lossy and not opts.allow_lossy:
            raise UnsupportedError(f"{t.name}: a quantized ({t.scheme.name}) MLA kv_b_proj cannot go to GGUF exactly: "
                                   "llama.cpp needs it split and transposed (attn_k_b / attn_v_b), which has no "
                                   f"{t.scheme.name} form",
                                   hint="pass --allow-lossy to write the two halves dequantized to BF16, or keep "
                                        "kv_b_proj unquantized when quantizing (ModelOpt/llm-compressor: exclude it)")
        dtype = "BF16" if lossy else ("F32" if t.part("data").stored_dtype == "F32" else
                                      ("F16" if t.part("data").stored_dtype == "F16" else "BF16"))
        acts = []
        for part, shape in (("k", (n_head, r, nope)), ("v", (n_head, v, r))):
            gname = f"{base}.attn_{part}_b.weight"
            m = MLASplit(n_head, nope, v, part)
            if lossy:
                acts.append(Action(Kind.QUANTIZE, (t.name,), (Out(gname, dtype, shape, "raw"),), False, gname,
                                   quantize_to="bf16", mla=m, note=f"from {t.scheme.name}, dequantized"))
            else:
                acts.append(Action(Kind.SPLIT, (t.name,), (Out(gname, dtype, shape, "raw"),), True, gname, mla=m))
        return acts

    @staticmethod
    def _rope_freqs(src: Checkpoint, spec: GGUFArch) -> list[float] | None:
        from .gguf_arch import gguf_config

        cfg = gguf_config(src)
        if spec.rope_freqs == "gemma4_proportional":
            return _gemma4_rope_freqs(src)
        if spec.rope_freqs == "llama3":
            rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
            rp = dict(rp.get("full_attention", rp))
            rp.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
            head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
            return llama3_rope_factors(rp, int(head_dim))
        return None

    @staticmethod
    def _drop_unit_globals(p: Plan, view: View) -> None:
        """Omit ``.scale`` sidecars holding exactly 1.0 (the reader's default for a missing one)."""
        from nvfp4tools.convert.encode import scalar_mults

        for a in p.actions:
            if not a.exact or not any(o.what == "global" for o in a.outs) or a.fold:
                continue
            vals = scalar_mults(a, view, "global_scale")
            if vals and all(np.float32(v) == np.float32(1.0) for v in vals):
                a.outs = tuple(o for o in a.outs if o.what != "global")

    # -- writing -------------------------------------------------------------------------------
    def write(self, p: Plan, view: View, tmp: str, opts: Options, lossy: list, progress) -> list[str]:
        import gguf
        from gguf import GGMLQuantizationType as T

        from nvfp4tools.convert.stream import write_actions

        src = p.src
        spec, _, arch_name = gguf_arch(src)
        outs = [o for a in p.actions for o in a.outs]
        kinds = {o.dtype for o in outs}
        ftype = gguf.LlamaFileType.MOSTLY_NVFP4 if "NVFP4" in kinds else (
            gguf.LlamaFileType.MOSTLY_Q4_0 if "Q4_0" in kinds else gguf.LlamaFileType.MOSTLY_BF16)
        w = gguf.GGUFWriter(tmp, arch_name)
        metadata(w, src, arch_name, int(ftype))
        tokenizer(w, src, arch_name)
        if src.config:
            w.add_string("nvfp4tools.config_json", json.dumps(src.config))
        # the safetensors name(s) and stored dtype behind every GGUF tensor, so a conversion back restores them
        records = []
        for a in p.actions:
            o = a.outs[0]
            if not a.sources or a.kind == Kind.SPLIT or o.what not in ("nvfp4_blocks", "q4_0_blocks", "raw"):
                continue
            t0 = src.tensors[a.sources[0]]
            dt = t0.part("data").stored_dtype if o.what == "raw" else (
                (t0.part("block_scale").stored_dtype if t0.part("block_scale") is not None else "F16")
                if o.what == "q4_0_blocks" else "")
            records.append(f"{o.key}={','.join(a.sources)}" + (f"|{dt}" if dt else ""))
        w.add_array("nvfp4tools.hf_names", records)
        for k, v in self._restore_records(p, view).items():
            w.add_array(k, [float(x) for x in v])
        ttype = {name: getattr(T, name) for name in ("NVFP4", "Q4_0", "F32", "BF16", "F16")}   # gguf-py's ids
        np_dt = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}   # the bits each is written as
        for o in outs:
            if o.dtype in ("NVFP4", "Q4_0"):
                bshape = o.shape[:-1] + (o.nbytes // max(1, o.rows),)
                w.add_tensor_info(o.key, bshape, np.dtype(np.uint8), o.nbytes, raw_dtype=ttype[o.dtype])
            else:
                w.add_tensor_info(o.key, o.shape, np.dtype(np_dt[o.dtype]), o.nbytes, raw_dtype=ttype[o.dtype])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        start = -(-os.path.getsize(tmp) // ALIGN) * ALIGN
        offsets: dict[str, int] = {}
        off = 0
        for o in outs:
            offsets[o.key] = off
            off += -(-o.nbytes // ALIGN) * ALIGN
        with open(tmp, "r+b") as fh:
            fh.truncate(start + off)
        write_actions(tmp, start, offsets, p.actions, view, lossy, progress)
        return [os.path.basename(tmp)]

    @staticmethod
    def _restore_records(p: Plan, view: View) -> dict[str, np.ndarray]:
        """Original per_expert_scale and down weight_scale_2 values of folded Gemma 4 layers."""
        out: dict[str, np.ndarray] = {}
        for a in p.actions:
            if a.fold is None:
                continue
            pes = view.canon(p.src.tensors[a.fold])
            from nvfp4tools.convert.encode import as_f32
            out[f"nvfp4tools.restore.{a.fold}"] = np.asarray(as_f32(pes.array, pes.dtype), np.float32).reshape(-1)
            g = [view.mults(p.src.tensors[n], "global_scale")[0] for n in a.sources]
            out[f"nvfp4tools.restore.{a.out_name}.scale"] = np.array(g, np.float32)
        return out


def _gemma4_rope_freqs(src: Checkpoint) -> list[float] | None:
    """llama.cpp's Gemma 4 rope_freqs: full layers use proportional RoPE (partial factor p): ggml's
    neox RoPE rotates the first dims, so frequency factors 1.0 for the rotated pairs and 1e30 for
    the rest (conversion/gemma.py generate_extra_tensors)."""
    from .gguf_arch import gguf_config

    cfg = gguf_config(src)
    rp = (cfg.get("rope_parameters") or {}).get("full_attention") or {}
    if rp.get("rope_type") != "proportional":
        return None
    full = [l for l in src.arch.layers if l.kind == "full"]
    if not full:
        return None
    hd = full[0].head_dim_k
    n_rot = int(hd * float(rp.get("partial_rotary_factor", 1.0)) / 2)
    return [1.0] * n_rot + [1e30] * (hd // 2 - n_rot)
