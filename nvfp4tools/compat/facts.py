"""What vLLM, SGLang and llama.cpp do with a quantized checkpoint, as data.

Every row was read in the engine's own source (file and function named in ``source``), at the
release in :data:`RELEASES`; a row that holds for a range of releases says so. Where the engine
picks among several kernels, rows are in the engine's own order of preference, so the first row
whose conditions hold is the kernel the engine runs. Nothing here is inferred from blog posts or
fitted to logs; what was not read is not claimed (no row: nvfp4tools says nothing).

Sources were read from the released packages (each engine's Git repository is larger than the
snapshot limit of the tools used): the vLLM 0.34.0 wheel (its ``_version.py`` names commit
62d4bc3c7), the SGLang 0.5.23 wheel (no commit recorded), and the llama.cpp tree vendored in
llama-cpp-python 0.3.36 (llama.cpp commit 0c1e57098, the engine this project's tests run).
"""

from __future__ import annotations

from .model import (CC, FormatFact, GGMLTypeFact, KernelPath, KVDtypeFact, LoaderFact, MxLayout, Note, Release, Shape,
                    Source)

RELEASES = {
    "vllm": Release("vllm", "0.34.0", "62d4bc3c7", "vLLM 0.34.0 wheel, vllm/_version.py"),
    "sglang": Release("sglang", "0.5.23", "", "SGLang 0.5.23 wheel (no commit recorded)"),
    "llamacpp": Release("llamacpp", "0c1e57098", "0c1e57098bba43ac29e6e3b677cdceebdd22334f",
                        "llama.cpp as vendored in llama-cpp-python 0.3.36"),
}

ANY: tuple[CC, CC] = ((0, 0), (99, 9))
_V = "vllm 0.34.0"
_S = "sglang 0.5.23"
_L = "llama.cpp 0c1e57098"

# -- vLLM ------------------------------------------------------------------------------------

_VLLM_NVFP4_SELECT = Source("vllm/model_executor/kernels/linear/__init__.py", "init_nvfp4_linear_kernel", _V)
_VLLM_MARLIN_FP4 = Source("vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py",
                          "prepare_fp4_layer_for_marlin, marlin_utils.marlin_padded_nk", _V)
_VLLM_MOE_SELECT = Source("vllm/model_executor/layers/fused_moe/oracle/nvfp4.py", "select_nvfp4_moe_backend", _V)
_VLLM_MOE_MARLIN = Source("vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py",
                          "prepare_nvfp4_moe_layer_for_marlin", _V)
_VLLM_FI_MOE = Source("vllm/model_executor/layers/quantization/utils/flashinfer_fp4_moe.py",
                      "prepare_nvfp4_moe_layer_for_fi_or_cutlass", _V)
_VLLM_MP = Source("vllm/model_executor/kernels/linear/__init__.py", "choose_mp_linear_kernel; "
                  "mixed_precision/machete.py, marlin.py, triton_w4a16.py can_implement", _V)
_VLLM_WNA16_MOE = Source("vllm/model_executor/layers/fused_moe/oracle/int_wna16.py", "select_wna16_moe_backend; "
                         "marlin_utils.check_moe_marlin_supports_config", _V)
_VLLM_FP8 = Source("vllm/model_executor/kernels/linear/__init__.py", "init_fp8_linear_kernel; "
                   "nvfp4_utils/cutlass_scaled_mm_supports_fp8", _V)

# -- SGLang ----------------------------------------------------------------------------------

_SG_FP4_LINEAR = Source("sglang/srt/layers/quantization/modelopt_quant.py",
                        "ModelOptFp4LinearMethod (--fp4-gemm-backend auto)", _S)
_SG_FP4_MOE = Source("sglang/srt/layers/quantization/modelopt_quant.py",
                     "ModelOptNvFp4FusedMoEMethod (--moe-runner-backend auto)", _S)
_SG_CT_FP4 = Source("sglang/srt/layers/quantization/compressed_tensors/compressed_tensors.py",
                    "CompressedTensorsConfig: W4A4 NVFP4 below 10.0 served as CompressedTensorsW4A16Fp4", _S)
_SG_WNA16 = Source("sglang/srt/layers/quantization/compressed_tensors/schemes/compressed_tensors_wNa16.py",
                   "CompressedTensorsWNA16 (Marlin)", _S)
