// The Python module _C: loading it registers the ops; build_info() reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

#include "cuda/split_plan.h"

namespace py = pybind11;

namespace delve_fast {
const char* gram_kernel_isa();
}

namespace {

// "8.0;9.0+PTX" (or space separated, as torch also accepts) -> ["8.0", "9.0+PTX"].
[[maybe_unused]] py::list split_archs(const std::string& archs) {
  py::list out;
  std::string item;
  for (char ch : archs + ";") {
    if (ch == ';' || ch == ' ') {
      if (!item.empty()) out.append(item);
      item.clear();
    } else {
      item += ch;
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "delve_fast compiled ops (registered under torch.ops.delve_fast)";
  m.def(
      "build_info",
      []() {
        py::dict info;
        info["torch_version"] = DELVE_FAST_TORCH_VERSION;
#if defined(__clang__)
        info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        info["compiler"] = std::string("gcc ") + __VERSION__;
#else
        info["compiler"] = "unknown";
#endif
#ifdef DELVE_FAST_WITH_CUDA
        info["cuda"] = true;
        info["cuda_version"] = DELVE_FAST_CUDA_VERSION;
        // TORCH_CUDA_ARCH_LIST at configure time, e.g. "8.0;9.0+PTX": the GPUs this build has code for.
        info["cuda_archs"] = split_archs(DELVE_FAST_CUDA_ARCHS);
#else
        info["cuda"] = false;
        info["cuda_version"] = py::none();
        info["cuda_archs"] = py::list();
#endif
        info["cpu_kernel_isa"] = delve_fast::gram_kernel_isa();
        // Which ops have kernels on which device is the dispatcher's to say
        // (torch._C._dispatch_has_kernel_for_dispatch_key); delve_fast.backend_info() asks it.
        return info;
      },
      "Return the torch version, compiler, CUDA version and architectures, and CPU kernel ISA of this build.");
  // The CUDA cov_update_ kernel's split plan, compiled into every build so that
  // tests can check its workspace bound without a GPU (csrc/cuda/split_plan.h).
  m.def(
      "_cuda_split_plan",
      [](int64_t c, int64_t k, int64_t sms) {
        namespace sp = delve_fast::split_plan;
        const sp::SplitPlan p = sp::plan_splits(c, k, sms);
        py::dict d;
        d["ntile"] = p.ntile;
        d["ntiles"] = p.ntiles;
        d["nsplit"] = p.nsplit;
        d["chunk"] = p.chunk;
        d["direct"] = p.direct;
        d["partial_elems"] = p.partial_elems;
        d["workspace_elems"] = p.workspace_elems;
        d["tile"] = sp::kTile;
        d["tile_k"] = sp::kTileK;
        d["partial_bytes_cap"] = sp::kPartialBytes;
        d["min_split_samples"] = sp::kMinSplitSamples;
        return d;
      },
      py::arg("c"), py::arg("k"), py::arg("sms"),
      "Split plan of the CUDA cov_update_ kernel for C features, k samples and `sms` multiprocessors.");
  m.def(
      "_cuda_partial_offset",
      [](int64_t p, int64_t i, int64_t j, int64_t ntile) {
        return delve_fast::split_plan::partial_offset(p, i, j, ntile);
      },
      py::arg("p"), py::arg("i"), py::arg("j"), py::arg("ntile"),
      "Offset of element (i, j) of split p's packed partial in the CUDA cov_update_ workspace.");
}
