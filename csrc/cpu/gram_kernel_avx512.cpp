// AVX-512 build of the Gram micro-kernel (32 zmm registers). float64 sub-tiles
// are 8 rows x 16 columns of g; float32 ones are 8 x 32 across two column
// blocks, or 16 x 16 where a column block has no neighbour.
#define DELVE_FAST_GRAM_FN gram_pairs_avx512
#define DELVE_FAST_PACK_FN pack_runs_avx512
#define DELVE_FAST_PACK_ROWS_FN pack_rows_avx512
#define DELVE_FAST_F64_ROWS 16
#define DELVE_FAST_F64_COLS 8
#define DELVE_FAST_F32_ROWS 16
#define DELVE_FAST_F32_COLS 16
#define DELVE_FAST_F32_PAIR_ROWS 8
#include "cpu/gram_kernel_impl.h"
