// Vocabulary loaders: GGUF tokenizer.ggml.* metadata (as llama.cpp's
// llama_vocab::load for model "llama") and llama2.c's tokenizer.bin.
#include "common/tokenizer/vocab.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/base/mapped_file.h"
#include "common/gguf/gguf_file.h"

namespace flashd {
namespace {

constexpr char kKeyModel[] = "tokenizer.ggml.model";
constexpr char kKeyTokens[] = "tokenizer.ggml.tokens";
constexpr char kKeyScores[] = "tokenizer.ggml.scores";
constexpr char kKeyTypes[] = "tokenizer.ggml.token_type";
constexpr char kKeyBos[] = "tokenizer.ggml.bos_token_id";
constexpr char kKeyEos[] = "tokenizer.ggml.eos_token_id";
constexpr char kKeyUnk[] = "tokenizer.ggml.unknown_token_id";
constexpr char kKeyAddBos[] = "tokenizer.ggml.add_bos_token";
constexpr char kKeyAddSpacePrefix[] = "tokenizer.ggml.add_space_prefix";

// Reads an optional special-token id: `fallback` when absent, an error when
// it does not name a token.
absl::Status ReadTokenId(const GgufFile& gguf, const char* key,
                         int32_t n_tokens, int32_t* id) {
  if (gguf.Find(key) == nullptr) {
    if (*id < 0 || *id >= n_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " is absent and its default ", *id,
                       " is out of range for ", n_tokens, " tokens"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> v = gguf.GetInt(key);
  if (!v.ok()) return v.status();
  if (*v < 0 || *v >= n_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " = ", *v, " is out of range [0, ", n_tokens, ")"));
  }
  *id = static_cast<int32_t>(*v);
  return absl::OkStatus();
}

absl::Status ReadBool(const GgufFile& gguf, const char* key, bool* value) {
  if (gguf.Find(key) == nullptr) return absl::OkStatus();
  absl::StatusOr<bool> v = gguf.GetBool(key);
  if (!v.ok()) return v.status();
  *value = *v;
  return absl::OkStatus();
}


}  // namespace

absl::StatusOr<Vocab> LoadVocabFromGguf(const GgufFile& gguf) {
  absl::StatusOr<std::string> model = gguf.GetString(kKeyModel);
  if (!model.ok()) {
    if (absl::IsNotFound(model.status())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the GGUF file has no tokenizer: ", kKeyModel, " is missing"));
    }
    return model.status();
  }
  if (*model != "llama") {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer model '", *model,
                     "' is not supported (only 'llama' SentencePiece)"));
  }

  Vocab vocab;
  absl::StatusOr<std::vector<std::string>> tokens =
      gguf.GetStringArray(kKeyTokens);
  if (!tokens.ok()) {
    if (absl::IsNotFound(tokens.status())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the GGUF tokenizer has no ", kKeyTokens));
    }
    return tokens.status();
  }
  if (tokens->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(kKeyTokens, " is empty"));
  }
  if (tokens->size() >
      static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKeyTokens, " has ", tokens->size(), " entries, more than int32 ids"));
  }
  vocab.pieces = std::move(*tokens);
  const size_t n = vocab.pieces.size();
  const int32_t n_tokens = static_cast<int32_t>(n);

  if (gguf.Find(kKeyScores) != nullptr) {
    absl::StatusOr<std::vector<float>> scores = gguf.GetFloatArray(kKeyScores);
    if (!scores.ok()) return scores.status();
    if (scores->size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(kKeyScores, " has ", scores->size(), " entries but ",
                       kKeyTokens, " has ", n));
    }
    vocab.scores = std::move(*scores);
  } else {
    vocab.scores.assign(n, 0.0f);
  }

  vocab.types.assign(n, TokenType::kNormal);
  if (gguf.Find(kKeyTypes) != nullptr) {
    absl::StatusOr<std::vector<int32_t>> types = gguf.GetIntArray(kKeyTypes);
    if (!types.ok()) return types.status();
    if (types->size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(kKeyTypes, " has ", types->size(), " entries but ",
                       kKeyTokens, " has ", n));
    }
    for (size_t i = 0; i < n; ++i) {
      const int32_t t = (*types)[i];
      if (t < static_cast<int32_t>(TokenType::kUndefined) ||
          t > static_cast<int32_t>(TokenType::kByte)) {
        return absl::InvalidArgumentError(absl::StrCat(
            kKeyTypes, "[", i, "] = ", t,
            " is not a token type (0..6); token '", vocab.pieces[i], "'"));
      }
      vocab.types[i] = static_cast<TokenType>(t);
    }
  }

  if (absl::Status s = ReadTokenId(gguf, kKeyBos, n_tokens, &vocab.bos_id);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadTokenId(gguf, kKeyEos, n_tokens, &vocab.eos_id);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadTokenId(gguf, kKeyUnk, n_tokens, &vocab.unk_id);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadBool(gguf, kKeyAddBos, &vocab.add_bos); !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ReadBool(gguf, kKeyAddSpacePrefix, &vocab.add_space_prefix);
      !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < n; ++i) {
    if (vocab.types[i] == TokenType::kByte &&
        ParseBytePiece(vocab.pieces[i]) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " '", vocab.pieces[i],
                       "' has type byte but is not of the form <0xXX>"));
    }
  }
  vocab.llama2c_style = false;
  return vocab;
}

