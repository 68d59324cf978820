"""The MMA GEMM's table of measured-best configs per GPU (kernels_ref/gpu/tuned.py, mma_tuned.json):
the shipped table is well formed, entries round-trip, the M bucket picks what an entry serves, and
reading it imports neither torch nor triton. Runs without a GPU."""

import json
import subprocess
import sys

import pytest

from nvfp4tools.kernels_ref.gpu import tuned

H100 = "NVIDIA H100 80GB HBM3"
GOOD = (128, 64, 128, 3, 4, 3, 2, 0, 1, 1)


def test_shipped_table_is_well_formed():
    table = tuned.load_table()          # check_config on every entry
    assert "about" in table and isinstance(table["gpus"], dict)
    for gpu, m, n, k, e in tuned.entries(table):
        assert m == tuned.m_bucket(m) and n > 0 and k % 16 == 0, (gpu, m, n, k)
        assert e.us > 0 and e.bf16_us > 0 and e.measured


@pytest.mark.parametrize("m,bucket", [(1, 1), (2, 2), (17, 32), (64, 64), (65, 128), (100, 128), (128, 128),
                                      (129, 256)])
def test_m_bucket_is_the_power_of_two_at_or_above(m, bucket):
    assert tuned.m_bucket(m) == bucket


def test_record_lookup_round_trip(tmp_path):
    table = {"about": "test", "gpus": {}}
    tuned.record(table, H100, 128, 2816, 704, tuned.TunedEntry(GOOD, 4.2, 4.8, "2026-12-07 abc1234"))
    assert tuned.lookup(H100, 128, 2816, 704, table) == GOOD
    assert tuned.lookup(H100, 100, 2816, 704, table) == GOOD           # 65-128 share the entry
    assert tuned.lookup(H100, 64, 2816, 704, table) is None            # another bucket
    assert tuned.lookup(H100, 129, 2816, 704, table) is None
    assert tuned.lookup(H100, 128, 704, 2816, table) is None           # N x K, not K x N
    assert tuned.lookup("NVIDIA H200", 128, 2816, 704, table) is None  # another GPU: the rules
    path = tmp_path / "t.json"
    tuned.save_table(table, str(path))
    again = tuned.load_table(str(path))
    assert tuned.lookup(H100, 128, 2816, 704, again) == GOOD
    entry = json.loads(path.read_text())["gpus"][H100]["128"]["2816x704"]
    assert entry == {"config": list(GOOD), "us": 4.2, "bf16_us": 4.8, "measured": "2026-12-07 abc1234"}
    # a newer measurement replaces the older one
    tuned.record(table, H100, 128, 2816, 704, tuned.TunedEntry(GOOD[:3] + (4,) + GOOD[4:], 4.0, 4.8, "later"))
    assert tuned.lookup(H100, 128, 2816, 704, table)[3] == 4


@pytest.mark.parametrize("config,why", [
    (GOOD[:9], "10 integers"),
    (GOOD[:1] + (96,) + GOOD[2:], "powers of two"),
    (GOOD[:2] + (32,) + GOOD[3:], "K blocks >= 64"),
    (GOOD[:3] + (0,) + GOOD[4:], "split >= 1"),
    (GOOD[:7] + (1, 1, 0), "never SWAP with TMA"),
    (GOOD[:6] + (0,) + GOOD[7:], "DECODE 2"),
    (GOOD[:9] + (2,), "REDUCE 0 or 1"),
    ((8,) + GOOD[1:], "BLOCK_M >= 16"),
])
def test_bad_configs_are_refused(config, why, tmp_path):
    with pytest.raises(ValueError, match=why):
        tuned.check_config(config)
    bad = {"gpus": {H100: {"128": {"2816x704": {"config": list(config), "us": 1.0, "bf16_us": 1.0,
                                                     "measured": "x"}}}}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        tuned.load_table(str(path))


def test_reading_the_table_imports_no_torch_or_triton():
    code = ("import sys; from nvfp4tools.kernels_ref.gpu import tuned; tuned.lookup('x', 128, 1, 16); "
            "print(sorted(m for m in ('torch', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_spell_out_writes_in_the_entries_a_config_may_leave_out():
    assert tuned.spell_out(GOOD[:8]) == GOOD[:8] + (0, 0)
    assert tuned.spell_out(GOOD[:9]) == GOOD[:9] + (0,)
    assert tuned.spell_out(GOOD) == GOOD
