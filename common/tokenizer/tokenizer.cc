// SentencePiece-BPE encoding as llama.cpp's llm_tokenizer_spm and llama2.c's
// encode(), decoding with byte fallback, and a UTF-8 stream assembler.
//
// Both encoders are the same greedy algorithm: start from small symbols,
// repeatedly merge the adjacent pair whose concatenation is the best-scoring
// token (leftmost on ties) until no pair forms a token. llama2.c rescans all
// pairs after every merge (O(n^2)); a heap of candidate pairs, invalidated
// lazily when either side changes, picks the same pair in O(log n).
// What differs:
//   llama.cpp: spaces become U+2581, a U+2581 is prepended (dummy prefix),
//     symbols are UTF-8 characters (lead byte gives the length, no further
//     validation), symbols left that are not tokens become byte tokens.
//   llama2.c: a " " token is prepended, code points that are not tokens
//     become byte tokens (id = byte + 3) *before* merging, pairs are joined
//     by their pieces, a pair only merges when its score > -1e10, and BOS
//     (when asked for) takes part in the merging.
#include "common/tokenizer/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flashd {
namespace {

constexpr std::string_view kSpaceEscape = "\xE2\x96\x81";  // U+2581 "▁"
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// llama.cpp's unicode_len_utf8: length from the lead byte's high nibble.
size_t Utf8LenFromLead(unsigned char c) {
  static constexpr size_t kLookup[16] = {1, 1, 1, 1, 1, 1, 1, 1,
                                         1, 1, 1, 1, 2, 2, 3, 4};
  return kLookup[c >> 4];
}

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

std::string EscapeSpaces(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 2);
  for (char c : text) {
    if (c == ' ') {
      out.append(kSpaceEscape);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string UnescapeSpaces(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  size_t i = 0;
  while (i < piece.size()) {
    if (piece.compare(i, kSpaceEscape.size(), kSpaceEscape) == 0) {
      out.push_back(' ');
      i += kSpaceEscape.size();
    } else {
      out.push_back(piece[i++]);
    }
  }
  return out;
}


// The largest float llama2.c's merge loop never accepts (its best_score
// starts at -1e10f and a merge needs a strictly greater score).
constexpr float kLlama2cMinScore = -1e10f;

}  // namespace

// One symbol in the merge chain: a run of bytes (a view into the escaped
// text or into a vocabulary piece) and its token id, or -1.
struct Tokenizer::Symbol {
  std::string_view text;
  int32_t id = -1;
  int32_t prev = -1;
  int32_t next = -1;
  uint32_t version = 0;  // bumped whenever the symbol grows or dies
  bool alive = true;
};

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  const int32_t n = vocab_.size();
  vocab_.scores.resize(n, 0.0f);
  vocab_.types.resize(n, TokenType::kNormal);
  piece_to_id_.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    if (vocab_.llama2c_style) {
      // llama2.c's bsearch finds some duplicate; keep the first.
      piece_to_id_.emplace(vocab_.pieces[i], i);
    } else {
      // llama.cpp's token_to_id map: the last duplicate wins.
      piece_to_id_[vocab_.pieces[i]] = i;
    }
  }

  token_byte_.assign(n, -1);
  for (int32_t i = 0; i < n; ++i) {
    if (vocab_.types[i] == TokenType::kByte ||
        (vocab_.llama2c_style && i >= 3)) {
      const int b = ParseBytePiece(vocab_.pieces[i]);
      if (b >= 0) token_byte_[i] = static_cast<int16_t>(b);
    }
  }

  const int32_t unk =
      (vocab_.unk_id >= 0 && vocab_.unk_id < n) ? vocab_.unk_id : 0;
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    int32_t id = -1;
    if (vocab_.llama2c_style) {
      if (b + 3 < n) id = b + 3;
    } else {
      // llama.cpp's byte_to_token: "<0xXX>", else the byte itself.
      const char piece[6] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
      id = PieceToId(std::string_view(piece, 6));
      if (id < 0) {
        const char raw = static_cast<char>(b);
        id = PieceToId(std::string_view(&raw, 1));
      }
    }
    byte_to_id_[b] = id >= 0 ? id : unk;
  }

  if (vocab_.llama2c_style) {
    space_id_ = PieceToId(" ");
  } else {
    for (int32_t i = 0; i < n; ++i) {
      if (vocab_.types[i] == TokenType::kUserDefined &&
          !vocab_.pieces[i].empty()) {
        user_defined_.push_back(i);
      }
    }
    std::stable_sort(user_defined_.begin(), user_defined_.end(),
                     [this](int32_t a, int32_t b) {
                       return vocab_.pieces[a].size() > vocab_.pieces[b].size();
                     });
  }
}

