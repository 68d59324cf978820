"""``estimate`` beside the published figures it is held to (docs/estimate-figures.md): KV bytes per
token, vLLM on an RTX 5090 and SGLang on an RTX 3090 for Gemma-4-26B-A4B NVFP4, each figure with
the published one and the relative error. The checkpoints are header-only full-size Gemma-4-26B-A4B
(sparse files, ~60 MB of disk each), in the two published layouts.

    python bench/estimate_figures.py
"""

from __future__ import annotations

import tempfile

from nvfp4tools.arch import parse_arch
from nvfp4tools.estimate import KV_DTYPE_BYTES, Settings, estimate, kv_summary
from nvfp4tools.formats import read
from nvfp4tools.gpus import get_gpu
from nvfp4tools.synth import GEMMA4_26B_A4B, synthesize

GiB = 2**30


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 or v == int(v) else f"{v:.2f}"


def row(what: str, published: float, got: float, unit: str = "") -> None:
    err = (got - published) / published
    print(f"| {what} | {fmt(published)}{unit} | {fmt(got)}{unit} | {err:+.1%} |")


def main() -> None:
    print("| figure | published | estimate | error |")
    print("|---|---|---|---|")
    fp8 = kv_summary(parse_arch(GEMMA4_26B_A4B), KV_DTYPE_BYTES["fp8"])
    row("KV bytes/token, FP8, 5 full layers", 10_240, fp8["bytes_per_token_full_layers"], " B")
    row("KV bytes/token, FP8, 25 sliding layers", 102_400, fp8["bytes_per_token_sliding_layers"], " B")

    with tempfile.TemporaryDirectory() as tmp:
        ck = {}
        for recipe in ("mlp-experts", "all-linear"):
            synthesize(f"{tmp}/{recipe}", preset="gemma4-26b-a4b", fmt="modelopt", recipe=recipe, header_only=True)
            ck[recipe] = read(f"{tmp}/{recipe}")

        # vLLM 0.19, RTX 5090, NVFP4 experts + MLP, BF16 attention, max-model-len 4096 (FusenAI card)
        bf = estimate(ck["mlp-experts"], get_gpu("rtx5090"), Settings(engine="vllm", context=4096)).report
        f8 = estimate(ck["mlp-experts"], get_gpu("rtx5090"),
                      Settings(engine="vllm", context=4096, kv_dtype="fp8")).report
        row("vLLM RTX 5090: weights", 17.2, bf["weights"]["bytes_per_gpu"] / GiB, " GiB")
        row("vLLM RTX 5090: KV cache tokens, BF16 KV", 43_000, bf["capacity"]["kv_pool_tokens_legacy"])
        row("vLLM RTX 5090: max concurrency, BF16 KV", 15, bf["capacity"]["max_concurrency"], "x")
        row("vLLM RTX 5090: KV cache tokens, FP8 KV", 87_000, f8["capacity"]["kv_pool_tokens_legacy"])
        row("vLLM RTX 5090: max concurrency, FP8 KV", 30, f8["capacity"]["max_concurrency"], "x")

        # SGLang, RTX 3090, all-linear NVFP4, FP8 KV, mem-fraction 0.91, swa ratio 0.05 (community card)
        sg = dict(engine="sglang", context=8192, kv_dtype="fp8", mem_fraction=0.91, swa_ratio=0.05)
        logged = estimate(ck["all-linear"], get_gpu("rtx3090"),
                          Settings(**sg, weights_bytes_override=int(17.81 * GiB))).report["capacity"]
        row("SGLang RTX 3090: full pool tokens (logged weights)", 232_000, logged["full_pool_tokens"])
        row("SGLang RTX 3090: SWA pool tokens (logged weights)", 11_600, logged["swa_pool_tokens"])
        row("SGLang RTX 3090: KV (logged weights)", 3.33, logged["kv_pool_bytes"] / GiB, " GiB")
        pred = estimate(ck["all-linear"], get_gpu("rtx3090"), Settings(**sg)).report
        row("SGLang RTX 3090: weights (predicted)", 17.81, pred["weights"]["bytes_per_gpu"] / GiB, " GiB")


if __name__ == "__main__":
    main()
