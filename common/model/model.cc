#include "common/model/model.h"

#include <vector>

#include "common/kernels/kernels.h"

namespace flashd {

void FfnWeights::DownColumn(int64_t neuron, float* out) const {
  const TypeTraits& t = Traits(down.type);
  const int64_t block = neuron / t.block_size;
  const int64_t within = neuron % t.block_size;
  std::vector<float> tmp(t.block_size);
  for (int64_t r = 0; r < down.rows; ++r) {
    const uint8_t* blk = down.Row(r) + block * t.type_size;
    kernels::ToFloat(down.type, blk, tmp.data(), t.block_size);
    out[r] = tmp[within];
  }
}

size_t Model::WeightBytes() const {
  const size_t norm = static_cast<size_t>(config.n_embd) * sizeof(float);
  size_t total = tok_embd.bytes() + norm;
  if (output.data != tok_embd.data) total += output.bytes();
  for (const LayerWeights& l : layers) {
    total += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes();
    total += l.ffn.gate.bytes() + l.ffn.up.bytes() + l.ffn.down.bytes();
    total += 2 * norm;
  }
  return total;
}

}  // namespace flashd
