"""`nvfp4tools bench` on a generated checkpoint with the Gemma-4-26B-A4B layer shapes (two
decoder layers, one sliding and one global, so that every linear shape of the model appears; 4
experts instead of 128, which changes no shape; real random weights, ModelOpt NVFP4, all linears
quantized), both timing methods.

    python bench/gpu_bench_cli.py [--dir /tmp/nvfp4tools-bench-g26-2l] [--json-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import copy
import os
import subprocess
import sys


def config_2l() -> dict:
    from nvfp4tools.synth import GEMMA4_26B_A4B

    cfg = copy.deepcopy(GEMMA4_26B_A4B)
    t = cfg["text_config"]
    t["num_hidden_layers"] = 2
    t["layer_types"] = ["sliding_attention", "full_attention"]
    t["vocab_size"] = 4096
    t["num_experts"] = 4
    t["top_k_experts"] = 2
    cfg["vision_config"] = None
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-g26-2l")
    ap.add_argument("--json-dir", default=None)
    ap.add_argument("--timings", default="graph,single", help="which of bench's timing methods, in order")
    ap.add_argument("--ms", default="1,16,128", help="bench's --ms")
    ap.add_argument("--backend", default="all", help="bench's --backend")
    a = ap.parse_args()
    if not os.path.isdir(a.dir):
        from nvfp4tools.synth import synthesize
        synthesize(a.dir, fmt="modelopt", recipe="all-linear", config=config_2l())
    from nvfp4tools.cli.bench import render_table

    out_dir = a.json_dir or tempfile.mkdtemp()
    for timing in a.timings.split(","):
        path = os.path.join(out_dir, f"bench_cli_{timing}.json")
        print(f"$ nvfp4tools bench {a.dir} --timing {timing} --format json > {path}", flush=True)
        with open(path, "w") as fh:
            r = subprocess.run([sys.executable, "-m", "nvfp4tools", "bench", a.dir, "--timing", timing,
                                "--format", "json", "--ms", a.ms, "--backend", a.backend], stdout=fh, check=False)
        if r.returncode:
            print(f"exit {r.returncode}")
            continue
        with open(path) as fh:
            print(render_table(json.load(fh)), flush=True)


if __name__ == "__main__":
    main()
