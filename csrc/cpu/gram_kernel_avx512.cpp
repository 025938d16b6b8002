// AVX-512 build of the Gram micro-kernel (32 zmm registers: full 16 x 8 tiles).
#define DELVE_FAST_GRAM_FN gram_pairs_avx512
#define DELVE_FAST_SUB_ROWS 16
#define DELVE_FAST_SUB_COLS 8
#define DELVE_FAST_PACK_FN pack_runs_avx512
#include "cpu/gram_kernel_impl.h"