int32_t Tokenizer::PieceToId(std::string_view piece) const {
  // Debian's Abseil has its own absl::string_view (not std::string_view).
  auto it = piece_to_id_.find(absl::string_view(piece.data(), piece.size()));
  return it == piece_to_id_.end() ? -1 : it->second;
}

void Tokenizer::MergeSymbols(std::vector<Symbol>& symbols) const {
  struct Bigram {
    float score;
    int32_t left;
    int32_t right;
    uint32_t left_version;
    uint32_t right_version;
    int32_t id;
  };
  // Max-heap on score; on equal scores the leftmost pair comes first.
  auto lower = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::vector<Bigram> storage;
  storage.reserve(symbols.size() * 2);
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(
      lower, std::move(storage));
  std::string joined;

  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    joined.assign(l.text);
    joined.append(r.text);
    const int32_t id = PieceToId(joined);
    if (id < 0) return;
    const float score = vocab_.scores[id];
    if (std::isnan(score)) return;
    if (vocab_.llama2c_style && !(score > kLlama2cMinScore)) return;
    queue.push(Bigram{score, left, right, l.version, r.version, id});
  };

  for (size_t i = 1; i < symbols.size(); ++i) {
    try_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  }
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[b.left];
    Symbol& r = symbols[b.right];
    // Stale: one side was merged away or has grown since the push.
    if (!l.alive || !r.alive || l.version != b.left_version ||
        r.version != b.right_version) {
      continue;
    }
    l.text = vocab_.pieces[b.id];
    l.id = b.id;
    ++l.version;
    r.alive = false;
    ++r.version;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
}

void Tokenizer::EncodeSpm(std::string_view text,
                          std::vector<int32_t>* out) const {
  if (text.empty()) return;
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  size_t offset = 0;
  while (offset < text.size()) {
    const size_t len =
        std::min(Utf8LenFromLead(text[offset]), text.size() - offset);
    Symbol s;
    s.text = text.substr(offset, len);
    s.id = PieceToId(s.text);
    s.prev = static_cast<int32_t>(symbols.size()) - 1;
    offset += len;
    s.next =
        offset == text.size() ? -1 : static_cast<int32_t>(symbols.size()) + 1;
    symbols.push_back(s);
  }
  MergeSymbols(symbols);
  // Every merged symbol is a token; a symbol that is not is a single
  // character, which llama.cpp's resegment() emits as byte tokens (its
  // reverse-merge table never holds a single character).
  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    if (s.id >= 0) {
      out->push_back(s.id);
    } else {
      for (char c : s.text) {
        out->push_back(byte_to_id_[static_cast<unsigned char>(c)]);
      }
    }
  }
}

