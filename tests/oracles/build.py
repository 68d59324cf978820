"""Make real upstream checkpoints on the CPU (the interop oracles).

A tiny Gemma 4 MoE (text + vision) built with transformers, quantized by nvidia-modelopt
(NVFP4_DEFAULT_CFG, NVFP4_EXPERTS_ONLY_CFG) and exported with ``export_hf_checkpoint``, then
converted to compressed-tensors NVFP4 with compressed-tensors' own ``convert_checkpoint`` +
``ModelOptNvfp4Converter``. Run as a script to build them into a folder:

    python tests/oracles/build.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import shutil
import sys

TEXT = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=2,
            num_key_value_heads=1, head_dim=64, global_head_dim=128, sliding_window=64, enable_moe_block=True,
            num_experts=8, top_k_experts=2, moe_intermediate_size=64, attention_k_eq_v=True,
            num_global_key_value_heads=1, vocab_size_per_layer_input=512, hidden_size_per_layer_input=0)
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, head_dim=32)


def tiny_gemma4(seed: int = 0):
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig, Gemma4VisionConfig

    torch.manual_seed(seed)
    cfg = Gemma4Config(text_config=Gemma4TextConfig(**TEXT).to_dict(),
                       vision_config=Gemma4VisionConfig(**VISION).to_dict())
    cfg.architectures = ["Gemma4ForConditionalGeneration"]  # export crashes on None (oracles.md)
    model = Gemma4ForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    return model


def save_bf16(model, out: str) -> None:
    import torch
    model.save_pretrained(out)
    model.config.dtype = torch.bfloat16  # save_pretrained leaves the string "bfloat16", which export rejects


def modelopt_export(model, out: str, cfg_name: str) -> None:
    import modelopt.torch.quantization as mtq
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    def forward_loop(m):
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            ids = torch.randint(0, TEXT["vocab_size"], (2, 16), generator=g)
            m(input_ids=ids)

    with torch.no_grad():
        mtq.quantize(model, getattr(mtq, cfg_name), forward_loop)
    export_hf_checkpoint(model, export_dir=out)


def ct_convert(src: str, dst: str) -> None:
    from compressed_tensors.entrypoints.convert import ModelOptNvfp4Converter, convert_checkpoint

    with open(os.path.join(src, "hf_quant_config.json")) as fh:
        excl = json.load(fh)["quantization"]["exclude_modules"]
    convert_checkpoint(src, dst, ModelOptNvfp4Converter(ignore=excl, targets=["Linear"]), max_workers=1,
                       device="cpu")


def build_all(root: str) -> dict[str, str]:
    """Build every oracle checkpoint under ROOT; returns name -> path."""
    paths = {k: os.path.join(root, k) for k in ("bf16", "modelopt_nvfp4", "modelopt_experts_only", "ct_nvfp4")}
    if all(os.path.isfile(os.path.join(p, "config.json")) for p in paths.values()):
        return paths
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    model = tiny_gemma4()
    save_bf16(model, paths["bf16"])
    modelopt_export(model, paths["modelopt_nvfp4"], "NVFP4_DEFAULT_CFG")
    model2 = tiny_gemma4()
    modelopt_export(model2, paths["modelopt_experts_only"], "NVFP4_EXPERTS_ONLY_CFG")
    ct_convert(paths["modelopt_nvfp4"], paths["ct_nvfp4"])
    return paths


if __name__ == "__main__":
    print(json.dumps(build_all(sys.argv[1]), indent=2))


def add_tokenizer(dirs: list[str], vocab_size: int = 512) -> None:
    """A tiny byte-fallback BPE tokenizer (what llama.cpp's LlamaHfVocab accepts), saved into DIRS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + bytes_, show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog " * 4, "nvfp4 tools inspect estimate convert verify " * 4,
            "hello world, this is a tiny tokenizer for tests " * 4]
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    for d in dirs:
        fast.save_pretrained(d)


def llama_cpp_convert(converter_dir: str, src: str, out: str, outtype: str | None = None) -> None:
    """Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on SRC."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.join(converter_dir, "gguf-py") + os.pathsep + converter_dir,
               NO_LOCAL_GGUF="")
    cmd = [sys.executable, os.path.join(converter_dir, "convert_hf_to_gguf.py"), src, "--outfile", out]
    if outtype:
        cmd += ["--outtype", outtype]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {src}:\n{r.stderr[-3000:]}")