_SG_FP8 = Source("sglang/srt/layers/quantization/compressed_tensors/schemes/compressed_tensors_w8a8_fp8.py",
                 "CompressedTensorsW8A8Fp8 (min capability 89; W8A16 FP8 Marlin below)", _S)

_VLLM_HUMMING = Source("vllm/model_executor/layers/quantization/utils/humming/priority.py",
                       "prefers_humming (_HUMMING_PREFERRED_CAPABILITIES = {90}); kernels/linear/nvfp4/humming.py", _V)
_VLLM_MXFP4 = Source("vllm/model_executor/layers/fused_moe/oracle/mxfp4.py",
                     "select_mxfp4_moe_backend, mxfp4_round_up_hidden_size_and_intermediate_size", _V)
# vLLM's Triton MXFP4 MoE on sm_90 converts the experts with _swizzle_mxfp4 (num_warps left at its
# default 8) into the triton_kernels layouts vendored in the wheel (vLLM imports a site-packages
# triton_kernels first; the wheel does not depend on one). Values: HopperMXValueLayout
# (mma_version 3) pads the [N, K / 2] bytes to its tile, 2 x 4 x 2 = 16 rows by 4 x 2 x 4 = 32
# bytes. Scales: on sm_90 _swizzle_mxfp4 itself pads the K / 32 groups to a multiple of 4 (its
# "Patches #47303" block), then HopperMXScaleLayout pads N to 2 x num_warps x 2 x 8 = 256 and the
# groups to 2 (already met). The swizzled tensors replace the params (store_params_in_triton), and
# the BF16 expert biases are replaced by .to(torch.float32) copies.
_VLLM_HOPPER_MX = MxLayout(
    value_rows=16, value_k_bytes=32, scale_rows=256, scale_groups=4, bias_bytes=4,
    source=Source("vllm/model_executor/layers/quantization/utils/mxfp4_utils.py",
                  "_swizzle_mxfp4; third_party/triton_kernels/tensor_details/layout_details/hopper_value.py "
                  "HopperMXValueLayout.swizzle_data, hopper_scale.py HopperMXScaleLayout.swizzle_data; "
                  "fused_moe/oracle/mxfp4.py convert_gpt_oss_weight_to_mxfp4_moe_kernel_format (TRITON_BACKENDS)",
                  _V),
    note="triton_kernels' Hopper MX layouts pad the codes to 16 rows x 32 bytes and the block scales to 256 rows "
         "x 4 groups; the expert biases become FP32")
_IN = ("input_scale",)
# humming-kernels is a dependency of the vLLM 0.34.0 wheel; on sm_90 it is tried before Marlin
_HUMMING_NOTE = "weight-only; where the humming package does not import, Marlin runs instead"
_MARLIN_NOTE = "weight-only: activations stay BF16/FP16"

