"""inspect must report exactly what the real tools wrote (transformers, nvidia-modelopt,
compressed-tensors), and our synthetic layouts must be the real layouts."""

from __future__ import annotations

import json
import os

import pytest

from nvfp4tools import formats
from nvfp4tools.formats._safetensors import parse_header
from nvfp4tools.inspect import build_report

pytestmark = pytest.mark.interop


def _stored(path):
    out = {}
    for n in sorted(os.listdir(path)):
        if n.endswith(".safetensors"):
            for k, t in parse_header(path, n).tensors.items():
                out[k] = (t.dtype, t.shape)
    return out


def _torch_param_count(path):
    """Independent count with the safetensors library itself (two FP4 values per packed byte)."""
    from safetensors import safe_open

    n = 0
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        for k in keys:
            if k.endswith(("weight_scale", "weight_scale_2", "input_scale", "weight_global_scale",
                           "input_global_scale")):
                continue
            t = f.get_slice(k)
            numel = 1
            for d in t.get_shape():
                numel *= d
            packed = k.endswith("weight_packed") or (k + "_scale" in keys and t.get_dtype() == "U8")
            n += numel * (2 if packed else 1)
    return n


def test_modelopt_nvfp4_default(oracles):
    import modelopt

    ck = formats.read(oracles["modelopt_nvfp4"])
    rep = build_report(ck)
    assert rep["format"] == "modelopt" and rep["algorithm"] == "NVFP4"
    assert rep["producer"] == {"name": "modelopt", "version": modelopt.__version__}
    stored = _stored(oracles["modelopt_nvfp4"])
    n_nvfp4 = 0
    for key, (dtype, shape) in stored.items():
        if key.endswith(".weight_scale"):
            mod = key[: -len(".weight_scale")]
            t = ck.tensors[mod + ".weight"]
            assert t.scheme.name == "nvfp4" and t.scheme.activations == "nvfp4", mod
            wd, ws = stored[mod + ".weight"]
            assert wd == "U8" and t.shape == ws[:-1] + (ws[-1] * 2,)
            assert {p.key for p in t.parts} >= {mod + ".weight", key, mod + ".weight_scale_2", mod + ".input_scale"}
            n_nvfp4 += 1
    assert n_nvfp4 == sum(1 for t in ck.tensors.values() if t.scheme.name == "nvfp4") > 0
    # logical parameters: same as the BF16 model it came from, and as the safetensors library counts
    bf = build_report(formats.read(oracles["bf16"]))
    assert rep["summary"]["n_parameters"] == bf["summary"]["n_parameters"] == _torch_param_count(oracles["modelopt_nvfp4"])
    assert not [f for f in rep["findings"] if f["severity"] != "info"], rep["findings"]
    roles = {r["role"]: r for r in rep["roles"]}
    assert roles["experts"]["share_quantized"] == roles["attention"]["share_quantized"] == 1.0
    assert roles["router"]["share_quantized"] == roles["vision"]["share_quantized"] == 0.0


def test_modelopt_experts_only(oracles):
    rep = build_report(formats.read(oracles["modelopt_experts_only"]))
    roles = {r["role"]: r for r in rep["roles"]}
    assert roles["experts"]["share_quantized"] == 1.0
    assert roles["attention"]["share_quantized"] == roles["mlp"]["share_quantized"] == 0.0
    # every exclude pattern matches, no bad scales; what engines do with it is information only
    assert [f for f in rep["findings"] if not f["code"].startswith("engine_")] == []
    assert {f["severity"] for f in rep["findings"]} <= {"info"}


def test_compressed_tensors_converted(oracles):
    ck = formats.read(oracles["ct_nvfp4"])
    rep = build_report(ck)
    mo = formats.read(oracles["modelopt_nvfp4"])
    assert rep["format"] == "compressed-tensors" and rep["algorithm"] == "nvfp4-pack-quantized"
    assert "stale_side_config" in {f["code"] for f in rep["findings"]}
    assert rep["summary"]["n_parameters"] == build_report(mo)["summary"]["n_parameters"]
    assert {t.name: t.scheme for t in ck.tensors.values()} == {t.name: t.scheme for t in mo.tensors.values()}
    # the canonical (multiplier) global scale equals ModelOpt's weight_scale_2 within float32 rounding
    from nvfp4tools.io import PartReader
    from nvfp4tools.model import canonical_scale

    with PartReader(ck.root) as rc, PartReader(mo.root) as rm:
        for name, t in ck.tensors.items():
            g = t.part("global_scale")
            if g is None:
                continue
            # compressed-tensors' ModelOpt converter keeps ModelOpt's 0-d scalars; llm-compressor
            # registers [1] (formats.md 2.2 says [1] only: the converter's output says otherwise)
            assert g.stored_as == "divisor" and g.stored_shape in ((), (1,))
            ct_val = canonical_scale(rc.values(g)[0], g)
            mo_part = mo.tensors[name].part("global_scale")
            assert mo_part.stored_shape == () and mo_part.stored_as == "multiplier"
            assert ct_val == pytest.approx(rm.values(mo_part)[0], rel=2e-7)


