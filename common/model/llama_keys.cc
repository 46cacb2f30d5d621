#include "common/model/llama_keys.h"

namespace flashd {

void AddLlamaHyperparameters(GgufWriter& w, const ModelConfig& c,
                             const std::string& name, uint32_t file_type) {
  w.AddString("general.architecture", "llama");
  w.AddString("general.name", name);
  w.AddUint32("llama.context_length", c.n_ctx_train);
  w.AddUint32("llama.embedding_length", c.n_embd);
  w.AddUint32("llama.block_count", c.n_layer);
  w.AddUint32("llama.feed_forward_length", c.n_ff);
  w.AddUint32("llama.rope.dimension_count", c.n_rot);
  w.AddUint32("llama.attention.head_count", c.n_head);
  w.AddUint32("llama.attention.head_count_kv", c.n_head_kv);
  w.AddFloat32("llama.attention.layer_norm_rms_epsilon", c.rms_eps);
  w.AddFloat32("llama.rope.freq_base", c.rope_theta);
  w.AddUint32("general.file_type", file_type);
}

}  // namespace flashd
