// How flashctl prints what the daemon answers: generation timings, and
// ModelInfo / Stats as "field: value" lines.
#ifndef FLASHD_CLIENT_FLASHCTL_PRINT_H_
#define FLASHD_CLIENT_FLASHCTL_PRINT_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "client/client.h"
#include "flashd/v1/flashd.pb.h"
#include "google/protobuf/message.h"

namespace flashd::client {

// One line: prompt tokens, prefill, time to first token, generated tokens
// and decode speed, finish reason, e.g. "prompt 5 tokens, prefill 12.0 ms,
// first token 14.1 ms, 32 tokens in 610.2 ms (50.8 tok/s), finish:
// max_tokens".
std::string FormatTimings(const v1::Done& done);

// Every field of a flat message as "name: value" lines in field order,
// zero values included; "*_bytes" fields also in MiB.
void PrintFields(const google::protobuf::Message& message, std::ostream& out);

// GetModelInfo / GetStats and print them with PrintFields.
absl::Status PrintModelInfo(Client& client, std::ostream& out);
absl::Status PrintStats(Client& client, std::ostream& out);

}  // namespace flashd::client

#endif  // FLASHD_CLIENT_FLASHCTL_PRINT_H_
