"""The speed paths of header reading must answer exactly what the plain paths answer."""

from __future__ import annotations

import pytest

from nvfp4tools.formats._patterns import PatternSet, match_pattern
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