KERNEL_PATHS: tuple[KernelPath, ...] = (
    # vLLM NVFP4 linear: native FP4 kernels need cc 10.x-12.x (cutlass_fp4_supported); Marlin from 7.5
    KernelPath("vllm.nvfp4.linear.native", "vllm", "linear", "nvfp4", (10, 0), (12, 9),
               "FlashInfer/CUTLASS FP4 GEMM", "W4A4", _VLLM_NVFP4_SELECT,
               pads="native32", note="N and K zero-padded to multiples of 32 (nvfp4_utils.pad_nvfp4_weight_for_cutlass)"),
    KernelPath("vllm.nvfp4.linear.humming", "vllm", "linear", "nvfp4", (9, 0), (9, 0),
               "Humming FP4", "W4A16", _VLLM_HUMMING, ignores=_IN, note=_HUMMING_NOTE),
    KernelPath("vllm.nvfp4.linear.marlin", "vllm", "linear", "nvfp4", (7, 5), (9, 9),
               "Marlin FP4", "W4A16", _VLLM_MARLIN_FP4, pads="marlin", ignores=_IN, note=_MARLIN_NOTE),
    KernelPath("vllm.nvfp4a16.linear.cutedsl", "vllm", "linear", "nvfp4a16", (10, 0), (10, 3),
               "FlashInfer CuTe-DSL BF16xFP4", "W4A16", _VLLM_NVFP4_SELECT),
    KernelPath("vllm.nvfp4a16.linear.humming", "vllm", "linear", "nvfp4a16", (9, 0), (9, 0),
               "Humming FP4", "W4A16", _VLLM_HUMMING, note=_HUMMING_NOTE),
    KernelPath("vllm.nvfp4a16.linear.marlin", "vllm", "linear", "nvfp4a16", (7, 5), (12, 9),
               "Marlin FP4", "W4A16", _VLLM_NVFP4_SELECT, pads="marlin", note=_MARLIN_NOTE),
    # vLLM NVFP4 MoE
    KernelPath("vllm.nvfp4.moe.trtllm", "vllm", "moe", "nvfp4", (10, 0), (10, 3),
               "FlashInfer TRT-LLM FP4 MoE", "W4A4", _VLLM_MOE_SELECT, input_scale="max",
               note="input scales reduced to one maximum over all experts (flashinfer_fp4_moe.py)"),
    KernelPath("vllm.nvfp4.moe.cutlass", "vllm", "moe", "nvfp4", (12, 0), (12, 9),
               "FlashInfer CUTLASS FP4 MoE", "W4A4", _VLLM_FI_MOE, input_scale="max",
               fails=Shape(intermediate=64, message="Intermediate size padding for w1 and w3, for {backend} NvFp4 "
                                                    "backend, but this is not currently supported")),
    KernelPath("vllm.nvfp4.moe.humming", "vllm", "moe", "nvfp4", (9, 0), (9, 0),
               "Humming FP4 MoE", "W4A16", _VLLM_HUMMING, ignores=_IN, note=_HUMMING_NOTE),
    KernelPath("vllm.nvfp4.moe.marlin", "vllm", "moe", "nvfp4", (7, 5), (9, 9),
               "Marlin FP4 MoE", "W4A16", _VLLM_MOE_MARLIN, pads="marlin_moe", ignores=_IN, note=_MARLIN_NOTE,
               fails=Shape(hidden=64, message="hidden_size = {hidden} unsupported by Marlin tiles")),
    KernelPath("vllm.nvfp4a16.moe.humming", "vllm", "moe", "nvfp4a16", (9, 0), (9, 0),
               "Humming FP4 MoE", "W4A16", _VLLM_HUMMING, note=_HUMMING_NOTE),
    KernelPath("vllm.nvfp4a16.moe.marlin", "vllm", "moe", "nvfp4a16", (7, 5), (12, 9),
               "Marlin FP4 MoE", "W4A16", _VLLM_MOE_SELECT, pads="marlin_moe", note=_MARLIN_NOTE,
               fails=Shape(hidden=64, message="hidden_size = {hidden} unsupported by Marlin tiles")),
    # vLLM MXFP4 linear (compressed-tensors, group 32, weight-only)
    KernelPath("vllm.mxfp4.linear.marlin", "vllm", "linear", "mxfp4", (7, 5), (12, 9), "Marlin MXFP4", "W4A16",
               Source("vllm/model_executor/kernels/linear/__init__.py", "init_mxfp4_linear_kernel; mxfp4/marlin.py", _V),
               pads="marlin", note=_MARLIN_NOTE),
    # vLLM gpt-oss MXFP4 MoE (GptOssMxfp4MoEMethod): padding from mxfp4_round_up_hidden_size_and_intermediate_size
    KernelPath("vllm.mxfp4.moe.trtllm", "vllm", "moe", "mxfp4", (10, 0), (10, 3), "FlashInfer TRT-LLM MXFP4 MoE",
               "W4A16", _VLLM_MXFP4, formats=("mxfp4",), pad_hidden=256, pad_intermediate=128),
    KernelPath("vllm.mxfp4.moe.triton", "vllm", "moe", "mxfp4", (9, 0), (9, 0), "Triton (triton_kernels) MXFP4 MoE",
               "W4A16", _VLLM_MXFP4, formats=("mxfp4",), pad_intermediate=64, layout=_VLLM_HOPPER_MX),
    KernelPath("vllm.mxfp4.moe.marlin", "vllm", "moe", "mxfp4", (8, 0), (12, 9), "Marlin MXFP4 MoE", "W4A16",
               _VLLM_MXFP4, formats=("mxfp4",), pad_hidden=256, pad_intermediate=128, note=_MARLIN_NOTE),
    # vLLM weight-only int4 (compressed-tensors pack-quantized, GPTQ, AWQ)
    KernelPath("vllm.int4.linear.machete", "vllm", "linear", "int4", (9, 0), (9, 0), "Machete", "W4A16", _VLLM_MP,
               requires=Shape(n=128, k=64), group_sizes=(-1, 64, 128)),
    KernelPath("vllm.int4.linear.humming", "vllm", "linear", "int4", (9, 0), (9, 0), "Humming", "W4A16", _VLLM_HUMMING,
               note=_HUMMING_NOTE),
    KernelPath("vllm.int4.linear.marlin", "vllm", "linear", "int4", (7, 5), (12, 9), "Marlin", "W4A16", _VLLM_MP,
               pads="marlin", group_sizes=(-1, 32, 64, 128)),
    KernelPath("vllm.int4.linear.triton", "vllm", "linear", "int4", (0, 0), (12, 9), "Triton W4A16", "W4A16", _VLLM_MP,
               group_sizes=(-1, 32, 64, 128, 256)),
    KernelPath("vllm.int4.moe.marlin", "vllm", "moe", "int4", (7, 5), (12, 9), "Marlin MoE", "W4A16", _VLLM_WNA16_MOE,
               requires=Shape(hidden=128), group_sizes=(-1, 32, 64, 128)),
    KernelPath("vllm.int4.moe.triton", "vllm", "moe", "int4", (0, 0), (12, 9), "Triton WNA16 MoE", "W4A16",
               _VLLM_WNA16_MOE),
    KernelPath("vllm.int8a16.linear.marlin", "vllm", "linear", "int8a16", (7, 5), (12, 9), "Marlin", "W8A16", _VLLM_MP,
               pads="marlin", group_sizes=(-1, 32, 64, 128)),
    # vLLM FP8 W8A8
    KernelPath("vllm.fp8.linear.native", "vllm", "linear", "fp8", (8, 9), (12, 9), "CUTLASS FP8 scaled-mm", "W8A8",
               _VLLM_FP8),
    KernelPath("vllm.fp8.linear.marlin", "vllm", "linear", "fp8", (7, 5), (8, 8), "Marlin FP8", "W8A16", _VLLM_FP8,
               pads="marlin", ignores=_IN, note=_MARLIN_NOTE),

    # SGLang NVFP4 linear (--fp4-gemm-backend auto): Marlin on 8.0-9.x, FlashInfer on Blackwell
    KernelPath("sglang.nvfp4.linear.cutedsl", "sglang", "linear", "nvfp4", (10, 0), (10, 9),
               "FlashInfer CuTe-DSL FP4 GEMM", "W4A4", _SG_FP4_LINEAR, formats=("modelopt",)),
    KernelPath("sglang.nvfp4.linear.cutlass", "sglang", "linear", "nvfp4", (11, 0), (12, 9),
               "FlashInfer CUTLASS FP4 GEMM", "W4A4", _SG_FP4_LINEAR, formats=("modelopt",)),
    KernelPath("sglang.nvfp4.linear.ct_native", "sglang", "linear", "nvfp4", (10, 0), (12, 9),
               "CUTLASS FP4 GEMM (CompressedTensorsW4A4Fp4)", "W4A4", _SG_CT_FP4, formats=("compressed-tensors",)),
    KernelPath("sglang.nvfp4.linear.marlin", "sglang", "linear", "nvfp4", (8, 0), (9, 9),
               "Marlin FP4", "W4A16", _SG_FP4_LINEAR, pads="marlin", ignores=_IN, note=_MARLIN_NOTE),
    KernelPath("sglang.nvfp4a16.linear.marlin", "sglang", "linear", "nvfp4a16", (8, 0), (12, 9),
               "Marlin FP4", "W4A16", Source("sglang/srt/layers/quantization/modelopt_quant.py",
                                             "ModelOptNvFp4A16LinearMethod; compressed_tensors_w4a16_nvfp4.py", _S),
               pads="marlin", note=_MARLIN_NOTE),
    # SGLang NVFP4 MoE (--moe-runner-backend auto)
    KernelPath("sglang.nvfp4.moe.trtllm", "sglang", "moe", "nvfp4", (10, 0), (10, 9),
               "FlashInfer TRT-LLM FP4 MoE", "W4A4", _SG_FP4_MOE, input_scale="max"),
    KernelPath("sglang.nvfp4.moe.cutlass", "sglang", "moe", "nvfp4", (11, 0), (12, 9),
               "FlashInfer CUTLASS FP4 MoE", "W4A4", _SG_FP4_MOE, input_scale="max"),
    KernelPath("sglang.nvfp4.moe.marlin", "sglang", "moe", "nvfp4", (8, 0), (9, 9),
               "Marlin FP4 MoE", "W4A16", _SG_FP4_MOE, ignores=_IN, note=_MARLIN_NOTE),
    KernelPath("sglang.nvfp4a16.moe.marlin", "sglang", "moe", "nvfp4a16", (8, 0), (12, 9),
               "Marlin FP4 MoE", "W4A16", _SG_FP4_MOE, note=_MARLIN_NOTE),
    # SGLang weight-only int4 and FP8
    KernelPath("sglang.int4.linear.marlin", "sglang", "linear", "int4", (8, 0), (12, 9), "Marlin", "W4A16", _SG_WNA16),
    KernelPath("sglang.int8a16.linear.marlin", "sglang", "linear", "int8a16", (8, 0), (12, 9), "Marlin", "W8A16",
               _SG_WNA16),
    KernelPath("sglang.fp8.linear.native", "sglang", "linear", "fp8", (8, 9), (12, 9), "FP8 W8A8 GEMM", "W8A8", _SG_FP8),
    KernelPath("sglang.fp8.linear.marlin", "sglang", "linear", "fp8", (8, 0), (8, 8), "Marlin FP8", "W8A16", _SG_FP8,
               ignores=_IN, note=_MARLIN_NOTE),
)



