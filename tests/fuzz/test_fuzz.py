"""The mutation fuzzer in CI: a fixed seed and a small count by default, more on demand.

    NVFP4TOOLS_FUZZ_CASES=20000 NVFP4TOOLS_FUZZ_SEED=7 pytest -q tests/fuzz
    python -m tests.fuzz.harness --cases 20000 --seed 7 --jobs 2     # the same, with a summary

Every mutant runs through inspect, inspect --deep, verify --sample 2, estimate and convert --dry-run
(and one in eight through a real convert); see harness.py for what each run must hold.
"""

from __future__ import annotations

import os
import random
import warnings

import pytest

from .harness import KNOWN, MEMORY_SLACK, TIME_LIMIT_S, input_bytes, memory_run, run_many
from .mutate import Mutator
from .seeds import DRY_RUN_TARGET, build

CASES = int(os.environ.get("NVFP4TOOLS_FUZZ_CASES", "1500"))
SEED = int(os.environ.get("NVFP4TOOLS_FUZZ_SEED", "20261207"))
MEMORY_CASES = int(os.environ.get("NVFP4TOOLS_FUZZ_MEMORY_CASES", "12"))


def test_mutants_hold_the_hostile_input_promise(tmp_path):
    failures = []
    known: dict[str, int] = {}
    n_runs = 0
    for res in run_many(SEED, range(CASES), str(tmp_path)):
        n_runs += len(res.runs)
        for run in res.known:
            known[run.where] = known.get(run.where, 0) + 1
        for run, problem in res.problems:
            failures.append(f"{problem}: nvfp4tools {' '.join(run.args)[:160]}\n    mutant: {res.mutant[:200]}\n"
                            f"    stderr: {run.stderr.strip()[-300:]}\n"
                            f"    reproduce: python -m tests.fuzz.harness --seed {SEED} --case {res.case} --keep DIR")
    for where, n in known.items():   # awaiting a fix outside the readers (harness.KNOWN says which)
        warnings.warn(f"fuzz: {n} runs hit the known failure {where}: {KNOWN[where][1]}")
    assert n_runs >= 5 * CASES
    assert not failures, f"{len(failures)} problems in {CASES} mutants:\n" + "\n".join(failures[:20])


def test_mutator_is_deterministic(tmp_path):
    seeds = build(str(tmp_path / "seeds"))
    got = []
    for k in range(2):
        rng = random.Random(f"{SEED}:42")
        name = rng.choice(sorted(seeds))
        os.makedirs(tmp_path / f"w{k}")
        got.append(Mutator(rng).make(seeds[name], str(tmp_path / f"w{k}")).describe())
    assert got[0] == got[1]


def test_memory_and_time_bounded_in_a_subprocess(tmp_path):
    """Peak RSS (the process's own VmHWM) of real processes on mutants, the hostile-size ones included, stays under
    2x the input plus 300 MB, and each finishes within the time bound."""
    seeds = build(str(tmp_path / "seeds"))
    rng = random.Random(f"{SEED}:memory")
    mutator = Mutator(rng)
    cases = []
    for i in range(MEMORY_CASES):
        name = sorted(seeds)[i % len(seeds)]
        work = str(tmp_path / f"m{i}")
        os.makedirs(work)
        m = mutator.make(seeds[name], work)
        if i % 4 == 0 and not m.path.endswith(".gguf"):   # the sizes a reader must not swallow
            (mutator.json_file if i % 8 == 0 else mutator.file_kind)(m)
        cases.append((name, m))
    for name, m in cases:
        cmd = rng.choice([["inspect", m.path], ["inspect", "--deep", m.path], ["verify", "--sample", "2", m.path],
                          ["estimate", m.path],
                          ["convert", m.path, os.path.join(os.path.dirname(m.folder), "out"), "--to",
                           DRY_RUN_TARGET[name], "--dry-run"]])
        code, peak, seconds, err = memory_run(cmd)
        assert code in (0, 1, 2, 3, 4), (cmd, code, err[-500:])
        assert 0 < peak <= 2 * input_bytes(m.folder) + MEMORY_SLACK, (cmd, peak)
        # a fresh interpreter's imports are part of the wall time here, hence the extra seconds
        assert seconds <= TIME_LIMIT_S + 5, (cmd, seconds)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
