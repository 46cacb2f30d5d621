#include "client/flashctl_print.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/descriptor.h"

namespace flashd::client {

std::string FormatTimings(const v1::Done& done) {
  const v1::Timings& t = done.timings();
  std::string line = absl::StrFormat(
      "prompt %d tokens, prefill %.1f ms, first token %.1f ms, %d tokens",
      t.prompt_tokens(), t.prefill_ms(), t.time_to_first_token_ms(),
      t.generated_tokens());
  // decode_ms covers the tokens after the first.
  if (t.generated_tokens() > 1 && t.decode_ms() > 0) {
    absl::StrAppendFormat(&line, " in %.1f ms (%.1f tok/s)", t.decode_ms(),
                          (t.generated_tokens() - 1) * 1000.0 / t.decode_ms());
  }
  if (t.queue_ms() >= 1.0) {
    absl::StrAppendFormat(&line, ", queued %.1f ms", t.queue_ms());
  }
  absl::StrAppend(&line, ", finish: ",
                  absl::AsciiStrToLower(v1::FinishReason_Name(done.reason())));
  return line;
}

void PrintFields(const google::protobuf::Message& message, std::ostream& out) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Descriptor* d = message.GetDescriptor();
  const google::protobuf::Reflection* r = message.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    out << f->name() << ": ";
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        out << r->GetInt32(message, f);
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        out << r->GetInt64(message, f);
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        out << r->GetUInt32(message, f);
        break;
      case FieldDescriptor::CPPTYPE_UINT64: {
        const uint64_t v = r->GetUInt64(message, f);
        out << v;
        if (absl::EndsWith(f->name(), "_bytes") && v > 0) {
          out << absl::StrFormat(" (%.1f MiB)", v / 1048576.0);
        }
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE:
        out << absl::StrFormat("%.4g", r->GetDouble(message, f));
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        out << absl::StrFormat("%.4g", r->GetFloat(message, f));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        out << (r->GetBool(message, f) ? "true" : "false");
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        out << r->GetEnum(message, f)->name();
        break;
      case FieldDescriptor::CPPTYPE_STRING: {
        const std::string s = r->GetString(message, f);
        out << (s.empty() ? "-" : s);
        break;
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        out << r->GetMessage(message, f).ShortDebugString();
        break;
    }
    out << "\n";
  }
}

absl::Status PrintModelInfo(Client& client, std::ostream& out) {
  absl::StatusOr<v1::ModelInfo> info = client.GetModelInfo();
  if (!info.ok()) return info.status();
  PrintFields(*info, out);
  return absl::OkStatus();
}

absl::Status PrintStats(Client& client, std::ostream& out) {
  absl::StatusOr<v1::Stats> stats = client.GetStats();
  if (!stats.ok()) return stats.status();
  PrintFields(*stats, out);
  return absl::OkStatus();
}

}  // namespace flashd::client
