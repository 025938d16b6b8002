// AVX2 + FMA build of the Gram micro-kernel (16 ymm registers: small sub-tiles).
#define DELVE_FAST_GRAM_FN gram_pairs_avx2
#define DELVE_FAST_PACK_FN pack_runs_avx2
#define DELVE_FAST_PACK_ROWS_FN pack_rows_avx2
#define DELVE_FAST_F64_ROWS 8
#define DELVE_FAST_F64_COLS 4
#define DELVE_FAST_F32_ROWS 16
#define DELVE_FAST_F32_COLS 4
#include "cpu/gram_kernel_impl.h"
