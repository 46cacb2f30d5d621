// Rearranges one layer's FFN matrices into neuron bundles (internal to the
// converter; see BundleGeometry in flash_format.h for the layout).
#ifndef FLASHD_COMMON_FLASH_BUNDLE_BUILDER_H_
#define FLASHD_COMMON_FLASH_BUNDLE_BUILDER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/flash/flash_format.h"
#include "common/model/model.h"

namespace flashd::flash::internal {

// The bundle geometry of a layer: gate/up rows as stored; the down column
// kTyped for f32/f16/bf16, kInt8Scaled for q8_0/q4_0 (group 32), q4_K
// (group 32 with min), q6_K (group 16). INVALID_ARGUMENT naming the down
// type for any other.
absl::StatusOr<BundleGeometry> GeometryFor(const FfnWeights& ffn,
                                           const ModelConfig& config);

// Decodes a quantized row of n elements (q8_0, q4_0, q4_K, q6_K) into int8
// codes q[n] and per-group scale/min (n / group entries each) such that
// scale[i / group] * q[i] - min[i / group], evaluated in float, equals what
// kernels::ToFloat gives for element i, bit for bit (min is 0 for types
// without one).
void DecodeQuantRow(GgmlType type, const uint8_t* row, int64_t n, int8_t* q,
                    float* scale, float* min);

// Builds one layer's bundle array, its down tables and per-bundle CRCs.
// Buffers are reused from layer to layer.
class BundleBuilder {
 public:
  void Build(const FfnWeights& ffn, const BundleGeometry& geometry);

  const uint8_t* bundles() const { return bundles_.data(); }  // n_ff bundles
  const float* scale() const { return scale_.data(); }  // [n_ff/group][n_embd]
  const float* min() const { return min_.data(); }      // same, if has_min
  const uint32_t* crcs() const { return crcs_.data(); }  // n_ff

 private:
  std::vector<uint8_t> bundles_;
  std::vector<float> scale_, min_;
  std::vector<uint32_t> crcs_;
  std::vector<int8_t> q_;
  std::vector<float> row_scale_, row_min_;
};

}  // namespace flashd::flash::internal

#endif  // FLASHD_COMMON_FLASH_BUNDLE_BUILDER_H_
