// Run-time choice between the instruction-set builds of the Gram kernel and the
// packers (namespaces generic, avx2 and avx512 in gram_kernel_<isa>.cpp).
// Compiled without -m flags, so it runs on any x86-64 CPU.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <string>

#include "cpu/gram_kernel.h"

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
      return avx512::gram_pairs<P>;
    case Isa::kAvx2:
      return avx2::gram_pairs<P>;
    default:
      return generic::gram_pairs<P>;
  }
}

template <typename T, typename P>
PackRunsFn<T, P> select_pack_runs() {
  switch (isa()) {
    case Isa::kAvx512:
      return avx512::pack_runs<T, P>;
    case Isa::kAvx2:
      return avx2::pack_runs<T, P>;
    default:
      return generic::pack_runs<T, P>;
  }
}

template <typename T, typename P>
PackRowsFn<T, P> select_pack_rows() {
  switch (isa()) {
    case Isa::kAvx512:
      return avx512::pack_rows<T, P>;
    case Isa::kAvx2:
      return avx2::pack_rows<T, P>;
    default:
      return generic::pack_rows<T, P>;
  }
}

template GramFn<double> select_gram_kernel<double>();
template GramFn<float> select_gram_kernel<float>();
template PackRunsFn<float, double> select_pack_runs<float, double>();
template PackRunsFn<float, float> select_pack_runs<float, float>();
template PackRunsFn<double, double> select_pack_runs<double, double>();
template PackRunsFn<double, float> select_pack_runs<double, float>();
template PackRunsFn<c10::Half, double> select_pack_runs<c10::Half, double>();
template PackRunsFn<c10::Half, float> select_pack_runs<c10::Half, float>();
template PackRunsFn<c10::BFloat16, double> select_pack_runs<c10::BFloat16, double>();
template PackRunsFn<c10::BFloat16, float> select_pack_runs<c10::BFloat16, float>();
template PackRowsFn<float, double> select_pack_rows<float, double>();
template PackRowsFn<float, float> select_pack_rows<float, float>();
template PackRowsFn<double, double> select_pack_rows<double, double>();
template PackRowsFn<double, float> select_pack_rows<double, float>();
template PackRowsFn<c10::Half, double> select_pack_rows<c10::Half, double>();
template PackRowsFn<c10::Half, float> select_pack_rows<c10::Half, float>();
template PackRowsFn<c10::BFloat16, double> select_pack_rows<c10::BFloat16, double>();
template PackRowsFn<c10::BFloat16, float> select_pack_rows<c10::BFloat16, float>();

}  // namespace delve_fast
