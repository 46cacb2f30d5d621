#include "common/io/io_calibration.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/check.h"
#include "common/io/aligned_buffer.h"

namespace flashd::io {
namespace {

constexpr int kJsonVersion = 1;
constexpr size_t kOffsetGranule = 4096;

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

// Runs one cell: ReadBatch calls of `qd` random reads of `rs` bytes.
absl::StatusOr<IoCell> MeasureCell(RandomAccessFile& f, size_t rs, int qd,
                                   const CalibrationOptions& o,
                                   AlignedBuffer& buf,
                                   std::vector<ReadRequest>& reqs,
                                   std::vector<double>& latencies,
                                   std::mt19937_64& rng) {
  const uint64_t granule = std::max(f.required_alignment(), kOffsetGranule);
  const uint64_t positions = (f.size() - rs) / granule + 1;
  const size_t buf_slots = std::max<size_t>(1, buf.size() / rs);
  IoCell cell;
  cell.read_size = rs;
  cell.queue_depth = qd;
  latencies.clear();
  uint64_t bytes = 0;
  const auto start = std::chrono::steady_clock::now();
  do {
    for (int i = 0; i < qd; ++i) {
      reqs[i] = ReadRequest{(rng() % positions) * granule, rs,
                            buf.data() + (i % buf_slots) * rs,
                            absl::OkStatus()};
    }
    const auto t = std::chrono::steady_clock::now();
    absl::Status s = f.ReadBatch(absl::MakeSpan(reqs.data(), qd));
    latencies.push_back(Since(t));
    if (!s.ok()) return s;
    bytes += uint64_t{rs} * qd;
    cell.reads += qd;
  } while (Since(start) < o.seconds_per_cell && bytes < o.max_bytes_per_cell);
  cell.seconds = std::max(Since(start), 1e-9);
  cell.bytes_per_second = bytes / cell.seconds;
  double sum = 0;
  for (double l : latencies) sum += l;
  cell.latency_mean_us = std::max(sum / latencies.size() * 1e6, 1e-3);
  std::sort(latencies.begin(), latencies.end());
  const size_t p99 = std::min(latencies.size() - 1,
                              static_cast<size_t>(0.99 * latencies.size()));
  cell.latency_p99_us = std::max(latencies[p99] * 1e6, 1e-3);
  return cell;
}

// Index i and weight w such that log2(x) lies between axis[i] and
// axis[i + 1] at fraction w (clamped to the ends).
template <typename T>
std::pair<size_t, double> Bracket(const std::vector<T>& axis, double x) {
  FLASHD_CHECK(!axis.empty());
  if (axis.size() == 1 || x <= static_cast<double>(axis.front())) {
    return {0, 0.0};
  }
  if (x >= static_cast<double>(axis.back())) return {axis.size() - 2, 1.0};
  size_t i = 0;
  while (static_cast<double>(axis[i + 1]) < x) ++i;
  const double lo = std::log2(static_cast<double>(axis[i]));
  const double hi = std::log2(static_cast<double>(axis[i + 1]));
  return {i, (std::log2(x) - lo) / (hi - lo)};
}

}  // namespace

double IoProfile::EstimateSeconds(uint64_t bytes, size_t read_size,
                                  int queue_depth) const {
  FLASHD_CHECK(!read_sizes.empty() && !queue_depths.empty() &&
               cells.size() == read_sizes.size() * queue_depths.size());
  if (bytes == 0) return 0;
  const auto [r, wr] = Bracket(read_sizes, static_cast<double>(read_size));
  const auto [c, wc] = Bracket(queue_depths, static_cast<double>(queue_depth));
  const size_t r1 = std::min(r + 1, read_sizes.size() - 1);
  const size_t c1 = std::min(c + 1, queue_depths.size() - 1);
  const double t =
      (1 - wr) * ((1 - wc) * cell(r, c).bytes_per_second +
                  wc * cell(r, c1).bytes_per_second) +
      wr * ((1 - wc) * cell(r1, c).bytes_per_second +
            wc * cell(r1, c1).bytes_per_second);
  if (!(t > 0)) return std::numeric_limits<double>::infinity();
  return static_cast<double>(bytes) / t;
}

absl::StatusOr<IoProfile> CalibrateIo(RandomAccessFile& f,
                                      const CalibrationOptions& o) {
  if (!(o.seconds_per_cell > 0) || o.max_bytes_per_cell == 0) {
    return absl::InvalidArgumentError(
        "calibration needs seconds_per_cell > 0 and max_bytes_per_cell > 0");
  }
  IoProfile p;
  p.file = f.path();
  p.file_size = f.size();
  p.alignment = f.required_alignment();
  p.direct = p.alignment > 1;
  for (size_t rs : std::set<size_t>(o.read_sizes.begin(), o.read_sizes.end())) {
    if (rs > 0 && rs <= f.size() && rs % p.alignment == 0) {
      p.read_sizes.push_back(rs);
    }
  }
  for (int qd : std::set<int>(o.queue_depths.begin(), o.queue_depths.end())) {
    if (qd < 1 || qd > 4096) {
      return absl::InvalidArgumentError(
          absl::StrCat("queue depth ", qd, " is not in [1, 4096]"));
    }
    p.queue_depths.push_back(qd);
  }
  if (p.read_sizes.empty() || p.queue_depths.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nothing to calibrate on ", f.path(), " (", f.size(),
        " bytes, alignment ", p.alignment,
        "): every read size is larger than the file or misaligned, or no "
        "queue depth was given"));
  }
  const size_t max_rs = p.read_sizes.back();
  const size_t max_qd = static_cast<size_t>(p.queue_depths.back());
  size_t buf_bytes = std::min(max_rs * max_qd, o.max_buffer_bytes);
  buf_bytes = std::max(buf_bytes - buf_bytes % max_rs, max_rs);
  absl::StatusOr<AlignedBuffer> buf = AlignedBuffer::Create(buf_bytes);
  if (!buf.ok()) return buf.status();
  std::vector<ReadRequest> reqs(max_qd);
  std::vector<double> latencies;
  std::mt19937_64 rng(o.seed);
  for (size_t rs : p.read_sizes) {
    for (int qd : p.queue_depths) {
      absl::StatusOr<IoCell> cell =
          MeasureCell(f, rs, qd, o, *buf, reqs, latencies, rng);
      if (!cell.ok()) return cell.status();
      if (cell->bytes_per_second > p.best_bytes_per_second) {
        p.best_bytes_per_second = cell->bytes_per_second;
        p.best_read_size = rs;
        p.best_queue_depth = qd;
      }
      if (o.on_cell) o.on_cell(*cell);
      p.cells.push_back(*cell);
    }
  }
  return p;
}