# Layer kinds and weight families an engine has no kernel for: the engine refuses the checkpoint.
NO_PATH: dict[tuple[str, str, str], Note] = {
    ("vllm", "linear", "int4-actorder"): Note(
        "group/dynamic activation ordering (actorder) is no longer supported; use a checkpoint with static "
        "or no activation ordering",
        Source("vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py",
               "CompressedTensorsConfig target-scheme parsing; utils/gptq_utils.py normalize_and_validate_gptq_desc_act",
               _V)),
    ("vllm", "moe", "int4-actorder"): Note(
        "group/dynamic activation ordering (actorder) is no longer supported",
        Source("vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py",
               "CompressedTensorsConfig target-scheme parsing", _V)),
}
_CT_UNPACKED = ("a weight-only int8 tensor stored as int8 (compressed-tensors int-quantized) has no scheme: "
                "weight-only integers load only as pack-quantized (int32 words); the int-quantized format is "
                "for W8A8 checkpoints, which carry input activations")
NO_PATH.update({
    ("vllm", "linear", "int8a16-unpacked"): Note(_CT_UNPACKED, Source(
        "vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py",
        "_get_scheme_from_parts (WNA16 needs format pack-quantized; else 'No compressed-tensors compatible scheme')", _V)),
    ("sglang", "linear", "int8a16-unpacked"): Note(_CT_UNPACKED, Source(
        "sglang/srt/layers/quantization/compressed_tensors/compressed_tensors.py",
        "_get_scheme_from_parts (CompressedTensorsWNA16 for pack-quantized only)", _S)),
})
# Below these compute capabilities the engine's quantization config refuses to load at all.
MIN_CC: dict[tuple[str, str], tuple[CC, Note]] = {
    ("vllm", "nvfp4"): ((7, 5), Note("NVFP4 needs compute capability 7.5 or newer",
                                     Source("vllm/model_executor/layers/quantization/modelopt.py",
                                            "ModelOptNvFp4Config.get_min_capability", _V))),
    ("vllm", "mxfp4"): ((8, 0), Note("MXFP4 needs compute capability 8.0 or newer",
                                     Source("vllm/model_executor/layers/quantization/mxfp4.py",
                                            "Mxfp4Config.get_min_capability", _V))),
    ("sglang", "nvfp4"): ((8, 0), Note("ModelOpt NVFP4 needs compute capability 8.0 ('Minimum capability: 80')",
                                       Source("sglang/srt/layers/quantization/modelopt_quant.py",
                                              "ModelOptFp4Config.get_min_capability", _S))),
}
# Experts without a static input scale where their layer's other experts have one (calibration
# never routed tokens to them), on a W4A4 MoE kernel.
MISSING_EXPERT_INPUT_SCALE: dict[str, Note] = {
    "vllm": Note(
        "vLLM allocates the per-expert input scales with torch.empty and checks neither presence nor value, so "
        "these experts get whatever the allocator held; kernels that take the maximum over experts (FlashInfer) "
        "are wrong when that memory is not zero, per-expert kernels compute 1/0 = inf and emit NaN on prompts "
        "routed there (vllm-project/vllm #45212; the fix #45320 is not in 0.34.0)",
        Source("vllm/model_executor/layers/quantization/modelopt.py",
               "ModelOptNvFp4FusedMoE.create_weights; fused_moe/oracle/nvfp4.py make_nvfp4_moe_quant_config", _V)),
    "sglang": Note(
        "SGLang creates the per-expert input scales filled with 1.0 and does not check that they were loaded; "
        "its FlashInfer MoE kernels use the maximum over experts, so one missing scale sets every expert's "
        "activation scale to 1.0 (activations of normal magnitude quantize to a handful of FP4 steps)",
        Source("sglang/srt/layers/quantization/modelopt_quant.py",
               "ModelOptNvFp4FusedMoEMethod.create_weights, _make_per_tensor_scale_parameter", _S)),
}
# Marlin FP4 pads shapes its tiles do not cover; releases before that refused them at load.
MARLIN_LEGACY_SHAPE = Note(
    "older releases refused it at load ('size_n = N is not divisible by tile_n_size = 64'; SGLang: 'NVFP4 "
    "Marlin requires output_size_per_partition to be a multiple of 64'; NVIDIA Model-Optimizer PR #1687)",
    Source("vllm/model_executor/layers/quantization/utils/marlin_utils.py", "marlin_padded_nk", _V + "; " + _S,
           ref="NVIDIA/Model-Optimizer PR #1687"))

