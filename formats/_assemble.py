"""Group the raw tensors of a safetensors checkpoint into logical tensors with their scales.

ModelOpt and compressed-tensors store the same NVFP4 bytes under different names and scale
conventions; each format module passes its suffix table and a config-derived expectation,
and everything else (scheme from stored dtypes, logical shapes, shape checks, findings about
config vs. stored reality) is shared here.
"""

from __future__ import annotations

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
    # follows a fused 3-D parameter's name with "_" although no bare parameter is stored
    # (gpt-oss MXFP4: experts.gate_up_proj_blocks + experts.gate_up_proj_scales)
    fused: bool = False


# Expectation hook: what the quantization config says this module should be (None = left
# unquantized by the config), and whether activations are quantized statically.
Expect = Callable[[str], QuantScheme | None]

KV_SUFFIXES = ("k_scale", "v_scale", "q_scale", "k_zero_point", "v_zero_point", "k_bias", "v_bias")


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
            bits = self._bits(expected, parts)
            shape = self._logical_int_shape(module, parts, bits)
            if b is not None and bs.stored_shape and shape[-1]:
                cols = bs.stored_shape[-1]
                group = shape[-1] // cols if cols else None
            return schemes.int_group(bits, group, "zero_point" not in parts, "g_idx" in parts)
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

    def _bits(self, expected: QuantScheme | None, parts: dict[PartRole, TensorPart]) -> int:
        """Bits per integer packed in an int32 word: the configured group's (a mixed checkpoint may pack
        int4 and int8), else what the stored weight_shape says (an excluded-by-name tensor such as an
        embedding carries no group), else the checkpoint's."""
        if expected is not None and expected.quantized and expected.element in ("int4", "int8"):
            return int(expected.bits)
        data, shp = parts["data"], parts.get("shape")
        if shp is not None and data.stored_shape and shp.stored_dtype in ("I64", "I32") and _prod(shp.stored_shape) >= 1:
            try:
                raw = self.read_bytes(shp)
            except FormatError:
                raw = None
            if raw is not None:
                n = _prod(shp.stored_shape)
                cols = struct.unpack("<%d%s" % (n, "q" if shp.stored_dtype == "I64" else "i"), raw)[-1]
                for bits in (4, 8):
                    if cols > 0 and -(-cols * bits // 32) == data.stored_shape[-1]:
                        return bits
        return self.int_bits

    def _logical_int_shape(self, module: str, parts: dict[PartRole, TensorPart], bits: int) -> tuple[int, ...]:
        data = parts["data"]
        if not data.stored_shape:
            raise FormatError(f"{data.file}: tensor '{data.key}' is 0-d, expected packed [out, in/{32 // bits}] "
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
                expect_cols = -(-vals[-1] * bits // 32)
                if vals[:-1] != data.stored_shape[:-1] or expect_cols != data.stored_shape[-1]:
                    raise FormatError(f"{data.file}: tensor '{shp.key}' says shape {list(vals)} but "
                                      f"'{data.key}' is {list(data.stored_shape)} (expected last dim {expect_cols} "
                                      f"for int{bits} packed in int32)")
                return tuple(vals)
        return data.stored_shape[:-1] + (data.stored_shape[-1] * 32 // bits,)

    def _logical_shape(self, module: str, scheme: QuantScheme, parts: dict[PartRole, TensorPart]) -> tuple[int, ...]:
        data = parts["data"]
        s = data.stored_shape
        if scheme.element == "e2m1":
            if not s:
                raise FormatError(f"{data.file}: tensor '{data.key}' is 0-d, expected packed [out, in/2] uint8")
            bs = parts.get("block_scale")
            if len(s) >= 3 and bs is not None and bs.stored_shape == s[:-1] and scheme.block_size == 2 * s[-1]:
                # gpt-oss MXFP4 blocks [.., out, in/32, 16] with scales [.., out, in/32]: a row's bytes
                # are the [out, in/2] packing
                return s[:-2] + (s[-2] * s[-1] * 2,)
            shape = s[:-1] + (s[-1] * 2,)
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
            return self._logical_int_shape(module, parts, int(scheme.bits))
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
        fused_sfx = [sfx for sfx in self.suffixes if sfx.role != "data" or sfx.fused]
        fused_data: set[str] = set()   # modules whose data part is a fused "<param>_<suffix>"
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
                        if last.endswith("_" + f.suffix) and (f.fused or name[: -len(f.suffix) - 1] in raw_all):
                            module, sfx = name[: -len(f.suffix) - 1], f
                            if f.role == "data":
                                fused_data.add(module)
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
            if key == module or module in fused_data:  # a parameter stored without a ".weight"-style suffix
                name = module
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
                transposed = scheme.element == "e2m1" and len(shape) == 3 and len(data.stored_shape) == 3 and \
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
