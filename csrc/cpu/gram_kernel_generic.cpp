// Portable build of the Gram micro-kernel, plus the run-time choice between variants.
#define DELVE_FAST_GRAM_FN gram_units_generic
#define DELVE_FAST_SUB_ROWS 8
#define DELVE_FAST_SUB_COLS 4
#include "cpu/gram_kernel_impl.h"

namespace delve_fast {

namespace {
struct Choice {
  GramFn fn;
  const char* isa;
};

Choice choose() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {gram_units_avx512, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {gram_units_avx2, "avx2"};
#endif
  return {gram_units_generic, "generic"};
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}
}  // namespace

GramFn select_gram_kernel() { return choice().fn; }
const char* gram_kernel_isa() { return choice().isa; }

}  // namespace delve_fast