def test_compressed_tensors_config_parses_with_upstream(oracles):
    from compressed_tensors.quantization import QuantizationConfig

    with open(os.path.join(oracles["ct_nvfp4"], "config.json")) as fh:
        qc = json.load(fh)["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)
    assert parsed.format == "nvfp4-pack-quantized"


def test_transformers_config_spelling(oracles):
    """transformers 5.23 writes per_layer_config instead of global_head_dim (oracles.md)."""
    ck = formats.read(oracles["bf16"])
    with open(os.path.join(oracles["bf16"], "config.json")) as fh:
        cfg = json.load(fh)
    assert "per_layer_config" in cfg["text_config"]
    full = ck.arch.layers[5]
    assert (full.kind, full.head_dim_k, full.n_kv_heads, full.k_eq_v) == ("full", 128, 1, True)
    assert ck.arch.layers[0].head_dim_k == 64 and ck.arch.layers[0].window == 64
    assert "model.language_model.layers.5.self_attn.v_proj.weight" not in ck.tensors  # K=V layer


@pytest.mark.parametrize("fmt,experts,oracle", [("modelopt", "per-expert", "modelopt_nvfp4"),
                                                ("bf16", "fused", "bf16")])
def test_synth_layout_is_the_real_layout(oracles, synth_dir, fmt, experts, oracle):
    """Our generator writes exactly the tensor names, dtypes and shapes the real tools write
    (transformers saves fused 3-D experts; ModelOpt exports them per expert)."""
    ours = _stored(synth_dir(preset="gemma4-tiny", fmt=fmt, recipe="all-linear", experts=experts))
    assert ours == _stored(oracles[oracle])


def test_synth_ct_layout_matches_upstream_converter(oracles, synth_dir):
    """Same names/dtypes/shapes, except the per-tensor globals: we write llm-compressor's [1],
    compressed-tensors' converter keeps ModelOpt's 0-d shape."""
    ours = _stored(synth_dir(preset="gemma4-tiny", fmt="compressed-tensors", recipe="all-linear"))
    theirs = _stored(oracles["ct_nvfp4"])
    assert ours.keys() == theirs.keys()
    for k, (dtype, shape) in theirs.items():
        if k.endswith(("_global_scale",)):
            assert shape == () and ours[k] == (dtype, (1,)), k
        else:
            assert ours[k] == (dtype, shape), k


def test_reference_quantizer_bit_exact_with_modelopt():
    """kernels_ref.quantize_nvfp4 == ModelOpt NVFP4QTensor.quantize, byte for byte."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    qt = pytest.importorskip("modelopt.torch.quantization.qtensor.nvfp4_tensor")
    from nvfp4tools.kernels_ref.nvfp4 import quantize_nvfp4

    rng = np.random.default_rng(7)
    cases = [rng.standard_normal((64, 128)).astype(np.float32) * 0.02,
             rng.standard_normal((32, 64)).astype(np.float32) * 50,
             np.zeros((16, 32), np.float32)]
    edge = rng.standard_normal((16, 64)).astype(np.float32)
    edge[0, :16] = 0.0                      # an all-zero block
    edge[1, :16] = 1e-12                    # a block whose scale clamps to 2**-9
    edge[2, 0] = 1e4                        # a huge outlier
    cases.append(edge)
    for w in cases:
        ours = quantize_nvfp4(w)
        qtensor, scale, scale2 = qt.NVFP4QTensor.quantize(torch.from_numpy(w.copy()), 16)
        assert np.float32(ours.global_scale) == np.float32(scale2.item())
        assert np.array_equal(ours.block_scale, scale.view(torch.uint8).numpy())
        assert np.array_equal(ours.packed, qtensor._quantized_data.numpy())
