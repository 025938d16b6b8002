// Portable build of the Gram micro-kernel, plus the run-time choice between variants.
#define DELVE_FAST_GRAM_FN gram_pairs_generic
#define DELVE_FAST_PACK_FN pack_runs_generic
#define DELVE_FAST_PACK_ROWS_FN pack_rows_generic
#define DELVE_FAST_F64_ROWS 8
#define DELVE_FAST_F64_COLS 4
#define DELVE_FAST_F32_ROWS 16
#define DELVE_FAST_F32_COLS 4
#include <cstdlib>
#include <string>

#include "cpu/gram_kernel_impl.h"

namespace delve_fast {

namespace {
enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa detect() {
  Isa best = Isa::kGeneric;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    best = Isa::kAvx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    best = Isa::kAvx2;
  }
#endif
  // DELVE_FAST_CPU_ISA=generic|avx2 picks a lower build (tests run each one);
  // a build this CPU cannot run is never chosen.
  const char* want = std::getenv("DELVE_FAST_CPU_ISA");
  if (want != nullptr) {
    const std::string w(want);
    if (w == "generic") return Isa::kGeneric;
    if (w == "avx2" && best == Isa::kAvx512) return Isa::kAvx2;
  }
  return best;
}

Isa isa() {
  static const Isa value = detect();
  return value;
}
}  // namespace

const char* gram_kernel_isa() {
  switch (isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "generic";
  }
}

template <typename P>
GramFn<P> select_gram_kernel() {
  switch (isa()) {
    case Isa::kAvx512:
      return gram_pairs_avx512<P>;
    case Isa::kAvx2:
      return gram_pairs_avx2<P>;
    default:
      return gram_pairs_generic<P>;
  }
}

template <typename T, typename P>
PackRunsFn<T, P> select_pack_runs() {
  switch (isa()) {
    case Isa::kAvx512:
      return pack_runs_avx512<T, P>;
    case Isa::kAvx2:
      return pack_runs_avx2<T, P>;
    default:
      return pack_runs_generic<T, P>;
  }
}

template <typename T, typename P>
PackRowsFn<T, P> select_pack_rows() {
  switch (isa()) {
    case Isa::kAvx512:
      return pack_rows_avx512<T, P>;
    case Isa::kAvx2:
      return pack_rows_avx2<T, P>;
    default:
      return pack_rows_generic<T, P>;
  }
}

template GramFn<double> select_gram_kernel<double>();
template GramFn<float> select_gram_kernel<float>();
#define DELVE_FAST_INSTANTIATE_SELECT(T)                        \
  template PackRunsFn<T, double> select_pack_runs<T, double>(); \
  template PackRunsFn<T, float> select_pack_runs<T, float>();   \
  template PackRowsFn<T, double> select_pack_rows<T, double>(); \
  template PackRowsFn<T, float> select_pack_rows<T, float>();
DELVE_FAST_INSTANTIATE_SELECT(float)
DELVE_FAST_INSTANTIATE_SELECT(double)
DELVE_FAST_INSTANTIATE_SELECT(c10::Half)
DELVE_FAST_INSTANTIATE_SELECT(c10::BFloat16)
#undef DELVE_FAST_INSTANTIATE_SELECT

}  // namespace delve_fast