// ---------------------------------------------------------------- writing

namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (ch < 0x20) {
          out += absl::StrFormat("\\u%04x", ch);
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

// Shortest text that parses back to exactly `v` (finite by construction).
std::string JsonNumber(double v) {
  if (!std::isfinite(v)) v = 0;  // never produced; keeps the JSON valid
  return absl::StrFormat("%.17g", v);
}

}  // namespace

std::string IoProfileToJson(const IoProfile& p) {
  std::string out = absl::StrCat("{\n  \"version\": ", kJsonVersion,
                                 ",\n  \"file\": ", JsonString(p.file),
                                 ",\n  \"file_size\": ", p.file_size,
                                 ",\n  \"direct\": ", p.direct ? "true" : "false",
                                 ",\n  \"alignment\": ", p.alignment,
                                 ",\n  \"read_sizes\": [");
  for (size_t i = 0; i < p.read_sizes.size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", p.read_sizes[i]);
  }
  absl::StrAppend(&out, "],\n  \"queue_depths\": [");
  for (size_t i = 0; i < p.queue_depths.size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", p.queue_depths[i]);
  }
  absl::StrAppend(&out, "],\n  \"cells\": [");
  for (size_t i = 0; i < p.cells.size(); ++i) {
    const IoCell& c = p.cells[i];
    absl::StrAppend(
        &out, i ? "," : "", "\n    {\"read_size\": ", c.read_size,
        ", \"queue_depth\": ", c.queue_depth,
        ", \"bytes_per_second\": ", JsonNumber(c.bytes_per_second),
        ", \"latency_mean_us\": ", JsonNumber(c.latency_mean_us),
        ", \"latency_p99_us\": ", JsonNumber(c.latency_p99_us),
        ", \"reads\": ", c.reads, ", \"seconds\": ", JsonNumber(c.seconds),
        "}");
  }
  absl::StrAppend(&out, "\n  ],\n  \"best\": {\"bytes_per_second\": ",
                  JsonNumber(p.best_bytes_per_second),
                  ", \"read_size\": ", p.best_read_size,
                  ", \"queue_depth\": ", p.best_queue_depth, "}\n}\n");
  return out;
}

