// Feeds arbitrary bytes to the Generate request path: the bytes are parsed
// as a flashd.v1.GenerateRequest (as gRPC would), validated and converted
// by ParseGenerateRequest against stories260K's tokenizer, and an accepted
// request then drives the sampler (its settings, its prompt as history,
// logits made from the request) and the stop matcher (the sampled pieces)
// for a few tokens. Checks that every accepted request yields a prompt in
// the vocabulary that fits the context, samples ids in the vocabulary, and
// that the stop matcher never emits more than it was given.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/base/check.h"
#include "common/engine/sampler.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/vocab.h"
#include "daemon/server/request_parser.h"
#include "daemon/server/stop_matcher.h"
#include "fuzz/fuzz_util.h"

namespace {

const flashd::Tokenizer& Tok() {
  static const flashd::Tokenizer* const kTok = [] {
    auto vocab = flashd::LoadVocabFromLlama2c(
        flashd::fuzz::TestData() + "/models/tok512.bin", 512);
    if (!vocab.ok()) {
      std::fprintf(stderr, "generate_request_fuzzer: %s (set FLASHD_TEST_DATA)\n",
                   std::string(vocab.status().message()).c_str());
      std::abort();
    }
    return new flashd::Tokenizer(*std::move(vocab));
  }();
  return *kTok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashd;
  v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const Tokenizer& tok = Tok();
  server::RequestLimits limits;
  limits.n_vocab = tok.vocab().size();
  limits.n_ctx = 512;
  absl::StatusOr<server::SessionRequest> r =
      server::ParseGenerateRequest(request, tok, limits);
  if (!r.ok()) return 0;
  FLASHD_CHECK(!r->prompt.empty() && r->prompt.size() < 512u && r->max_tokens > 0);
  FLASHD_CHECK(server::CheckIds(r->prompt, limits.n_vocab, "prompt").ok());

  Sampler sampler(r->sampling, limits.n_vocab);
  server::StopMatcher stops(r->stop);
  std::mt19937 rng(static_cast<uint32_t>(r->sampling.seed));
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(limits.n_vocab);
  std::vector<int32_t> history = r->prompt;
  size_t given = 0, sent = 0;
  bool stopped = false;
  for (int step = 0; step < 8 && step < r->max_tokens && !stopped; ++step) {
    for (float& v : logits) v = normal(rng);
    const int32_t id = sampler.Sample(logits.data(), history);
    FLASHD_CHECK(id >= 0 && id < limits.n_vocab);
    const std::string piece = tok.TokenBytes(history.back(), id);
    history.push_back(id);
    given += piece.size();
    sent += stops.Push(piece, &stopped).size();
  }
  if (!stopped) sent += stops.Flush().size();
  FLASHD_CHECK(sent <= given);
  return 0;
}