# Marlin FP4 re-encodes E4M3 block scales as S0E5M3: after a power-of-two rescale it zeroes every
# scale below 2^-6 (the E4M3 subnormals when the largest scale is near 448)
MARLIN_FLUSH = Source("vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py",
                      "_nvfp4_compute_scale_factor, nvfp4_marlin_process_scales "
                      "('marlin_scales[marlin_scales < 2] = 0')", _V)

# -- KV cache dtypes -------------------------------------------------------------------------

_VLLM_KV = Source("vllm/platforms/cuda.py", "get_valid_backends; v1/attention/backends/flash_attn.py, flashinfer.py, "
                  "triton_attn.py supports_kv_cache_dtype", _V)
_SG_KV = Source("sglang/srt/server_args.py", "--kv-cache-dtype; attention backend selection", _S)
_LL_KV = Source("common/arg.cpp", "kv_cache_types; src/llama-context.cpp llama_init_from_model", _L)

KV_DTYPES: tuple[KVDtypeFact, ...] = (
    # vLLM: FlashInfer (cc 8.0-12.1) lists fp8/fp8_e4m3/fp8_e5m2; Triton needs 8.9 for fp8
    KVDtypeFact("vllm", "fp8", (8, 0), (12, 1), True, _VLLM_KV, "FlashInfer attention on 8.0-8.8; FA3/FA4 or "
                "FlashInfer from 8.9"),
    KVDtypeFact("vllm", "fp8_e4m3", (8, 0), (12, 1), True, _VLLM_KV),
    KVDtypeFact("vllm", "fp8_e5m2", (8, 0), (12, 1), True, _VLLM_KV, "FlashInfer only (FlashAttention refuses e5m2)"),
    KVDtypeFact("vllm", "fp8", (0, 0), (7, 9), False, _VLLM_KV,
                "no attention backend accepts an FP8 cache below compute capability 8.0"),
    KVDtypeFact("vllm", "fp8_e5m2", (0, 0), (7, 9), False, _VLLM_KV,
                "no attention backend accepts an FP8 cache below compute capability 8.0"),
    KVDtypeFact("vllm", "q8_0", ANY[0], ANY[1], False, _VLLM_KV, "not a vLLM cache dtype (fp8, fp8_e5m2, auto)"),
    KVDtypeFact("vllm", "q4_0", ANY[0], ANY[1], False, _VLLM_KV, "not a vLLM cache dtype (fp8, fp8_e5m2, auto)"),
    KVDtypeFact("sglang", "fp8", ANY[0], ANY[1], True, _SG_KV),
    KVDtypeFact("sglang", "fp8_e5m2", ANY[0], ANY[1], True, _SG_KV, "FA3 switches to Triton attention for e5m2"),
    KVDtypeFact("sglang", "q8_0", ANY[0], ANY[1], False, _SG_KV, "not an SGLang cache dtype (fp8_e4m3, fp8_e5m2)"),
    KVDtypeFact("sglang", "q4_0", ANY[0], ANY[1], False, _SG_KV, "not an SGLang cache dtype (fp8_e4m3, fp8_e5m2)"),
    KVDtypeFact("llamacpp", "fp8", ANY[0], ANY[1], False, _LL_KV,
                "-ctk/-ctv accept f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"),
    KVDtypeFact("llamacpp", "fp8_e5m2", ANY[0], ANY[1], False, _LL_KV,
                "-ctk/-ctv accept f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"),
    KVDtypeFact("llamacpp", "q8_0", ANY[0], ANY[1], True, _LL_KV,
                "a quantized V cache needs flash attention (on by default: -fa auto)"),
    KVDtypeFact("llamacpp", "q4_0", ANY[0], ANY[1], True, _LL_KV,
                "a quantized V cache needs flash attention (on by default: -fa auto)"),
)