void Tokenizer::EncodeLlama2c(std::string_view text, bool add_bos,
                              std::vector<int32_t>* out) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 2);
  if (add_bos) ids.push_back(vocab_.bos_id);
  if (!text.empty()) {
    ids.push_back(space_id_ >= 0 ? space_id_ : byte_to_id_[' ']);
  }
  // Code points (at most 4 bytes; continuation bytes beyond that start a
  // new unit, as run.c does), else their bytes as byte tokens.
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const size_t len = i + 1 - start;
    const bool more = i + 1 < text.size() &&
                      IsContinuation(static_cast<unsigned char>(text[i + 1]));
    if (more && len < 4) continue;
    const std::string_view unit = text.substr(start, len);
    const int32_t id = PieceToId(unit);
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (char c : unit) {
        ids.push_back(byte_to_id_[static_cast<unsigned char>(c)]);
      }
    }
    start = i + 1;
  }

  std::vector<Symbol> symbols(ids.size());
  const int32_t n = vocab_.size();
  for (size_t i = 0; i < ids.size(); ++i) {
    Symbol& s = symbols[i];
    s.id = ids[i];
    if (s.id >= 0 && s.id < n) s.text = vocab_.pieces[s.id];
    s.prev = static_cast<int32_t>(i) - 1;
    s.next = i + 1 == ids.size() ? -1 : static_cast<int32_t>(i) + 1;
  }
  if (symbols.empty()) return;
  MergeSymbols(symbols);
  for (int32_t i = 0; i != -1; i = symbols[i].next) {
    out->push_back(symbols[i].id);
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text,
                                       bool add_bos) const {
  std::vector<int32_t> out;
  if (vocab_.llama2c_style) {
    EncodeLlama2c(text, add_bos, &out);
    return out;
  }
  if (add_bos) out.push_back(vocab_.bos_id);
  if (text.empty()) return out;  // llama.cpp makes no fragment of ""

  // Fragments: user-defined tokens split out first (llama.cpp's
  // tokenizer_st_partition), longest token first, each occurrence left to
  // right.
  struct Fragment {
    int32_t token;  // -1 for raw text
    size_t offset;
    size_t length;
  };
  std::vector<Fragment> fragments = {{-1, 0, text.size()}};
  for (int32_t special : user_defined_) {
    const std::string& piece = vocab_.pieces[special];
    std::vector<Fragment> next;
    next.reserve(fragments.size());
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view raw = text.substr(f.offset, f.length);
      size_t pos = 0;
      while (true) {
        const size_t hit = raw.find(piece, pos);
        if (hit == std::string_view::npos) break;
        if (hit > pos) next.push_back({-1, f.offset + pos, hit - pos});
        next.push_back({special, 0, 0});
        pos = hit + piece.size();
      }
      if (pos < raw.size()) {
        next.push_back({-1, f.offset + pos, raw.size() - pos});
      }
    }
    fragments = std::move(next);
  }

  bool prev_special = true;  // the text start counts as "after special"
  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    std::string raw;
    if (vocab_.add_space_prefix && prev_special) raw.push_back(' ');
    raw.append(text.substr(f.offset, f.length));
    EncodeSpm(EscapeSpaces(raw), &out);
    prev_special = false;
  }
  return out;
}

std::string Tokenizer::TokenBytes(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_.size()) return "";
  const std::string& piece = vocab_.pieces[token];
  const bool strip_space = prev == vocab_.bos_id &&
                           (vocab_.llama2c_style || vocab_.add_space_prefix);
  std::string out;
  switch (vocab_.types[token]) {
    case TokenType::kNormal:
    case TokenType::kByte:
      if (token_byte_[token] >= 0) {
        // llama2.c strips the space before converting "<0x20>" (so keeps
        // it); llama.cpp strips after (so drops it).
        if (vocab_.llama2c_style || !strip_space || token_byte_[token] != ' ') {
          out.push_back(static_cast<char>(token_byte_[token]));
        }
        return out;
      }
      out = vocab_.llama2c_style ? piece : UnescapeSpaces(piece);
      break;
    case TokenType::kUserDefined:
      out = piece;
      break;
    case TokenType::kUndefined:
    case TokenType::kUnknown:
    case TokenType::kControl:
    case TokenType::kUnused:
      return "";
  }
  if (strip_space && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = vocab_.bos_id;
  for (int32_t id : ids) {
    out += TokenBytes(prev, id);
    prev = id;
  }
  return out;
}

namespace {

// Length of the well-formed UTF-8 sequence at the start of `s`: > 0 when
// complete, 0 when `s` ends inside a sequence that is valid so far, and
// -k when the first k bytes are a maximal ill-formed subpart (k >= 1).
int Utf8Sequence(std::string_view s) {
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int k = 1; k < need; ++k) {
    if (static_cast<size_t>(k) >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[k]);
    const unsigned char l = k == 1 ? lo : 0x80;
    const unsigned char h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return -k;
  }
  return need;
}

}  // namespace

std::string Utf8Streamer::Push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const int n = Utf8Sequence(std::string_view(pending_).substr(i));
    if (n == 0) break;  // incomplete: wait for more bytes
    if (n > 0) {
      out.append(pending_, i, n);
      i += n;
    } else {
      out.append(kReplacement);
      i += -n;
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string Utf8Streamer::Flush() {
  std::string out = Push("");
  if (!pending_.empty()) {
    out.append(kReplacement);
    pending_.clear();
  }
  return out;
}

}  // namespace flashd
