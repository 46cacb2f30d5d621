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

// "at most N (...)": which setting bounds the prompt's tokens.
std::string PromptTokensLimit(const RequestLimits& limits) {
  const int32_t n = limits.PromptTokens();
  if (limits.max_prompt_tokens > 0 && limits.max_prompt_tokens <= n) {
    return absl::StrCat("at most ", n, " (--max-prompt-tokens ", n, ")");
  }
  return absl::StrCat("at most ", n, " (the context holds ", limits.n_ctx,
                      " (--ctx ", limits.n_ctx,
                      ") and must leave room for a generated token)");
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

int32_t RequestLimits::PromptTokens() const {
  const int32_t room = n_ctx - 1;
  return max_prompt_tokens > 0 && max_prompt_tokens < room ? max_prompt_tokens
                                                           : room;
}

absl::Status PrecheckGenerateRequest(const v1::GenerateRequest& r,
                                     const RequestLimits& limits) {
  switch (r.delivery()) {
    case v1::DELIVERY_UNSPECIFIED:
    case v1::STREAM:
    case v1::SHARED_MEMORY:  // the service checks the peer is local
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
      if (static_cast<int64_t>(r.prompt().size()) > limits.max_prompt_bytes) {
        return Invalid(absl::StrCat("prompt has ", r.prompt().size(),
                                    " bytes; at most ", limits.max_prompt_bytes,
                                    " (--max-prompt-bytes ",
                                    limits.max_prompt_bytes, ")"));
      }
      break;
    case v1::GenerateRequest::kTokens:
      if (r.tokens().ids().empty()) return Invalid("tokens.ids is empty");
      if (r.tokens().ids_size() > limits.PromptTokens()) {
        return Invalid(absl::StrCat(
            "tokens.ids has ", r.tokens().ids_size(), " tokens; ",
            PromptTokensLimit(limits)));
      }
      break;
    default:
      return Invalid("input: set prompt or tokens");
  }
  if (r.max_tokens() < 0) {
    return Invalid(absl::StrCat("max_tokens ", r.max_tokens(),
                                " must be >= 0 (0: the server's default, ",
                                limits.default_max_tokens, ")"));
  }
  if (r.sampling().has_repeat_last_n() &&
      r.sampling().repeat_last_n() > limits.n_ctx) {
    return Invalid(absl::StrCat(
        "sampling.repeat_last_n ", r.sampling().repeat_last_n(),
        " exceeds the context: at most ", limits.n_ctx, " (--ctx ",
        limits.n_ctx, ")"));
  }
  if (r.stop_size() > limits.max_stop_strings) {
    return Invalid(absl::StrCat("stop has ", r.stop_size(),
                                " strings; at most ", limits.max_stop_strings,
                                " (--max-stop-strings ",
                                limits.max_stop_strings, ")"));
  }
  for (int i = 0; i < r.stop_size(); ++i) {
    if (r.stop(i).empty()) return Invalid(absl::StrCat("stop[", i, "] is empty"));
    if (static_cast<int32_t>(r.stop(i).size()) > limits.max_stop_bytes) {
      return Invalid(absl::StrCat("stop[", i, "] has ", r.stop(i).size(),
                                  " bytes; at most ", limits.max_stop_bytes,
                                  " (--max-stop-bytes ", limits.max_stop_bytes,
                                  ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionRequest> ParseGenerateRequest(
    const v1::GenerateRequest& r, const Tokenizer& tokenizer,
    const RequestLimits& limits) {
  if (absl::Status s = PrecheckGenerateRequest(r, limits); !s.ok()) return s;
  SessionRequest out;
  out.shared_memory = r.delivery() == v1::SHARED_MEMORY;
  if (r.input_case() == v1::GenerateRequest::kPrompt) {
    out.prompt = tokenizer.Encode(r.prompt(), /*add_bos=*/true);
  } else {
    out.prompt.assign(r.tokens().ids().begin(), r.tokens().ids().end());
    if (absl::Status s = CheckIds(out.prompt, limits.n_vocab, "tokens.ids");
        !s.ok()) {
      return s;
    }
  }
  if (static_cast<int64_t>(out.prompt.size()) > limits.PromptTokens()) {
    return Invalid(absl::StrCat(
        r.has_tokens() ? "tokens.ids" : "prompt", " has ", out.prompt.size(),
        " tokens; ", PromptTokensLimit(limits)));
  }
  out.max_tokens =
      r.max_tokens() == 0 ? limits.default_max_tokens : r.max_tokens();
  absl::StatusOr<SamplingParams> sampling = ParseSampling(r);
  if (!sampling.ok()) return sampling.status();
  out.sampling = *sampling;
  out.stop.assign(r.stop().begin(), r.stop().end());
  return out;
}

absl::Status CheckTokenizeRequest(const v1::TokenizeRequest& request,
                                  const RequestLimits& limits) {
  if (static_cast<int64_t>(request.text().size()) > limits.max_tokenize_bytes) {
    return Invalid(absl::StrCat("text has ", request.text().size(),
                                " bytes; at most ", limits.max_tokenize_bytes,
                                " (--max-tokenize-bytes ",
                                limits.max_tokenize_bytes, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckDetokenizeRequest(const v1::DetokenizeRequest& request,
                                    const RequestLimits& limits) {
  if (request.ids_size() > limits.max_detokenize_ids) {
    return Invalid(absl::StrCat("ids has ", request.ids_size(),
                                " tokens; at most ", limits.max_detokenize_ids,
                                " (--max-detokenize-ids ",
                                limits.max_detokenize_ids, ")"));
  }
  for (int i = 0; i < request.ids_size(); ++i) {
    if (request.ids(i) < 0 || request.ids(i) >= limits.n_vocab) {
      return Invalid(absl::StrCat("ids[", i, "] = ", request.ids(i),
                                  " is outside the vocabulary [0, ",
                                  limits.n_vocab, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace flashd::server