absl::StatusOr<Vocab> ParseLlama2cVocab(std::string_view bytes, int32_t n_vocab,
                                        std::string_view name_view) {
  // Debian's Abseil has its own absl::string_view: StrCat wants a string.
  const std::string name(name_view);
  if (n_vocab < 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": vocabulary size ", n_vocab,
        " is too small (llama2.c needs at least <unk>, <s>, </s>)"));
  }
  size_t pos = 0;
  auto read4 = [&](void* dst) {
    std::memcpy(dst, bytes.data() + pos, 4);
    pos += 4;
  };
  if (bytes.size() < 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " truncated: ", bytes.size(),
        " bytes, too short for the int32 max_token_length header"));
  }
  int32_t max_token_length;
  read4(&max_token_length);
  if (max_token_length < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": max_token_length is negative (", max_token_length, ")"));
  }

  Vocab vocab;
  // Each token takes at least 8 bytes: do not trust n_vocab for the reserve.
  const size_t reserve = std::min<size_t>(n_vocab, bytes.size() / 8);
  vocab.pieces.reserve(reserve);
  vocab.scores.reserve(reserve);
  for (int32_t i = 0; i < n_vocab; ++i) {
    if (bytes.size() - pos < 8) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " truncated at token ", i, " of ", n_vocab,
                       ": its score and length need 8 bytes at offset ", pos,
                       ", file has ", bytes.size()));
    }
    float score;
    int32_t len;
    read4(&score);
    read4(&len);
    if (len < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": token ", i, " has negative length ", len,
                       " (at offset ", pos - 4, ")"));
    }
    if (static_cast<size_t>(len) > bytes.size() - pos) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " truncated at token ", i, " of ", n_vocab, ": its length ",
          len, " at offset ", pos - 4, " runs past the end of the file (",
          bytes.size() - pos, " bytes left)"));
    }
    vocab.pieces.emplace_back(bytes.substr(pos, len));
    vocab.scores.push_back(score);
    pos += len;
  }
  if (pos != bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " has ", bytes.size() - pos, " bytes left after ", n_vocab,
        " tokens: it does not belong to a checkpoint with vocabulary size ",
        n_vocab));
  }

  vocab.bos_id = 1;
  vocab.eos_id = 2;
  vocab.unk_id = 0;
  vocab.add_bos = true;
  vocab.add_space_prefix = true;
  vocab.llama2c_style = true;
  vocab.types.assign(n_vocab, TokenType::kNormal);
  vocab.types[vocab.unk_id] = TokenType::kUnknown;
  vocab.types[vocab.bos_id] = TokenType::kControl;
  vocab.types[vocab.eos_id] = TokenType::kControl;
  for (int32_t i = 3; i < n_vocab; ++i) {
    if (ParseBytePiece(vocab.pieces[i]) >= 0) {
      vocab.types[i] = TokenType::kByte;
    }
  }
  return vocab;
}

absl::StatusOr<Vocab> LoadVocabFromLlama2c(const std::string& path,
                                           int32_t n_vocab) {
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  return ParseLlama2cVocab((*file)->bytes(), n_vocab, path);
}

int ParseBytePiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') {
    return -1;
  }
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

}  // namespace flashd
