"""The safetensors side of writing: what ModelOpt and compressed-tensors targets share (planning
tensor by tensor over a naming layout, sharding, headers, the index, side files). Each format's
own module supplies its layout and its config files (``modelopt.ModelOptWriter``,
``compressed_tensors.CTWriter``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from nvfp4tools.convert.canon import View, is_int4_sym
from nvfp4tools.convert.options import Options
from nvfp4tools.convert.plan import Action, Kind, Plan, RowSlice
from nvfp4tools.convert import scales
from nvfp4tools.errors import FormatError, UnsupportedError, UsageError
from nvfp4tools.model import Checkpoint, TensorInfo
from nvfp4tools.roles import FUSED_SIBLINGS, LINEAR_ROLES

from .layouts import Out

QUANTIZE_ROLES = ("attention", "mlp", "experts", "shared_expert")
DEFAULT_SHARD_BYTES = 5 * 10**9       # GGUF sources: one file, cut into shards of this size
EARLY_BYTES = 256 * 2**20             # SafetensorsTarget.begin: source bytes copied while the plan is made
EARLY_MIN = 16 * 2**20                # (not started for less)
# files a checkpoint folder carries besides its weights and configs, copied when they are regular
# files inside the source folder (never through a link leaving it)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "chat_template.json", "chat_template.jinja", "generation_config.json", "preprocessor_config.json",
              "processor_config.json", "added_tokens.json", "vocab.json", "merges.txt")
_UNQUANTIZED_OK = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                   # no numpy view to decode them, but a safetensors target stores them as they are: bytes copied
                   "F4", "F6_E2M3", "F6_E3M2", "C64"}


def _expert_group(t: TensorInfo) -> tuple[str, str] | None:
    if t.role != "experts" or t.expert is None or t.proj not in ("gate", "up", "down"):
        return None
    return t.name.split(f".experts.{t.expert}.")[0], ("down" if t.proj == "down" else "gate_up")


def siblings(src: Checkpoint, t: TensorInfo) -> tuple[str, ...]:
    """The other projections of T's module that engines fuse with it (one shared global)."""
    for group in FUSED_SIBLINGS:
        if t.proj in group and t.name.endswith(".weight"):
            parent = t.name.rsplit(".", 2)[0]
            return tuple(n for n, o in src.tensors.items() if o is not t and o.proj in group and o.layer == t.layer
                         and n.endswith(".weight") and n.rsplit(".", 2)[0] == parent and len(o.shape) == 2)
    return ()