// ---------------------------------------------------------------- parsing

namespace {

constexpr int kMaxDepth = 8;

// A parsed JSON value: just enough for IoProfileToJson's format.
struct JsonMember;
struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string text;  // number token or decoded string
  std::vector<JsonValue> items;
  // Not std::pair<std::string, JsonValue>: a pair needs a complete type.
  std::vector<JsonMember> members;
};
struct JsonMember {
  std::string first;  // key
  JsonValue second;
};

absl::Status Malformed(const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed io profile JSON: ", what));
}

// Recursive-descent parser over the whole input; one value, then only
// whitespace.
class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  absl::StatusOr<JsonValue> ParseDocument() {
    JsonValue v;
    absl::Status st = ParseValue(v, 0);
    if (!st.ok()) return st;
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters");
    return v;
  }

 private:
  absl::Status Error(const std::string& what) const {
    return Malformed(absl::StrCat(what, " at byte ", pos_));
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' ||
                                s_[pos_] == '\r' || s_[pos_] == '\t')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(const char* w) {
    const size_t n = std::char_traits<char>::length(w);
    if (s_.compare(pos_, n, w) != 0) return false;
    pos_ += n;
    return true;
  }

  absl::Status ParseValue(JsonValue& v, int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) return Error("unexpected end of input");
    const char c = s_[pos_];
    if (c == '{') return ParseObject(v, depth);
    if (c == '[') return ParseArray(v, depth);
    if (c == '"') {
      v.kind = JsonValue::Kind::kString;
      return ParseString(v.text);
    }
    if (ConsumeWord("true") || ConsumeWord("false")) {
      v.kind = JsonValue::Kind::kBool;
      v.boolean = c == 't';
      return absl::OkStatus();
    }
    if (ConsumeWord("null")) return absl::OkStatus();
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(v);
    return Error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
  }

  absl::Status ParseObject(JsonValue& v, int depth) {
    v.kind = JsonValue::Kind::kObject;
    ++pos_;  // '{'
    if (Consume('}')) return absl::OkStatus();
    do {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Error("expected a key");
      std::string key;
      absl::Status st = ParseString(key);
      if (!st.ok()) return st;
      for (const auto& m : v.members) {
        if (m.first == key) return Error(absl::StrCat("duplicate key \"", key, "\""));
      }
      if (!Consume(':')) return Error("expected ':'");
      JsonValue child;
      st = ParseValue(child, depth + 1);
      if (!st.ok()) return st;
      v.members.push_back({std::move(key), std::move(child)});
    } while (Consume(','));
    if (!Consume('}')) return Error("expected ',' or '}'");
    return absl::OkStatus();
  }

  absl::Status ParseArray(JsonValue& v, int depth) {
    v.kind = JsonValue::Kind::kArray;
    ++pos_;  // '['
    if (Consume(']')) return absl::OkStatus();
    do {
      JsonValue child;
      absl::Status st = ParseValue(child, depth + 1);
      if (!st.ok()) return st;
      v.items.push_back(std::move(child));
    } while (Consume(','));
    if (!Consume(']')) return Error("expected ',' or ']'");
    return absl::OkStatus();
  }

  absl::Status ParseString(std::string& out) {
    ++pos_;  // '"'
    while (pos_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[pos_++]);
      if (c == '"') return absl::OkStatus();
      if (c < 0x20) return Error("control character in string");
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (pos_ >= s_.size()) break;
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (pos_ + 4 > s_.size()) return Error("truncated \\u escape");
          for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= h - '0';
            else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
            else return Error("bad hex digit in \\u escape");
          }
          if (cp >= 0xd800 && cp <= 0xdfff) {
            return Error("surrogate \\u escapes are not supported");
          }
          if (cp < 0x80) {
            out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            out += static_cast<char>(0xc0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3f));
          } else {
            out += static_cast<char>(0xe0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
          }
          break;
        }
        default:
          return Error("bad escape in string");
      }
    }
    return Error("unterminated string");
  }

  // JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  absl::Status ParseNumber(JsonValue& v) {
    const size_t start = pos_;
    auto digits = [&] {
      const size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - d;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (digits() == 0) {
      return Error("bad number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return Error("bad number");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) return Error("bad number");
    }
    v.kind = JsonValue::Kind::kNumber;
    v.text = s_.substr(start, pos_ - start);
    return absl::OkStatus();
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// Typed access to an object's members; every key must be taken exactly
// once (Finish() rejects unknown keys).
class ObjectReader {
 public:
  ObjectReader(const JsonValue& v, std::string where)
      : v_(v), where_(std::move(where)), used_(v.members.size(), false) {}

  absl::Status CheckIsObject() const {
    if (v_.kind != JsonValue::Kind::kObject) {
      return Malformed(absl::StrCat(where_, " is not an object"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<const JsonValue*> Get(const std::string& key,
                                       JsonValue::Kind kind) {
    for (size_t i = 0; i < v_.members.size(); ++i) {
      if (v_.members[i].first != key) continue;
      used_[i] = true;
      if (v_.members[i].second.kind != kind) {
        return Malformed(absl::StrCat(where_, ".", key, " has the wrong type"));
      }
      return &v_.members[i].second;
    }
    return Malformed(absl::StrCat(where_, " lacks key \"", key, "\""));
  }
  absl::StatusOr<uint64_t> Uint(const std::string& key) {
    absl::StatusOr<const JsonValue*> v = Get(key, JsonValue::Kind::kNumber);
    if (!v.ok()) return v.status();
    return ToUint(**v, absl::StrCat(where_, ".", key));
  }
  absl::StatusOr<double> Positive(const std::string& key) {
    absl::StatusOr<const JsonValue*> v = Get(key, JsonValue::Kind::kNumber);
    if (!v.ok()) return v.status();
    double d = 0;
    if (!absl::SimpleAtod((*v)->text, &d) || !std::isfinite(d) || !(d > 0)) {
      return Malformed(absl::StrCat(where_, ".", key, " = ", (*v)->text,
                                    " is not a positive finite number"));
    }
    return d;
  }
  absl::Status Finish() const {
    for (size_t i = 0; i < used_.size(); ++i) {
      if (!used_[i]) {
        return Malformed(absl::StrCat(where_, " has unknown key \"",
                                      v_.members[i].first, "\""));
      }
    }
    return absl::OkStatus();
  }

  static absl::StatusOr<uint64_t> ToUint(const JsonValue& v,
                                         const std::string& where) {
    uint64_t u = 0;
    if (v.kind != JsonValue::Kind::kNumber || !absl::SimpleAtoi(v.text, &u)) {
      return Malformed(
          absl::StrCat(where, " = ", v.text, " is not a non-negative integer"));
    }
    return u;
  }

 private:
  const JsonValue& v_;
  std::string where_;
  std::vector<bool> used_;
};

// Parses an ascending array of positive integers no larger than `max`.
absl::Status ReadAxis(ObjectReader& r, const std::string& key, uint64_t max,
                      std::vector<uint64_t>& out) {
  absl::StatusOr<const JsonValue*> v = r.Get(key, JsonValue::Kind::kArray);
  if (!v.ok()) return v.status();
  if ((*v)->items.empty()) return Malformed(absl::StrCat(key, " is empty"));
  for (size_t i = 0; i < (*v)->items.size(); ++i) {
    absl::StatusOr<uint64_t> u =
        ObjectReader::ToUint((*v)->items[i], absl::StrCat(key, "[", i, "]"));
    if (!u.ok()) return u.status();
    if (*u == 0 || *u > max || (!out.empty() && *u <= out.back())) {
      return Malformed(absl::StrCat(key, "[", i, "] = ", *u,
                                    " is not ascending within [1, ", max, "]"));
    }
    out.push_back(*u);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<IoProfile> IoProfileFromJson(const std::string& json) {
  JsonParser parser(json);
  absl::StatusOr<JsonValue> doc = parser.ParseDocument();
  if (!doc.ok()) return doc.status();
  ObjectReader top(*doc, "profile");
  absl::Status st = top.CheckIsObject();
  if (!st.ok()) return st;
  IoProfile p;
  absl::StatusOr<uint64_t> version = top.Uint("version");
  if (!version.ok()) return version.status();
  if (*version != kJsonVersion) {
    return Malformed(absl::StrCat("version ", *version, " is not ",
                                  kJsonVersion));
  }
  absl::StatusOr<const JsonValue*> file =
      top.Get("file", JsonValue::Kind::kString);
  if (!file.ok()) return file.status();
  p.file = (*file)->text;
  absl::StatusOr<uint64_t> size = top.Uint("file_size");
  if (!size.ok()) return size.status();
  p.file_size = *size;
  absl::StatusOr<const JsonValue*> direct =
      top.Get("direct", JsonValue::Kind::kBool);
  if (!direct.ok()) return direct.status();
  p.direct = (*direct)->boolean;
  absl::StatusOr<uint64_t> alignment = top.Uint("alignment");
  if (!alignment.ok()) return alignment.status();
  if (*alignment == 0) return Malformed("alignment is 0");
  p.alignment = *alignment;

  std::vector<uint64_t> sizes, depths;
  st = ReadAxis(top, "read_sizes", uint64_t{1} << 40, sizes);
  if (!st.ok()) return st;
  st = ReadAxis(top, "queue_depths", 4096, depths);
  if (!st.ok()) return st;
  p.read_sizes.assign(sizes.begin(), sizes.end());
  for (uint64_t d : depths) p.queue_depths.push_back(static_cast<int>(d));

  absl::StatusOr<const JsonValue*> cells =
      top.Get("cells", JsonValue::Kind::kArray);
  if (!cells.ok()) return cells.status();
  if ((*cells)->items.size() != sizes.size() * depths.size()) {
    return Malformed(absl::StrCat("cells has ", (*cells)->items.size(),
                                  " entries; read_sizes x queue_depths needs ",
                                  sizes.size() * depths.size()));
  }
  for (size_t i = 0; i < (*cells)->items.size(); ++i) {
    ObjectReader c((*cells)->items[i], absl::StrCat("cells[", i, "]"));
    if (!(st = c.CheckIsObject()).ok()) return st;
    IoCell cell;
    absl::StatusOr<uint64_t> rs = c.Uint("read_size");
    absl::StatusOr<uint64_t> qd = c.Uint("queue_depth");
    absl::StatusOr<double> bps = c.Positive("bytes_per_second");
    absl::StatusOr<double> mean = c.Positive("latency_mean_us");
    absl::StatusOr<double> p99 = c.Positive("latency_p99_us");
    absl::StatusOr<uint64_t> reads = c.Uint("reads");
    absl::StatusOr<double> secs = c.Positive("seconds");
    for (const absl::Status& s :
         {rs.status(), qd.status(), bps.status(), mean.status(), p99.status(),
          reads.status(), secs.status(), c.Finish()}) {
      if (!s.ok()) return s;
    }
    const size_t row = i / depths.size(), col = i % depths.size();
    if (*rs != sizes[row] || *qd != depths[col]) {
      return Malformed(absl::StrCat(
          "cells[", i, "] is (", *rs, ", ", *qd, "); row-major order needs (",
          sizes[row], ", ", depths[col], ")"));
    }
    cell.read_size = *rs;
    cell.queue_depth = static_cast<int>(*qd);
    cell.bytes_per_second = *bps;
    cell.latency_mean_us = *mean;
    cell.latency_p99_us = *p99;
    cell.reads = *reads;
    cell.seconds = *secs;
    p.cells.push_back(cell);
  }

  absl::StatusOr<const JsonValue*> best =
      top.Get("best", JsonValue::Kind::kObject);
  if (!best.ok()) return best.status();
  ObjectReader b(**best, "best");
  absl::StatusOr<double> best_bps = b.Positive("bytes_per_second");
  absl::StatusOr<uint64_t> best_rs = b.Uint("read_size");
  absl::StatusOr<uint64_t> best_qd = b.Uint("queue_depth");
  for (const absl::Status& s :
       {best_bps.status(), best_rs.status(), best_qd.status(), b.Finish(),
        top.Finish()}) {
    if (!s.ok()) return s;
  }
  const size_t best_row =
      std::find(sizes.begin(), sizes.end(), *best_rs) - sizes.begin();
  const size_t best_col =
      std::find(depths.begin(), depths.end(), *best_qd) - depths.begin();
  if (best_row == sizes.size() || best_col == depths.size()) {
    return Malformed(absl::StrCat("best (", *best_rs, ", ", *best_qd,
                                  ") is not a cell of the table"));
  }
  if (p.cell(best_row, best_col).bytes_per_second != *best_bps) {
    return Malformed(absl::StrCat(
        "best.bytes_per_second ", *best_bps, " does not match cell (",
        *best_rs, ", ", *best_qd, ") of the table"));
  }
  p.best_bytes_per_second = *best_bps;
  p.best_read_size = *best_rs;
  p.best_queue_depth = static_cast<int>(*best_qd);
  return p;
}

}  // namespace flashd::io