# -- GGUF ------------------------------------------------------------------------------------

_GGML_ENUM = Source("ggml/include/ggml.h", "enum ggml_type; ggml/src/gguf.cpp gguf_init_from_reader", _L)
GGML_TYPES: tuple[GGMLTypeFact, ...] = (
    GGMLTypeFact("llamacpp", "mxfp4", "the build of 2025-08-05 (PR #15091, gpt-oss)", _GGML_ENUM,
                 "'invalid ggml type 39'"),
    GGMLTypeFact("llamacpp", "nvfp4", "commit 5eae9cb1d of 2026-03-11 (PR #19769; first release between b8184 and "
                 "b8298)", _GGML_ENUM, "'invalid ggml type 40. should be in [0, 40)'"),
    GGMLTypeFact("llamacpp", "q1_0", "the build of 2026-04-06 (PR #21273)", _GGML_ENUM),
    GGMLTypeFact("llamacpp", "q2_0", "the build of 2026-07-07 (PR #24448)", _GGML_ENUM),
    GGMLTypeFact("sglang", "nvfp4", None, Source("sglang/srt/layers/quantization/gguf.py", "GGUF quant types", _S)),
    GGMLTypeFact("sglang", "mxfp4", None, Source("sglang/srt/layers/quantization/gguf.py", "GGUF quant types", _S)),
    GGMLTypeFact("sglang", "tq1_0", None, Source("sglang/srt/layers/quantization/gguf.py", "GGUF quant types", _S)),
    GGMLTypeFact("sglang", "tq2_0", None, Source("sglang/srt/layers/quantization/gguf.py", "GGUF quant types", _S)),
    GGMLTypeFact("sglang", "q8_k", None, Source("sglang/srt/layers/quantization/gguf.py", "GGUF quant types", _S)),
)

