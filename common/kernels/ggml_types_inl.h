#ifndef FLASHD_COMMON_KERNELS_GGML_TYPES_INL_H_
#define FLASHD_COMMON_KERNELS_GGML_TYPES_INL_H_
namespace flashd {
inline size_t RowSize(GgmlType type, int64_t n) {
  const TypeTraits& t = Traits(type);
  return static_cast<size_t>(n / t.block_size) * static_cast<size_t>(t.type_size);
}
}  // namespace flashd
#endif  // FLASHD_COMMON_KERNELS_GGML_TYPES_INL_H_