class SafetensorsTarget:
    """A writer for a safetensors checkpoint folder; subclasses give ``name``, ``layout`` and
    :meth:`configs`."""

    name = ""
    layout: Any = None
    suffix: str | None = None          # writes a folder
    quantize_choices: tuple[str, ...] = ("nvfp4", "int4")

    # -- planning ------------------------------------------------------------------------------
    def lossless(self, t: TensorInfo) -> bool:
        """Whether quantized tensor T has an exact form in this layout."""
        if t.scheme.name == "nvfp4":
            return True
        return self.layout.int4 is not None and is_int4_sym(t)

    def plan(self, src: Checkpoint, opts: Options, view: View) -> Plan:
        if opts.quantize is not None and opts.quantize not in self.quantize_choices:
            raise UsageError(f"--quantize {opts.quantize}: --to {self.name} takes "
                             f"{' or '.join(self.quantize_choices)}")
        p = Plan(src, self.name, [])
        if src.format == "gguf":
            return self._plan_from_gguf(src, p, opts)
        tensors = list(src.tensors.values())
        unsupported = sorted({t.scheme.name for t in tensors if t.scheme.quantized and not self.lossless(t)})
        if unsupported and not opts.allow_lossy:
            if self.layout.nvfp4 is None:
                hint = ("plain safetensors hold unquantized tensors: --allow-lossy writes them dequantized to BF16; "
                        "--to modelopt or compressed-tensors keeps them 4-bit")
            else:
                hint = f"lossless paths to {self.name}: NVFP4" + ("; int4 group-symmetric, Q4_0" if self.layout.int4
                                                                   else "") + "; pass --allow-lossy to requantize"
            raise UnsupportedError(f"{src.source}: {', '.join(unsupported)} tensors have no exact {self.name} form",
                                   hint=hint)
        if not any(t.scheme.quantized for t in tensors) and opts.quantize is None and self.layout.nvfp4 is not None:
            raise UnsupportedError(
                f"{src.source}: no quantized tensor in this {src.format} checkpoint; a {self.name} checkpoint "
                "of unquantized weights would claim a quantization it does not have",
                hint=f"quantize with --allow-lossy --quantize {self.quantize_choices[0]}, or keep the source as it is")
        groups: dict[tuple[str, str], list[TensorInfo]] = {}
        if opts.experts == "fused":
            for t in tensors:
                k = _expert_group(t)
                if k:
                    groups.setdefault(k, []).append(t)
        done: set[tuple[str, str]] = set()
        target_q = opts.quantize or (self.quantize_choices[0] if self.quantize_choices else "bf16")
        for t in tensors:
            if self._lossy(t, opts):
                p.actions.append(self._quantize(src, t, target_q))
                continue
            k = _expert_group(t) if opts.experts == "fused" else None
            if k is not None:
                if k not in done:
                    done.add(k)
                    p.actions.append(self._fuse(src, view, k, groups[k]))
                continue
            if opts.experts == "per-expert" and t.role == "experts" and len(t.shape) == 3 \
                    and t.proj in ("gate_up", "down"):
                p.actions.extend(self._split(t))
                continue
            p.actions.append(self._single(t))
        self._record_originals(p, view)
        return p

    def _lossy(self, t: TensorInfo, opts: Options) -> bool:
        if not opts.allow_lossy or not t.name.endswith((".weight", "_proj")) or \
                not (len(t.shape) == 2 or (len(t.shape) == 3 and t.role == "experts")):
            return False   # biases, norms, 2-D expert biases are never quantized
        if t.scheme.quantized:
            return not self.lossless(t)
        return opts.quantize is not None and t.role in QUANTIZE_ROLES

    def _quantize(self, src: Checkpoint, t: TensorInfo, to: str) -> Action:
        k = t.shape[-1]
        if to == "nvfp4":
            if k % 16:
                raise UnsupportedError(f"{t.name}: in_features {k} is not a multiple of 16 (NVFP4 block)")
            outs = self.layout.nvfp4(t.name, t.shape, False)
        else:
            if k % 32:
                raise UnsupportedError(f"{t.name}: in_features {k} is not a multiple of 32 (int4 group)")
            if len(t.shape) != 2:
                raise UnsupportedError(f"{t.name}: int4 quantization of stacked experts is not supported",
                                       hint="use --quantize nvfp4, or --experts per-expert")
            outs = self.layout.int4(t.name, t.shape, 32, "BF16")
        return Action(Kind.QUANTIZE, (t.name,), tuple(outs), False, self.layout.out_name(outs[0].key),
                      quantize_to=to, share_global_with=siblings(src, t) if to == "nvfp4" else (),
                      note=f"from {t.scheme.name}")

    def _single(self, t: TensorInfo) -> Action:
        if t.scheme.name == "nvfp4":
            kv = tuple(sorted(p.key.rsplit(".", 1)[-1] for p in t.parts if p.role == "kv_scale"))
            outs = self.layout.nvfp4(t.name, t.shape, t.part("input_scale") is not None, kv)
            kind = Kind.RENIBBLE if t.part("data").stored_dtype == "NVFP4" else Kind.COPY
            return Action(kind, (t.name,), tuple(outs), True, self.layout.out_name(outs[0].key))
        if is_int4_sym(t):
            if t.scheme.name == "q4_0":
                outs = self.layout.int4(t.name, t.shape, 32, "F16")
                return Action(Kind.REPACK, (t.name,), tuple(outs), True, self.layout.out_name(outs[0].key))
            bs = t.part("block_scale")
            outs = self.layout.int4(t.name, t.shape, t.shape[-1] // bs.stored_shape[-1], bs.stored_dtype)
            return Action(Kind.COPY, (t.name,), tuple(outs), True, self.layout.out_name(outs[0].key))
        d = t.part("data").stored_dtype
        out = Out(t.name, d if d in _UNQUANTIZED_OK else "F32", tuple(t.shape), "raw")
        return Action(Kind.COPY if out.dtype == d else Kind.CAST, (t.name,), (out,), True, t.name)

    def _fuse(self, src: Checkpoint, view: View, key: tuple[str, str], members: list[TensorInfo]) -> Action:
        prefix, kind = key
        n_e = max(t.expert for t in members) + 1
        by = {(t.expert, t.proj): t for t in members}
        projs = ("gate", "up") if kind == "gate_up" else ("down",)
        order = []
        for e in range(n_e):
            for proj in projs:
                if (e, proj) not in by:
                    raise FormatError(f"{src.source}: expert {e} of '{prefix}' has no {proj}_proj; cannot fuse",
                                      hint="keep --experts per-expert")
                order.append(by[(e, proj)])
        first = order[0]
        if any(m.scheme != first.scheme or m.shape[-1] != first.shape[-1] for m in order):
            raise UnsupportedError(f"{prefix}: experts differ in scheme or width; they cannot be stacked",
                                   hint="keep --experts per-expert")
        shape = (n_e, sum(by[(0, p)].shape[0] for p in projs), first.shape[1])
        name = f"{prefix}.experts.{'gate_up_proj' if kind == 'gate_up' else 'down_proj'}"
        if first.scheme.name == "nvfp4":
            if kind == "gate_up":   # one global per expert in a fused tensor: gate's and up's must agree
                for e in range(n_e):
                    g, u = view.mults(by[(e, "gate")], "global_scale"), view.mults(by[(e, "up")], "global_scale")
                    if g != u:
                        raise UnsupportedError(
                            f"{by[(e, 'gate')].name}: gate and up of expert {e} have different global scales "
                            f"({g} vs {u}); one fused gate_up_proj holds one global per expert",
                            hint="keep --experts per-expert")
            outs = self.layout.nvfp4(name, shape, first.part("input_scale") is not None)
        elif not first.scheme.quantized:
            outs = [Out(name, first.part("data").stored_dtype, shape, "raw")]
        else:
            raise UnsupportedError(f"{prefix}: fusing {first.scheme.name} experts is not supported",
                                   hint="keep --experts per-expert")
        return Action(Kind.STACK, tuple(t.name for t in order), tuple(outs), True,
                      self.layout.out_name(outs[0].key), stack="gate_up" if kind == "gate_up" else "one")

    def _split(self, t: TensorInfo) -> list[Action]:
        n_e, rows, cols = t.shape
        prefix = t.name.rsplit(".experts.", 1)[0]
        projs = ("gate", "up") if t.proj == "gate_up" else ("down",)
        per = rows // len(projs)
        out = []
        for e in range(n_e):
            for i, proj in enumerate(projs):
                name = f"{prefix}.experts.{e}.{proj}_proj.weight"
                if t.scheme.name == "nvfp4":
                    outs = self.layout.nvfp4(name, (per, cols), t.part("input_scale") is not None)
                elif not t.scheme.quantized:
                    outs = [Out(name, t.part("data").stored_dtype, (per, cols), "raw")]
                else:
                    raise UnsupportedError(f"{t.name}: splitting {t.scheme.name} experts is not supported")
                out.append(Action(Kind.SPLIT, (t.name,), tuple(outs), True, self.layout.out_name(outs[0].key),
                                  rows=RowSlice(e, i * per, (i + 1) * per), note=f"expert {e} {proj}"))
        return out

    def _record_originals(self, p: Plan, view: View) -> None:
        """Original fp32 multipliers whose reciprocal does not round-trip (scales.reciprocal_exact)."""
        for a in p.actions:
            for o in a.outs:
                if o.convention != "divisor" or not a.exact:
                    continue
                from nvfp4tools.convert.encode import scalar_mults
                vals = scalar_mults(a, view, "global_scale" if o.what == "global" else "input_scale")
                if vals is not None and not all(scales.round_trips(v) for v in vals):
                    # one value, or one per expert of a fused tensor ([E] divisors): all of them, in order
                    bits = [scales.F32.pack(v).hex() for v in vals]
                    p.exact_meta[o.key] = bits[0] if len(bits) == 1 else bits

    def _plan_from_gguf(self, src: Checkpoint, p: Plan, opts: Options) -> Plan:
        """GGUF -> safetensors from the ``nvfp4tools.hf_names`` record an nvfp4tools-written GGUF
        carries (names, stored dtypes, expert splits, undone folds)."""
        names = src.metadata.get("nvfp4tools.hf_names")
        if not isinstance(names, list) or not src.config:
            return self._plan_from_foreign_gguf(src, p, opts)
        hf: dict[str, list[str]] = {}
        for entry in names:
            g, _, rest = str(entry).partition("=")
            hf[g] = rest.split(",") if rest else []
        if any(t.scheme.name == "q4_0" for t in src.tensors.values()) and self.layout.int4 is None:
            raise UnsupportedError(f"{src.source}: Q4_0 has no exact {self.name} form",
                                   hint="convert to compressed-tensors first (Q4_0 -> pack-quantized W4A16 is exact), "
                                        f"then --to {self.name} --allow-lossy")
        from .gguf_restore import GENERATED, rope_permuted_heads

        # tensors the writer left without a record (those it split in two: gpt-oss's gate_up and
        # interleaved down experts, DeepSeek's kv_b) cannot be put back: refuse rather than drop them
        missing = sorted(n for n in src.tensors if n not in hf and n not in GENERATED)
        if missing:
            raise UnsupportedError(
                f"{src.source}: {len(missing)} tensors have no record of the safetensors tensor they came from "
                f"(first: {missing[0]}); nvfp4tools split them on the way to GGUF and does not join them back",
                hint="convert from the original safetensors checkpoint instead")
        for t in src.tensors.values():
            if t.name not in hf:
                continue
            targets = hf[t.name]
            # the writer put Q and K rows into ggml's RoPE pair order where llama.cpp's converter does: undo it
            heads = rope_permuted_heads(src, t)
            want_all = targets[-1].partition("|")[2]
            restore = src.metadata.get(f"nvfp4tools.restore.{t.name}.scale")
            for e, entry in enumerate(targets):
                name, _, want = entry.partition("|")
                want = want or want_all
                stacked = len(targets) > 1
                shape = tuple(t.shape[1:]) if stacked else tuple(t.shape)
                if t.scheme.name == "nvfp4":
                    outs = self.layout.nvfp4(name, shape, t.part("input_scale") is not None)
                elif t.scheme.name == "q4_0":
                    outs = self.layout.int4(name, shape, 32, want or "F16")
                elif not t.scheme.quantized:
                    outs = [Out(name, want or t.part("data").stored_dtype, shape, "raw")]
                else:
                    raise UnsupportedError(f"{t.name}: {t.scheme.name} has no exact {self.name} form")
                kind = Kind.SPLIT if stacked else (Kind.RENIBBLE if t.scheme.name == "nvfp4" else
                                                   Kind.REPACK if t.scheme.name == "q4_0" else Kind.CAST)
                p.actions.append(Action(
                    kind, (t.name,), tuple(outs), True, self.layout.out_name(outs[0].key),
                    rows=RowSlice(e, 0, t.shape[1]) if stacked else None,
                    global_override=(float(restore[e]),) if restore and stacked else None,
                    permute_heads=heads, unpermute=heads is not None))
        import numpy as np
        for k, v in src.metadata.items():
            if k.startswith("nvfp4tools.restore.") and k.endswith(".router.per_expert_scale"):
                name = k[len("nvfp4tools.restore."):]
                arr = np.asarray(v, np.float32)
                bits = (arr.view(np.uint32) >> 16).astype("<u2")   # recorded from bf16: exact
                p.actions.append(Action(Kind.RESTORE, (), (Out(name, "BF16", (arr.size,), "raw"),), True, name,
                                        const=bits.tobytes()))
        return p

    def _plan_from_foreign_gguf(self, src: Checkpoint, p: Plan, opts: Options) -> Plan:
        """A GGUF llama.cpp wrote: names, transforms and config.json from :mod:`.gguf_restore`."""
        from nvfp4tools.convert.plan import Rearrange
        from nvfp4tools.convert.encode import rearranged_shape

        from .gguf_restore import kept_schemes, restore

        r = restore(src, kept_schemes(self.layout))
        p.config = r.config
        p.notes += r.notes
        why = tokenizer_unavailable(src)
        if why is not None:
            p.notes.append(f"tokenizer not written: {why}")
        else:
            p.notes.append("tokenizer files rebuilt from the GGUF vocabulary by transformers' GGUF tokenizer "
                           "conversion")
        p.notes.append(f"GGUF {src.arch.model_type if src.arch else ''} -> {r.family.model_type} "
                       f"({r.family.architecture}; names and transforms from llama.cpp {r.family.source})")
        ftype = str(src.metadata.get("general.file_type") or "")
        half = "BF16" if "BF16" in ftype else ("F16" if "F16" in ftype else None)
        view = View(src)
        try:
            for tg in r.targets:
                t = src.tensors[tg.sources[0]]
                if tg.merge is not None:
                    p.actions.append(self._merge_action(src, tg, half, view))
                    continue
                lo, hi = tg.rows or (0, t.shape[1] if len(t.shape) > 1 else 0)
                shape = (hi - lo,) + tuple(t.shape[2:]) if tg.expert is not None else tuple(t.shape)
                rearrange = Rearrange(transpose=True, axis=-1) if tg.transpose else None
                if rearrange is not None:
                    shape = rearranged_shape(shape, rearrange)
                outs = self._gguf_outs(src, t, tg.name, shape, half, view, opts)
                if outs is None:   # lossy: dequantized to BF16
                    p.actions.append(Action(Kind.QUANTIZE, (t.name,), (Out(tg.name, "BF16", shape, "raw"),), False,
                                            tg.name, quantize_to="bf16", note=f"from {t.scheme.name}, dequantized",
                                            permute_heads=tg.unpermute_heads, unpermute=tg.unpermute_heads is not None))
                    continue
                nv = t.scheme.name == "nvfp4"
                kind = Kind.SPLIT if (tg.expert is not None or rearrange is not None) else (
                    Kind.RENIBBLE if nv else Kind.REPACK if t.scheme.name in ("q4_0", "q8_0") else Kind.CAST)
                n_e = t.shape[0] if len(t.shape) == 3 and tg.expert is None else 1
                glob = (1.0,) * n_e if nv and t.part("global_scale") is None else None
                p.actions.append(Action(
                    kind, (t.name,), tuple(outs), True, self.layout.out_name(outs[0].key),
                    rows=RowSlice(tg.expert, lo, hi) if tg.expert is not None else None,
                    rearrange=rearrange, permute_heads=tg.unpermute_heads, unpermute=tg.unpermute_heads is not None,
                    global_override=glob))
        finally:
            view.close()
        if not any(a.outs[0].what != "raw" for a in p.actions) and self.layout.nvfp4 is not None:
            raise UnsupportedError(
                f"{src.source}: no tensor of this GGUF has an exact {self.name} form (its quantized tensors: "
                f"{', '.join(sorted({t.scheme.name for t in src.tensors.values() if t.scheme.quantized})) or 'none'})",
                hint="--to safetensors writes its unquantized weights; --allow-lossy dequantizes the rest")
        return p

    def _gguf_outs(self, src: Checkpoint, t: TensorInfo, name: str, shape: tuple[int, ...], half: str | None,
                   view: View, opts: Options) -> list[Out] | None:
        """The output parts of GGUF tensor T as NAME, or None when it is to be dequantized (lossy)."""
        if t.scheme.name == "nvfp4" and self.layout.nvfp4 is not None:
            return self.layout.nvfp4(name, shape, t.part("input_scale") is not None)
        if t.scheme.name == "q4_0" and getattr(self.layout, "int4", None) is not None:
            return self.layout.int4(name, shape, 32, "F16")
        if t.scheme.name == "q8_0" and getattr(self.layout, "int8", None) is not None:
            return self.layout.int8(name, shape, 32, "F16")
        if not t.scheme.quantized:
            return [Out(name, self._float_dtype(t, half, view), shape, "raw")]
        if opts.allow_lossy:
            return None
        raise UnsupportedError(f"{src.source}: tensor '{t.name}' is {t.scheme.name}, which has no exact {self.name} "
                               "form", hint="exact: NVFP4 -> modelopt/compressed-tensors, Q4_0 -> compressed-tensors; "
                                            "--allow-lossy writes the others dequantized to BF16")

    @staticmethod
    def _float_dtype(t: TensorInfo, half: str | None, view: View) -> str:
        """llama.cpp's converter writes norms, routers and biases F32 whatever the model's dtype: in a
        BF16/F16 file such a tensor goes back to that dtype when every value is one (read here: they are
        small), else stays F32."""
        d = t.part("data").stored_dtype
        if d != "F32" or half is None or t.nbytes > 16 * 2**20:
            return d
        import numpy as np

        vals = np.asarray(view.canon(t).array, np.float32)
        if half == "BF16":
            ok = not np.any(vals.view(np.uint32) & 0xFFFF)
        else:
            ok = np.array_equal(vals.astype(np.float16).astype(np.float32), vals, equal_nan=True)
        return half if ok else d

    def _merge_action(self, src: Checkpoint, tg, half: str | None, view: View) -> Action:
        ts = [src.tensors[n] for n in tg.sources]
        if any(t.scheme.quantized for t in ts):
            raise UnsupportedError(f"{src.source}: '{ts[0].name}' is {ts[0].scheme.name}; rebuilding "
                                   f"'{tg.name}' from it is only exact for unquantized tensors")
        a, b = ts
        if tg.merge == "mla_kv_b":       # [n_head, r, nope] + [n_head, v, r] -> [n_head * (nope + v), r]
            shape = (a.shape[0] * (a.shape[2] + b.shape[1]), a.shape[1])
        elif tg.merge == "interleave_rows":   # [E, I, H] x 2 -> [E, H, 2I]
            shape = (a.shape[0], a.shape[2], 2 * a.shape[1])
        else:                                 # [E, I] x 2 -> [E, 2I]
            shape = a.shape[:-1] + (2 * a.shape[-1],)
        dtype = self._float_dtype(a, half, view)
        return Action(Kind.MERGE, tuple(tg.sources), (Out(tg.name, dtype, shape, "raw"),), True, tg.name,
                      merge=tg.merge)

    # -- writing -------------------------------------------------------------------------------
    def begin(self, src: Checkpoint, view: View, tmp: str, opts: Options):
        """Start copying the source's first tensors into the output folder TMP before the plan is
        made (:class:`~nvfp4tools.convert.stream.Early`), for a lossless conversion of a safetensors
        source; None when there is nothing to start, or the folder cannot be made (the conversion
        then says why, as without it)."""
        from nvfp4tools.convert.stream import Early

        if src.format == "gguf" or opts.allow_lossy or opts.quantize is not None or not src.tensors:
            return None
        quantized = [t for t in src.tensors.values() if t.scheme.quantized]
        if (not quantized and self.layout.nvfp4 is not None) or not all(self.lossless(t) for t in quantized):
            return None   # refused by the plan
        files = sorted({pt.file for t in src.tensors.values() for pt in t.parts})
        by_offset = {pt.offset: pt for t in src.tensors.values() for pt in t.parts if pt.file == files[0] and pt.nbytes}
        if not by_offset:
            return None
        base = end = min(by_offset)
        while end - base < EARLY_BYTES and end in by_offset:   # contiguous parts from the first
            end += by_offset[end].nbytes
        if end - base < EARLY_MIN or base % 8:
            return None
        try:
            os.makedirs(tmp)
            from ._st_writer import shard_file_name
            return Early(os.path.join(tmp, shard_file_name(1, len(files))), os.path.join(src.root, files[0]),
                         base, end - base, early_data_start(base))
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            return None

    def write(self, p: Plan, view: View, tmp: str, opts: Options, lossy: list, progress, early=None) -> list[str]:
        """Write the output folder TMP (EARLY: already holding :meth:`begin`'s first bytes)."""
        from nvfp4tools.convert.stream import header_pad, write_actions

        from ._st_writer import shard_file_name, write_index

        if early is None:
            os.makedirs(tmp)
        shards = self._shards(p, opts.max_shard_bytes)
        files, weight_map, total = [], {}, 0
        for i, actions in enumerate(shards):
            fname = shard_file_name(i + 1, len(shards))
            outs = [o for a in actions for o in a.outs]
            meta = {"format": "pt", "converted_by": "nvfp4tools"}
            keys = {o.key for o in outs}
            if len(keys) != len(outs):
                dup = next(o.key for o in outs if sum(1 for x in outs if x.key == o.key) > 1)
                raise FormatError(f"two source tensors map to output '{dup}'",
                                  hint="the source holds the same tensor twice under two names")
            mine = {k: v for k, v in p.exact_meta.items() if k in keys}
            if mine:
                meta[scales.EXACT_META_KEY] = json.dumps(mine, sort_keys=True)
            blob, offsets, off = header_json(meta, outs)
            blob += b" " * ((-len(blob)) % 8)
            path = os.path.join(tmp, fname)
            mine, early = (early, None) if i == 0 else (None, early)
            keep = mine.keep(8 + len(blob), offsets, actions, view) if mine is not None and off >= mine.length \
                else frozenset()
            if mine is not None and not keep:
                mine.discard()
                mine = None
            if mine is not None:   # the first bytes are in place: the header goes before them
                mine.write_header(path, blob, mine.data_start + off)
                base = mine.data_start
            else:
                # spaces (safetensors' header padding) so that copied parts sit at their source offsets
                # modulo 64 KiB: the kernel copies then run aligned on both sides
                blob += b" " * header_pad(8 + len(blob), offsets, actions, view)
                with open(path, "wb") as fh:
                    fh.write(len(blob).to_bytes(8, "little"))
                    fh.write(blob)
                    fh.truncate(8 + len(blob) + off)
                base = 8 + len(blob)
            write_actions(path, base, offsets, actions, view, lossy, progress, skip=keep, early=mine)
            files.append(fname)
            total += off
            for k in keys:
                weight_map[k] = fname
        if len(shards) > 1:
            write_index(tmp, weight_map, total)
        self.configs(p, tmp)
        copy_side_files(p.src.root, tmp)
        if p.src.format == "gguf" and p.config is not None and not os.path.exists(os.path.join(tmp, "tokenizer.json")):
            tokenizer_from_gguf(p.src, tmp)
        return files

    def _shards(self, p: Plan, max_bytes: int | None) -> list[list[Action]]:
        src = p.src
        if max_bytes is None and src.format == "gguf":
            max_bytes = DEFAULT_SHARD_BYTES
        if max_bytes is None:   # as the source is sharded: an action goes with its first source's file
            by_file: dict[str, list[Action]] = {}
            loose: list[Action] = []
            for a in p.actions:
                t = src.tensors.get(a.sources[0]) if a.sources else None
                (by_file.setdefault(t.parts[0].file, []) if t is not None and t.parts else loose).append(a)
            out = [by_file[f] for f in sorted(by_file)] or [[]]
            out[0].extend(loose)
            return out
        shards: list[list[Action]] = [[]]
        acc = 0
        for a in p.actions:
            if shards[-1] and acc + a.nbytes > max_bytes:
                shards.append([])
                acc = 0
            shards[-1].append(a)
            acc += a.nbytes
        return shards

    def configs(self, p: Plan, out_dir: str) -> None:   # pragma: no cover - every target overrides
        raise NotImplementedError

    # -- shared by the config writers ------------------------------------------------------------
    @staticmethod
    def base_config(p: Plan) -> dict[str, Any]:
        src = p.src
        cfg = json.loads(json.dumps(src.config)) if src.config else {}
        if not cfg and p.config is not None:
            cfg = json.loads(json.dumps(p.config))
        if not cfg and src.format == "gguf":
            embedded = src.metadata.get("nvfp4tools.config_json")
            if isinstance(embedded, str):
                cfg = json.loads(embedded)
        return cfg

    @staticmethod
    def summary(p: Plan) -> dict[str, Any]:
        """What the output holds: quantized kinds, W4A4 or weight-only, int4 groups, kv scales."""
        whats = {o.what for a in p.actions for o in a.outs}
        # int8 codes are packed four per int32 word (layouts.CTLayout.int8)
        int8_groups = sorted({a.outs[0].shape[-1] * 4 // o.shape[-1] for a in p.actions for o in a.outs
                              if o.what == "int8_scales"})
        groups = sorted({o.shape[-1] and a.outs[0].shape[-1] * 8 // o.shape[-1]
                         for a in p.actions for o in a.outs if o.what == "int4_scales"})
        return {"nvfp4": "codes" in whats, "int4": "int4" in whats, "int8": "int8" in whats, "w4a4": "input" in whats,
                "groups": [g for g in groups if g], "int8_groups": int8_groups,
                "kv": any(w.startswith("kv:") for w in whats)}

    def modules_by_kind(self, p: Plan) -> dict[str, list[str]]:
        """Output module names per quantized kind ("codes" NVFP4, "int4", "int8"): a mixed checkpoint's
        config groups target them by exact name."""
        out: dict[str, list[str]] = {}
        for a in p.actions:
            kind = next((o.what for o in a.outs if o.what in ("codes", "int4", "int8")), None)
            if kind is not None:
                name = self.layout.out_name(a.outs[0].key)
                out.setdefault(kind, []).append(name[: -len(".weight")] if name.endswith(".weight") else name)
        return out

    @staticmethod
    def exclusions(p: Plan, regex_ok: bool) -> list[str]:
        """The output's exclude list: the source's own patterns when every quantized tensor kept
        its scheme (REGEX_OK: the target's matcher takes ``re:`` patterns), else the explicit
        module names of the unquantized linears (valid for every matcher)."""
        src = p.src
        kept = src.format != "gguf" and all(a.kind != Kind.QUANTIZE for a in p.actions)
        pats = list(src.exclude_patterns)
        if kept and (regex_ok or not any(x.startswith("re:") for x in pats)):
            return pats
        names = SafetensorsTarget.unquantized_linears(p)
        if kept:
            return sorted({x for x in pats if not x.startswith("re:")} | set(names))
        return names

    @staticmethod
    def unquantized_linears(p: Plan) -> list[str]:
        """Modules of the output's unquantized linear layers (what exclude_modules / ignore name)."""
        quantized = {a.out_name for a in p.actions if any(o.what in ("codes", "int4", "int8") for o in a.outs)}
        mods = set()
        for a in p.actions:
            if a.out_name in quantized or not a.sources:
                continue
            t = p.src.tensors.get(a.sources[0])
            if t is not None and len(t.shape) >= 2 and t.role in LINEAR_ROLES + ("router", "lm_head", "vision",
                                                                                 "projector"):
                name = a.out_name or t.name
                mods.add(name[: -len(".weight")] if name.endswith(".weight") else name)
        return sorted(mods)


def early_data_start(src_base: int) -> int:
    """Where an output begun early (:meth:`SafetensorsTarget.begin`) starts its data section, for a
    source whose data starts at SRC_BASE: room for a header 1/8 longer than the source's
    (ModelOpt -> compressed-tensors names lengthen it ~5%), at SRC_BASE modulo 64 KiB (the copies
    then run aligned on both sides)."""
    from nvfp4tools.convert.stream import COPY_ALIGN

    want = src_base + src_base // 8 + 4096
    return want + (src_base - want) % COPY_ALIGN


def header_json(meta: dict[str, str], outs: list[Out]) -> tuple[bytes, dict[str, int], int]:
    """(the safetensors header of OUTS, stored in order after each other, with __metadata__ META;
    each part's offset in the data section; the data section's length). The bytes are those of
    ``json.dumps(header, separators=(",", ":"))``, written entry by entry: no dict per entry, and
    each (dtype, shape) sized and written once (a quarter of the time for thousands of tensors)."""
    from json.encoder import encode_basestring_ascii as quote

    from ._dtypes import DTYPE_BITS

    text = ['{"__metadata__":', json.dumps(meta, separators=(",", ":"))]
    add = text.append
    seen: dict[tuple[str, tuple[int, ...]], tuple[str, int]] = {}
    offsets: dict[str, int] = {}
    off = 0
    for o in outs:
        known = seen.get((o.dtype, o.shape))
        if known is None:
            bits = DTYPE_BITS.get(o.dtype)
            n = math.prod(o.shape) * bits // 8 if bits is not None else o.nbytes
            known = seen[(o.dtype, o.shape)] = (f'{{"dtype":{quote(o.dtype)},"shape":[{",".join(map(str, o.shape))}],'
                                                '"data_offsets":[', n)
        entry, n = known
        offsets[o.key] = off
        add(f",{quote(o.key)}:{entry}{off},{off + n}]}}")
        off += n
    add("}")
    return "".join(text).encode(), offsets, off


def tokenizer_unavailable(src: Checkpoint) -> str | None:
    """Why the GGUF's tokenizer cannot be rebuilt here (None: it can)."""
    import importlib.util
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("tokenizers") is None:
        return "rebuilding it from the GGUF vocabulary needs transformers (pip install transformers)"
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from .gguf_restore import family_of, key_values
    kv = key_values(src)
    fam = family_of(src, kv)
    if fam.no_tokenizer:
        return fam.no_tokenizer
    arch = str(kv.get("general.architecture", ""))
    arch = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(arch, arch.replace("-", "_"))
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        return f"transformers' GGUF tokenizer conversion does not support architecture {arch!r}"
    return None


def tokenizer_from_gguf(src: Checkpoint, out_dir: str) -> None:
    """The GGUF's vocabulary as Hugging Face tokenizer files, rebuilt by transformers' own GGUF
    tokenizer conversion (``AutoTokenizer.from_pretrained(..., gguf_file=...)``: llama/SentencePiece
    and gpt2/BPE vocabularies). Skipped (the plan says so) when transformers is not installed."""
    if tokenizer_unavailable(src) is not None:
        return
    import transformers

    from .gguf_restore import family_of, key_values
    cls = family_of(src, key_values(src)).tokenizer_class
    path = os.path.abspath(src.source)
    try:
        tok = getattr(transformers, cls or "AutoTokenizer").from_pretrained(os.path.dirname(path),
                                                                             gguf_file=os.path.basename(path))
    except Exception as e:  # transformers' converter refuses a vocabulary type: say so, keep the weights
        raise UnsupportedError(f"{src.source}: transformers cannot rebuild this GGUF's tokenizer "
                               f"({type(e).__name__}: {e})", hint="convert the original checkpoint's tokenizer "
                                                                  "files alongside instead") from None
    tok.save_pretrained(out_dir)


def copy_side_files(src_root: str, out_dir: str) -> list[str]:
    """Tokenizer, chat template and generation files: regular files inside the source folder only
    (a link that leaves it, a FIFO or a device is skipped, never followed or read)."""
    import shutil
    import stat

    root = os.path.realpath(src_root)
    copied = []
    for n in sorted(os.listdir(src_root)):
        if n in ("config.json", "hf_quant_config.json") or n.endswith((".safetensors", ".gguf", ".index.json", ".bin",
                                                                      ".pt", ".pth")):
            continue
        if not (n in SIDE_FILES or n.endswith((".jinja", ".model"))
                or n.startswith(("tokenizer", "special_tokens", "generation", "chat_template"))):
            continue
        full = os.path.join(src_root, n)
        real = os.path.realpath(full)
        if not real.startswith(root + os.sep):
            continue
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):
                continue
        except OSError:
            continue
        shutil.copyfile(real, os.path.join(out_dir, n))
        copied.append(n)
    return copied
