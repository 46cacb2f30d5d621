// Validation and conversion of flashd.v1 requests into native types. Every
// error is INVALID_ARGUMENT and names the field: "sampling.top_p 2 must be
// in (0, 1]".
#ifndef FLASHD_DAEMON_SERVER_REQUEST_PARSER_H_
#define FLASHD_DAEMON_SERVER_REQUEST_PARSER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"
#include "daemon/server/session.h"
#include "flashd/v1/flashd.pb.h"

namespace flashd::server {

// Limits on a request. Each refusal names its `flashd serve` flag and
// value. Defaults are those of the flags (see daemon/server/README.md).
struct RequestLimits {
  int32_t n_vocab = 0;
  int32_t n_ctx = 0;                 // the prompt must leave room for a token
  int32_t default_max_tokens = 256;  // for max_tokens = 0
  int64_t max_prompt_bytes = 262144;    // --max-prompt-bytes, before tokenizing
  int32_t max_prompt_tokens = 0;        // --max-prompt-tokens; 0: n_ctx - 1
  int32_t max_stop_strings = 16;        // --max-stop-strings
  int32_t max_stop_bytes = 256;         // --max-stop-bytes, per stop string
  int64_t max_tokenize_bytes = 262144;  // --max-tokenize-bytes
  int32_t max_detokenize_ids = 65536;   // --max-detokenize-ids

  // The prompt tokens allowed: max_prompt_tokens, at most n_ctx - 1.
  int32_t PromptTokens() const;
};

// The checks that need no tokenizing: the input's size (prompt bytes
// before tokenizing, or the count of given ids), stop strings, delivery,
// max_tokens and sampling (repeat_last_n at most the context). Cheap: run
// it on the gRPC thread before a request takes a tokenizer job.
absl::Status PrecheckGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits);

// PrecheckGenerateRequest, then tokenizes the prompt (BOS first) or checks
// the given ids, fills the sampling defaults (seed from the clock when
// unset) and checks the prompt's tokens against the limits.
absl::StatusOr<SessionRequest> ParseGenerateRequest(
    const v1::GenerateRequest& request, const Tokenizer& tokenizer,
    const RequestLimits& limits);

// Tokenize's text against --max-tokenize-bytes, Detokenize's ids against
// --max-detokenize-ids (then each id against the vocabulary).
absl::Status CheckTokenizeRequest(const v1::TokenizeRequest& request,
                                  const RequestLimits& limits);
absl::Status CheckDetokenizeRequest(const v1::DetokenizeRequest& request,
                                    const RequestLimits& limits);

// Checks that every id is in [0, n_vocab); `field` names the repeated
// field in the message ("ids[3] = 700 is outside the vocabulary [0, 512)").
absl::Status CheckIds(const std::vector<int32_t>& ids, int32_t n_vocab,
                      const char* field);

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_REQUEST_PARSER_H_
