// AVX2 + FMA build of the Gram micro-kernel (16 ymm registers: 8 x 4 sub-tiles).
#define DELVE_FAST_GRAM_FN gram_pairs_avx2
#define DELVE_FAST_SUB_ROWS 8
#define DELVE_FAST_SUB_COLS 4
#define DELVE_FAST_PACK_FN pack_runs_avx2
#include "cpu/gram_kernel_impl.h"