FORMAT_SUPPORT: dict[tuple[str, str], FormatFact] = {
    ("llamacpp", "safetensors"): FormatFact(False, "llama.cpp reads GGUF only; nvfp4tools convert CKPT OUT --to gguf "
                                            "writes one it runs", Source("src/llama-model-loader.cpp",
                                                                         "llama_model_loader", _L)),
    ("vllm", "gguf"): FormatFact(False, "vLLM 0.24.0 and later have no GGUF loader (0.19-0.23 read Q4_0..Q8_0, "
                                 "K- and I-quants, never NVFP4 or MXFP4); convert to safetensors with nvfp4tools "
                                 "convert --to compressed-tensors",
                                 Source("vllm/model_executor/layers/quantization/__init__.py",
                                        "QuantizationMethods ('gguf' removed in 0.24.0)", _V)),
    ("sglang", "gguf"): FormatFact(True, "SGLang reads single-file GGUFs (F32/F16/BF16, Q4_0-Q8_1, K- and I-quants)",
                                   Source("sglang/srt/model_loader/loader.py", "GGUFModelLoader", _S)),
}

# llama.cpp's own converter (convert_hf_to_gguf.py) on a safetensors checkpoint
_LL_CONVERT = Source("conversion/base.py", "ModelBase.dequant_model, _generate_nvfp4_tensors", _L)
LLAMACPP_CONVERTER_GROUPS = Note(
    "llama.cpp's convert_hf_to_gguf.py refuses a compressed-tensors checkpoint with several config groups "
    "unless every group is nvfp4-pack-quantized ('Can't handle multiple config groups for compressed-tensors yet')",
    _LL_CONVERT)
