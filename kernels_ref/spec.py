"""Format facts as data (tests read the same tables).

E2M1: OCP Microscaling Formats (MX) v1.0 section 5.3.3 (FP4 E2M1); NVFP4 uses it with a
16-element E4M3 block scale (NVIDIA Blackwell NVFP4; Model-Optimizer ``nvfp4_tensor.py``).
"""

from __future__ import annotations

E2M1_MAX = 6.0        # largest E2M1 magnitude
E4M3_MAX = 448.0      # largest finite float8_e4m3fn
E4M3_MIN_CLAMP = 2.0 ** -9  # ModelOpt clamps block scales to [2**-9, 448] (_cast_per_block_scale_to_fp8)
NVFP4_BLOCK = 16      # elements per E4M3 block scale

# code (nibble) -> value; bit 3 is the sign, code 8 is -0.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

# Rounding bounds between consecutive magnitudes (ModelOpt e2m1_bounds). Ties at the bounds with
# index 1, 3, 5 (0.75, 1.75, 3.5) round up, the others down: round-half-to-even on the grid.
E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
E2M1_TIES_UP = (0.75, 1.75, 3.5)
