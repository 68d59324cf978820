"""The speed paths of header reading must answer exactly what the plain paths answer."""

from __future__ import annotations

import pytest

from nvfp4tools.formats._assemble import PatternSet, match_pattern
from nvfp4tools.roles import _classify_rules, classify

NAMES = [
    "model.language_model.layers.17.experts.93.down_proj.weight",
    "model.language_model.layers.7.experts.3.down_proj.weight",
    "model.language_model.layers.0.router.proj.weight",
    "model.language_model.layers.10.router.proj.weight",
    "model.language_model.layers.1.self_attn.q_proj.weight",
    "model.layers.3.block_sparse_moe.experts.7.w1.weight",
    "model.layers.3.block_sparse_moe.experts.7.w2.weight",
    "model.layers.30.mlp.experts.gate_up_proj",
    "model.embed_tokens.weight",
    "lm_head.weight",
    "transformer.h.11.ln_1.weight",
    "transformer.h.11.ln_2.weight",
    "model.vision_tower.encoder.layers.3.mlp.fc1.weight",
    "model.encoder.0.layers.12.mlp.down_proj.weight",
    "model.encoder.1.layers.12.mlp.down_proj.weight",
    "model.decoder.layers.2.mlp.gate_proj.weight",
]


def test_classify_template_cache_matches_the_rules() -> None:
    for _ in range(2):  # second round: every answer from the cache
        for n in NAMES:
            assert classify(n) == _classify_rules(n), n


PATTERNS = [
    ["lm_head", "model.embed_vision*", "model.language_model.layers.0.router*", "model.vision_tower*"],
    ["re:.*router.*", "re:model\\.layers\\.\\d\\..*"],
    ["re:.*layers\\.1[0-9]\\..*", "*.mlp.*"],
    ["model.layers.3.block_sparse_moe.experts.7.w?.weight", "*experts.7*"],
    ["re:.*\\.w[12]$", "transformer.h.11.ln_?"],
    [],
]


@pytest.mark.parametrize("patterns", PATTERNS)
def test_pattern_set_matches_each_pattern(patterns: list[str]) -> None:
    ps = PatternSet(patterns)
    for _ in range(2):
        for n in NAMES:
            module = n[:-7] if n.endswith(".weight") else n
            for m in (n, module):
                assert ps.matches(m) == any(match_pattern(m, p) for p in patterns), (m, patterns)


def _shards(tmp_path, n: int = 4) -> str:
    from nvfp4tools.synth import synthesize

    d = str(tmp_path / "ckpt")
    synthesize(d, preset="gemma4-tiny", fmt="modelopt", recipe="all-linear", header_only=True, shards=n)
    return d


def test_parallel_header_parse_equals_sequential(tmp_path, monkeypatch):
    import os

    from nvfp4tools.formats import _safetensors as S

    d = _shards(tmp_path)
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    seq = [S.parse_header(d, f) for f in files]
    monkeypatch.setattr(S, "PARALLEL_MIN_HEADER_BYTES", 0)
    # threads other tests left behind (tqdm's monitor, started by the compressed-tensors oracle)
    # would make the parse sequential: this test is about the forked parse itself
    monkeypatch.setattr(S.threading, "active_count", lambda: 1)
    assert S._parallel_ok(d, files)
    par = S.parse_headers(d, files)
    assert [(p.file, p.size, p.tensors, p.metadata) for p in par] == \
        [(p.file, p.size, p.tensors, p.metadata) for p in seq]
    assert all(type(t) is S.RawTensor for p in par for t in p.tensors.values())


@pytest.mark.parametrize("which", [0, -1])  # a bad shard in this process's half, or in the child's
def test_parallel_header_parse_reports_the_bad_file(tmp_path, monkeypatch, which):
    import os

    from nvfp4tools.errors import FormatError
    from nvfp4tools.formats import _safetensors as S

    d = _shards(tmp_path)
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    bad = os.path.join(d, files[which])
    with open(bad, "r+b") as fh:  # break the JSON, keep the length
        fh.seek(8)
        fh.write(b"#")
    with pytest.raises(FormatError) as seq:
        [S.parse_header(d, f) for f in files]
    monkeypatch.setattr(S, "PARALLEL_MIN_HEADER_BYTES", 0)
    with pytest.raises(FormatError) as par:
        S.parse_headers(d, files)
    assert str(par.value) == str(seq.value) and files[which] in str(par.value)
