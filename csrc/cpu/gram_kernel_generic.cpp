// Portable build of the Gram micro-kernel, plus the run-time choice between variants.
#define DELVE_FAST_GRAM_FN gram_pairs_generic
#define DELVE_FAST_SUB_ROWS 8
#define DELVE_FAST_SUB_COLS 4
#define DELVE_FAST_PACK_FN pack_runs_generic
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
  if (__builtin_cpu_supports("avx512f")) return {gram_pairs_avx512, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {gram_pairs_avx2, "avx2"};
#endif
  return {gram_pairs_generic, "generic"};
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}
}  // namespace

GramFn select_gram_kernel() { return choice().fn; }
const char* gram_kernel_isa() { return choice().isa; }

template <typename T>
PackRunsFn<T> select_pack_runs() {
  const GramFn fn = choice().fn;
  if (fn == gram_pairs_avx512) return pack_runs_avx512<T>;
  if (fn == gram_pairs_avx2) return pack_runs_avx2<T>;
  return pack_runs_generic<T>;
}

template PackRunsFn<float> select_pack_runs<float>();
template PackRunsFn<double> select_pack_runs<double>();
template PackRunsFn<c10::Half> select_pack_runs<c10::Half>();
template PackRunsFn<c10::BFloat16> select_pack_runs<c10::BFloat16>();

}  // namespace delve_fast
