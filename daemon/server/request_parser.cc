#include "daemon/server/request_parser.h"

#include <chrono>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace flashd::server {
namespace {

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(message);
}

absl::StatusOr<SamplingParams> ParseSampling(const v1::GenerateRequest& r) {
  SamplingParams p;  // llama.cpp's defaults
  const v1::SamplingParams& s = r.sampling();
  if (s.has_temperature()) {
    if (!std::isfinite(s.temperature()) || s.temperature() < 0) {
      return Invalid(absl::StrCat("sampling.temperature ", s.temperature(),
                                  " must be >= 0 (0: greedy)"));
    }
    p.temperature = s.temperature();
  }
  if (s.has_top_k()) {
    if (s.top_k() < 0) {
      return Invalid(absl::StrCat("sampling.top_k ", s.top_k(),
                                  " must be >= 0 (0: off)"));
    }
    p.top_k = s.top_k();
  }
  if (s.has_top_p()) p.top_p = s.top_p();
  if (s.has_min_p()) p.min_p = s.min_p();
  if (s.has_repeat_penalty()) p.repeat_penalty = s.repeat_penalty();
  if (s.has_repeat_last_n()) p.repeat_last_n = s.repeat_last_n();
  if (s.has_seed()) {
    p.seed = s.seed();
  } else {
    p.seed = static_cast<uint64_t>(
        std::chrono::system_clock::now().time_since_epoch().count());
  }
  // Validate names the field (top_p, min_p, ...); say where it lives.
  if (absl::Status v = p.Validate(); !v.ok()) {
    return Invalid(absl::StrCat("sampling.", v.message()));
  }
  return p;
}

}  // namespace

absl::Status CheckIds(const std::vector<int32_t>& ids, int32_t n_vocab,
                      const char* field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= n_vocab) {
      return Invalid(absl::StrCat(field, "[", i, "] = ", ids[i],
                                  " is outside the vocabulary [0, ", n_vocab,
                                  ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionRequest> ParseGenerateRequest(
    const v1::GenerateRequest& r, const Tokenizer& tokenizer,
    const RequestLimits& limits) {
  SessionRequest out;
  switch (r.delivery()) {
    case v1::DELIVERY_UNSPECIFIED:
    case v1::STREAM:
      break;
    case v1::SHARED_MEMORY:
      out.shared_memory = true;  // the service checks the peer is local
      break;
    default:
      return Invalid(absl::StrCat("delivery ", static_cast<int>(r.delivery()),
                                  " is not a Delivery value"));
  }
  switch (r.input_case()) {
    case v1::GenerateRequest::kPrompt:
      if (r.prompt().empty()) {
        return Invalid(
            "prompt is empty; to start from BOS alone send tokens with the "
            "BOS id");
      }
      out.prompt = tokenizer.Encode(r.prompt(), /*add_bos=*/true);
      break;
    case v1::GenerateRequest::kTokens:
      if (r.tokens().ids().empty()) return Invalid("tokens.ids is empty");
      out.prompt.assign(r.tokens().ids().begin(), r.tokens().ids().end());
      if (absl::Status s = CheckIds(out.prompt, limits.n_vocab, "tokens.ids");
          !s.ok()) {
        return s;
      }
      break;
    default:
      return Invalid("input: set prompt or tokens");
  }
  if (static_cast<int64_t>(out.prompt.size()) >= limits.n_ctx) {
    return Invalid(absl::StrCat(
        r.has_tokens() ? "tokens.ids" : "prompt", " has ", out.prompt.size(),
        " tokens; the context holds ", limits.n_ctx,
        " (--ctx), which must leave room for at least one generated token"));
  }
  if (r.max_tokens() < 0) {
    return Invalid(absl::StrCat("max_tokens ", r.max_tokens(),
                                " must be >= 0 (0: the server's default, ",
                                limits.default_max_tokens, ")"));
  }
  out.max_tokens =
      r.max_tokens() == 0 ? limits.default_max_tokens : r.max_tokens();
  absl::StatusOr<SamplingParams> sampling = ParseSampling(r);
  if (!sampling.ok()) return sampling.status();
  out.sampling = *sampling;
  if (r.stop_size() > limits.max_stop_strings) {
    return Invalid(absl::StrCat("stop has ", r.stop_size(),
                                " strings; at most ", limits.max_stop_strings));
  }
  for (int i = 0; i < r.stop_size(); ++i) {
    if (r.stop(i).empty()) return Invalid(absl::StrCat("stop[", i, "] is empty"));
    if (static_cast<int32_t>(r.stop(i).size()) > limits.max_stop_bytes) {
      return Invalid(absl::StrCat("stop[", i, "] has ", r.stop(i).size(),
                                  " bytes; at most ", limits.max_stop_bytes));
    }
    out.stop.push_back(r.stop(i));
  }
  return out;
}

}  // namespace flashd::server
