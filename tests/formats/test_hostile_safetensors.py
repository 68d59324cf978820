"""Bad input: one line naming file/tensor and expected vs actual, exit 3, no traceback."""

from __future__ import annotations

import json
import struct



def _write(path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> str:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob) if length is None else length))
        fh.write(blob)
        fh.write(data)
    return str(path)


def _ok_header():
    return {"a.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}


def _check(run_cli, path, *needles):
    r = run_cli("inspect", str(path))
    assert r.exit_code == 3, (r.exit_code, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_valid_minimal_file_reads(tmp_path, run_cli):
    p = _write(tmp_path / "m.safetensors", _ok_header(), b"\0" * 8)
    r = run_cli("inspect", p)
    assert r.exit_code == 0, r.stderr


def test_truncated_before_length(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"\x01\x02")
    _check(run_cli, p, "m.safetensors", "truncated", "2 bytes")


def test_header_length_past_eof(tmp_path, run_cli):
    p = _write(tmp_path / "m.safetensors", _ok_header(), b"\0" * 8, length=10_000)
    _check(run_cli, p, "header length 10000", "past end of file")


def test_header_over_100mb(tmp_path, run_cli):
    p = _write(tmp_path / "m.safetensors", b"{}", length=200_000_000)
    _check(run_cli, p, "exceeds the 100 MB limit")


def test_invalid_json(tmp_path, run_cli):
    p = _write(tmp_path / "m.safetensors", b"{not json")
    _check(run_cli, p, "not valid JSON")


def test_header_not_object(tmp_path, run_cli):
    p = _write(tmp_path / "m.safetensors", b"[1, 2]")
    _check(run_cli, p, "expected an object")


def test_offsets_past_data(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}
    p = _write(tmp_path / "m.safetensors", h, b"\0" * 4)  # truncated data buffer
    _check(run_cli, p, "tensor 'a.weight'", "past the end of the data buffer")


def test_overlapping_offsets(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
         "b.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [4, 12]}}
    p = _write(tmp_path / "m.safetensors", h, b"\0" * 12)
    _check(run_cli, p, "overlap")


def test_hole_in_buffer(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}
    p = _write(tmp_path / "m.safetensors", h, b"\0" * 16)
    _check(run_cli, p, "hole")


def test_byte_count_mismatch(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}
    p = _write(tmp_path / "m.safetensors", h, b"\0" * 8)
    _check(run_cli, p, "tensor 'a.weight'", "needs 16 bytes", "give 8")


def test_unknown_dtype(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 2]}}
    p = _write(tmp_path / "m.safetensors", h, b"\0" * 2)
    _check(run_cli, p, "unknown dtype 'Q9'", "known:")


def test_bad_shape(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}
    p = _write(tmp_path / "m.safetensors", h)
    _check(run_cli, p, "shape [-1]")


def test_overflowing_shape(tmp_path, run_cli):
    h = {"a.weight": {"dtype": "U8", "shape": [2**40, 2**40], "data_offsets": [0, 1]}}
    p = _write(tmp_path / "m.safetensors", h, b"\0")
    _check(run_cli, p, "2^50")


def _sharded(tmp_path, weight_map):
    d = tmp_path / "ck"
    d.mkdir()
    _write(d / "model-00001-of-00002.safetensors", _ok_header(), b"\0" * 8)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return d


def test_missing_shard(tmp_path, run_cli):
    d = _sharded(tmp_path, {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors"})
    _check(run_cli, d, "shard 'model-00002-of-00002.safetensors' is missing", "1 tensors")


def test_index_points_outside(tmp_path, run_cli):
    d = _sharded(tmp_path, {"a.weight": "../evil.safetensors"})
    _check(run_cli, d, "outside the checkpoint folder")


def test_index_names_tensor_not_in_shard(tmp_path, run_cli):
    d = _sharded(tmp_path, {"a.weight": "model-00001-of-00002.safetensors",
                            "zzz.weight": "model-00001-of-00002.safetensors"})
    _check(run_cli, d, "'zzz.weight'", "does not contain it")


def test_pickle_only_checkpoint(tmp_path, run_cli):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    err = _check(run_cli, d, "pytorch_model.bin", "never unpickles")
    assert "UnsupportedError" in err


def test_no_such_path(tmp_path, run_cli):
    _check(run_cli, tmp_path / "nope", "no such file")


def test_duplicate_tensor_across_shards(tmp_path, run_cli):
    d = tmp_path / "ck"
    d.mkdir()
    _write(d / "a.safetensors", _ok_header(), b"\0" * 8)
    _write(d / "b.safetensors", _ok_header(), b"\0" * 8)
    _check(run_cli, d, "'a.weight' also appears")


def test_bad_config_json(tmp_path, run_cli):
    d = tmp_path / "ck"
    d.mkdir()
    _write(d / "model.safetensors", _ok_header(), b"\0" * 8)
    (d / "config.json").write_text("{oops")
    _check(run_cli, d, "config.json", "not valid JSON")


def test_nvfp4_block_scale_wrong_shape(tmp_path, run_cli):
    d = tmp_path / "ck"
    d.mkdir()
    h = {"m.layers.0.mlp.up_proj.weight": {"dtype": "U8", "shape": [4, 16], "data_offsets": [0, 64]},
         "m.layers.0.mlp.up_proj.weight_scale": {"dtype": "F8_E4M3", "shape": [4, 3], "data_offsets": [64, 76]},
         "m.layers.0.mlp.up_proj.weight_scale_2": {"dtype": "F32", "shape": [], "data_offsets": [76, 80]}}
    _write(d / "model.safetensors", h, b"\0" * 80)
    (d / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "exclude_modules": []}}))
    _check(run_cli, d, "weight_scale' has shape [4, 3], expected [4, 2]", "in_features=32")


def test_scale_with_wrong_count(tmp_path, run_cli):
    d = tmp_path / "ck"
    d.mkdir()
    h = {"m.layers.0.mlp.up_proj.weight": {"dtype": "U8", "shape": [4, 16], "data_offsets": [0, 64]},
         "m.layers.0.mlp.up_proj.weight_scale": {"dtype": "F8_E4M3", "shape": [4, 2], "data_offsets": [64, 72]},
         "m.layers.0.mlp.up_proj.weight_scale_2": {"dtype": "F32", "shape": [3], "data_offsets": [72, 84]}}
    _write(d / "model.safetensors", h, b"\0" * 84)
    (d / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "exclude_modules": []}}))
    _check(run_cli, d, "weight_scale_2' has shape [3]", "expected a single value")