# GGUF NVFP4 blocks are 64 elements (ggml-common.h QK_NVFP4): a row of another length has no NVFP4 form
LLAMACPP_NVFP4_ROW = Note(
    "a GGUF NVFP4 row is whole 64-element blocks (ggml QK_NVFP4; the loader refuses 'not a multiple of block "
    "size (64)', and llama.cpp's converter fails reshaping it)",
    Source("ggml/src/ggml-common.h", "QK_NVFP4; ggml/src/gguf.cpp gguf_init_from_reader", _L))

# llama.cpp applies a tensor's NVFP4 per-tensor scale only where its architecture's graph passes it
# (the table itself lives with the GGUF writer, which must honour it: formats/gguf_arch.GRAPH_SCALED).
LLAMACPP_GRAPH_SCALES = Source("src/models/*.cpp", "build_lora_mm/build_ffn/build_moe_ffn *_s arguments; "
                               "src/llama-model.cpp load_tensors generic .scale pass", _L)

# -- model loaders: expert tensor names per architecture -------------------------------------

_FP4 = ("nvfp4", "nvfp4a16")
LOADERS: tuple[LoaderFact, ...] = (
    LoaderFact("vllm.gpt_oss.nvfp4_experts", "vllm", ("gpt_oss",), ("modelopt", "compressed-tensors"), "any", _FP4,
               "vLLM's gpt-oss loader maps MXFP4 and BF16 experts only: NVFP4 expert scale keys (weight_scale_2, "
               "input_scale) are skipped without an error, so the experts compute at the wrong magnitude",
               "0.34.0", Source("vllm/model_executor/models/gpt_oss.py",
                                "GptOssModel.load_weights, _load_weights_other", _V)),
    LoaderFact("sglang.gpt_oss.nvfp4_experts", "sglang", ("gpt_oss",), ("modelopt", "compressed-tensors"), "any", _FP4,
               "SGLang's gpt-oss loader maps only fused BF16/MXFP4 experts (make_expert_params_mapping_fused): NVFP4 "
               "expert tensors have no parameter to load into",
               "0.5.23", Source("sglang/srt/models/gpt_oss.py", "GptOssForCausalLM.load_weights", _S)),
    LoaderFact("sglang.gemma4.fused_nvfp4_scales", "sglang", ("gemma4", "gemma4_text"), ("modelopt", "compressed-tensors"),
               "fused", _FP4,
               "SGLang's Gemma 4 loader knows fused 3-D experts only as BF16 experts.gate_up_proj / experts.down_proj: "
               "their NVFP4 scale tensors fail its 'name not in params_dict' check and are skipped silently",
               "0.5.23", Source("sglang/srt/models/gemma4_causal.py", "Gemma4ForCausalLM.load_weights", _S)),
    LoaderFact("vllm.gemma4.per_expert_keyerror", "vllm", ("gemma4", "gemma4_text"), ("compressed-tensors",),
               "per-expert", _FP4,
               "vLLM 0.19.0's Gemma 4 expert mapping matched only bare experts.E.proj names: a compressed-tensors "
               "scale key such as layers.0.moe.experts.0.down_proj.input_global_scale raised KeyError at load",
               "0.19.0", Source("vllm/model_executor/models/gemma4.py", "Gemma4Model.load_weights", "vllm 0.19.0-0.19.1",
                                ref="vllm-project/vllm #39256"), fixed_in="0.19.1"),
)
