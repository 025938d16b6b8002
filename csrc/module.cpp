// The Python module _C: loading it registers the ops; build_info() reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace delve_fast {
const char* gram_kernel_isa();
}

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
#else
        info["cuda"] = false;
        info["cuda_version"] = py::none();
#endif
        info["cpu_kernel_isa"] = delve_fast::gram_kernel_isa();
        // Which ops have kernels on which device is the dispatcher's to say
        // (torch._C._dispatch_has_kernel_for_dispatch_key); delve_fast.backend_info() asks it.
        return info;
      },
      "Return the torch version, compiler, CUDA version and CPU kernel ISA this extension was built with.");
}
