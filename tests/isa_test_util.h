// Running a test under every kernel ISA this CPU has.
#ifndef FLASHD_TESTS_ISA_TEST_UTIL_H_
#define FLASHD_TESTS_ISA_TEST_UTIL_H_

#include <vector>

#include "common/kernels/kernels.h"

namespace flashd::testing {

// The ISAs DetectIsa() allows, slowest first.
inline std::vector<kernels::Isa> SupportedIsas() {
  std::vector<kernels::Isa> isas;
  for (kernels::Isa isa :
       {kernels::Isa::kScalar, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    if (isa <= kernels::DetectIsa()) isas.push_back(isa);
  }
  return isas;
}

// Selects an ISA for the scope, then restores the previous one.
class ScopedIsa {
 public:
  explicit ScopedIsa(kernels::Isa isa) : saved_(kernels::ActiveIsa()) {
    kernels::SetIsaForTesting(isa);
  }
  ~ScopedIsa() { kernels::SetIsaForTesting(saved_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  kernels::Isa saved_;
};

}  // namespace flashd::testing

#endif  // FLASHD_TESTS_ISA_TEST_UTIL_H_
