// AVX-512 build of the Gram micro-kernel (32 zmm registers: 16 x 8 float64 or 16 x 16 float32 tiles).
#define DELVE_FAST_GRAM_FN gram_pairs_avx512
#define DELVE_FAST_PACK_FN pack_runs_avx512
#define DELVE_FAST_PACK_ROWS_FN pack_rows_avx512
#define DELVE_FAST_F64_ROWS 16
#define DELVE_FAST_F64_COLS 8
#define DELVE_FAST_F32_ROWS 16
#define DELVE_FAST_F32_COLS 16
#define DELVE_FAST_F32_PAIR_ROWS 8
#include "cpu/gram_kernel_impl.h"
