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

// Limits on a Generate request.
struct RequestLimits {
  int32_t n_vocab = 0;
  int32_t n_ctx = 0;                 // the prompt must leave room for a token
  int32_t default_max_tokens = 256;  // for max_tokens = 0
  int32_t max_stop_strings = 16;
  int32_t max_stop_bytes = 256;      // per stop string
};

// Tokenizes the prompt (BOS first) or checks the given ids, fills the
// sampling defaults (seed from the clock when unset) and checks every
// field.
absl::StatusOr<SessionRequest> ParseGenerateRequest(
    const v1::GenerateRequest& request, const Tokenizer& tokenizer,
    const RequestLimits& limits);

// Checks that every id is in [0, n_vocab); `field` names the repeated
// field in the message ("ids[3] = 700 is outside the vocabulary [0, 512)").
absl::Status CheckIds(const std::vector<int32_t>& ids, int32_t n_vocab,
                      const char* field);

}  // namespace flashd::server

#endif  // FLASHD_DAEMON_SERVER_REQUEST_PARSER_H_
