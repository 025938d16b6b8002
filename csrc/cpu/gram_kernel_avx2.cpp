// AVX2 + FMA build of the Gram micro-kernel (16 ymm registers: 8 x 4 sub-tiles).
#define DELVE_FAST_GRAM_FN gram_units_avx2
#define DELVE_FAST_SUB_ROWS 8
#define DELVE_FAST_SUB_COLS 4
#include "cpu/gram_kernel_impl.h"
