// FlashFile: opens a .flash file, validates its header and manifest, loads
// the bundle CRC tables and the embedded metadata GGUF.
#include "common/flash/flash_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/check.h"
#include "common/base/errno_status.h"
#include "common/base/mapped_file.h"
#include "common/flash/flash_records.h"
#include "common/gguf/gguf_file.h"
#include "common/tokenizer/vocab.h"

namespace flashd::flash {
namespace {

using internal::FileHeader;
using internal::kHeaderBytes;

constexpr char kLlama2cStyleKey[] = "flashd.tokenizer.llama2c_style";
constexpr uint64_t kIdentityHead = uint64_t{1} << 20;
constexpr uint64_t kIdentitySample = uint64_t{64} << 10;
constexpr int kIdentitySamples = 16;

// Closes a descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

absl::Status OpenForRead(const std::string& path, Fd* fd, uint64_t* size) {
  fd->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd->fd < 0) return FileErrnoStatus(errno, path);
  struct stat st;
  if (::fstat(fd->fd, &st) != 0) return FileErrnoStatus(errno, path);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  *size = static_cast<uint64_t>(st.st_size);
  return absl::OkStatus();
}

// Reads exactly n bytes at offset (DATA_LOSS on a short read or I/O error).
absl::Status ReadAt(int fd, uint64_t offset, size_t n, void* dst,
                    const std::string& what) {
  auto* p = static_cast<uint8_t*>(dst);
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      return absl::DataLossError(absl::StrCat(
          "reading ", what, " (", n, " bytes at offset ", offset, "): ",
          r < 0 ? std::strerror(errno) : "unexpected end of file"));
    }
    done += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

std::string Hex(uint32_t v) { return absl::StrFormat("0x%08x", v); }

absl::Status Prefix(const std::string& path, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
}

// Checks a section [offset, +bytes) of the header against the file.
absl::Status CheckSection(const char* what, uint64_t offset, uint64_t bytes,
                          uint64_t max_bytes, uint64_t file_bytes) {
  if (offset % kFlashAlign != 0 || offset < kHeaderBytes || bytes == 0 ||
      bytes > max_bytes || bytes > file_bytes || offset > file_bytes - bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header: ", what, " [", offset, ", +", bytes,
        ") is not an aligned, non-empty section after the header inside the ",
        file_bytes, "-byte file"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> SourceIdentity(const std::string& model_path) {
  Fd fd;
  uint64_t size = 0;
  if (absl::Status s = OpenForRead(model_path, &fd, &size); !s.ok()) return s;
  std::vector<uint8_t> buf(std::min(size, kIdentityHead));
  if (absl::Status s = ReadAt(fd.fd, 0, buf.size(), buf.data(), model_path); !s.ok()) {
    return s;
  }
  uint64_t h = internal::Hash64(buf.data(), buf.size(), size);
  const uint64_t n = std::min(size, kIdentitySample);
  buf.resize(n);
  for (int k = 0; k < kIdentitySamples; ++k) {
    const uint64_t off = (size - n) / (kIdentitySamples - 1) * k;
    if (absl::Status s = ReadAt(fd.fd, off, n, buf.data(), model_path); !s.ok()) return s;
    h = internal::Hash64(buf.data(), n, h);
  }
  return h;
}

absl::StatusOr<std::unique_ptr<FlashFile>> FlashFile::Open(
    const std::string& path) {
  Fd fd;
  uint64_t size = 0;
  if (absl::Status s = OpenForRead(path, &fd, &size); !s.ok()) return s;
  auto fail = [&](const absl::Status& s) { return Prefix(path, s); };

  // Magic and version come first, so a file of another version is named as
  // such even if the rest of its header differs.
  std::string image(kHeaderBytes, '\0');
  const size_t head = static_cast<size_t>(std::min<uint64_t>(size, kHeaderBytes));
  if (absl::Status s = ReadAt(fd.fd, 0, head, image.data(), "the header"); !s.ok()) {
    return fail(s);
  }
  if (head < sizeof(internal::kMagic) ||
      std::memcmp(image.data(), internal::kMagic, sizeof(internal::kMagic)) != 0) {
    return fail(absl::InvalidArgumentError(
        "not a flash file (bad magic); create one with flashd convert"));
  }
  FileHeader h;
  std::memcpy(&h, image.data(), sizeof(h));
  if (head >= offsetof(FileHeader, version) + 4 && h.version != kLayoutVersion) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "layout version ", h.version, "; this flashd reads ", kLayoutVersion,
        "; re-run flashd convert")));
  }
  if (size < kHeaderBytes) {
    return fail(absl::DataLossError(absl::StrCat(
        "truncated: ", size, " bytes, less than the ", kHeaderBytes, "-byte header")));
  }
  if (const uint32_t crc = internal::HeaderCrc(image); crc != h.header_crc32c) {
    return fail(absl::DataLossError(
        absl::StrCat("header checksum mismatch: CRC32C expected ",
                     Hex(h.header_crc32c), ", found ", Hex(crc))));
  }
  if (h.header_bytes != kHeaderBytes || h.alignment != kFlashAlign) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "header: header size ", h.header_bytes, " and alignment ", h.alignment,
        " must be ", kHeaderBytes, " and ", kFlashAlign)));
  }
  if (h.file_bytes != size) {
    return fail(absl::DataLossError(absl::StrCat(
        size < h.file_bytes ? "truncated" : "has trailing bytes", ": the header says ",
        h.file_bytes, " bytes, the file has ", size)));
  }
  if (absl::Status s = CheckSection("manifest", h.manifest_offset, h.manifest_bytes,
                                    internal::kMaxManifestBytes, size);
      !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = CheckSection("metadata", h.metadata_offset, h.metadata_bytes,
                                    internal::kMaxMetadataBytes, size);
      !s.ok()) {
    return fail(s);
  }
  std::string manifest(h.manifest_bytes, '\0');
  if (absl::Status s = ReadAt(fd.fd, h.manifest_offset, manifest.size(),
                              manifest.data(), "the manifest");
      !s.ok()) {
    return fail(s);
  }
  if (const uint32_t crc = Crc32c(manifest.data(), manifest.size());
      crc != h.manifest_crc32c) {
    return fail(absl::DataLossError(
        absl::StrCat("manifest checksum mismatch: CRC32C expected ",
                     Hex(h.manifest_crc32c), ", found ", Hex(crc))));
  }
  const uint64_t data_start =
      internal::AlignUp(std::max(h.manifest_offset + h.manifest_bytes,
                                 h.metadata_offset + h.metadata_bytes));
  internal::ChunkTables chunks;
  absl::StatusOr<FlashLayout> layout =
      internal::DecodeManifest(manifest, size, data_start, &chunks);
  if (!layout.ok()) return fail(layout.status());

  std::unique_ptr<FlashFile> f(new FlashFile());
  f->path_ = path;
  f->file_size_ = size;
  f->layout_ = *std::move(layout);
  f->layout_.version = h.version;
  f->layout_.identity = internal::Hash64(
      manifest.data(), manifest.size(), internal::Hash64(image.data(), image.size()));

  f->metadata_.resize(h.metadata_bytes);
  if (absl::Status s = ReadAt(fd.fd, h.metadata_offset, h.metadata_bytes,
                              f->metadata_.data(), "the metadata");
      !s.ok()) {
    return fail(s);
  }
  if (absl::Status s = VerifyExtent({h.metadata_offset, h.metadata_bytes, h.metadata_crc32c},
                                    f->metadata_.data(), "metadata");
      !s.ok()) {
    return fail(s);
  }
  std::shared_ptr<const MappedFile> meta = MappedFile::FromString(std::string_view(
      reinterpret_cast<const char*>(f->metadata_.data()), f->metadata_.size()));
  if (absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Parse(meta); !g.ok()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("embedded metadata: ", g.status().message())));
  }

  for (const auto& [e, table, what] :
       {std::tuple{&chunks.token_embd, &f->token_embd_chunk_crcs_, "token_embd chunk CRCs"},
        std::tuple{&chunks.output, &f->output_chunk_crcs_, "output chunk CRCs"}}) {
    table->resize(e->bytes / sizeof(uint32_t));
    if (absl::Status s = ReadAt(fd.fd, e->offset, e->bytes, table->data(), what); !s.ok()) {
      return fail(s);
    }
    if (absl::Status s =
            VerifyExtent(*e, reinterpret_cast<const uint8_t*>(table->data()), what);
        !s.ok()) {
      return fail(s);
    }
  }

  const int32_t n_ff = f->layout_.config.n_ff;
  f->bundle_crcs_.resize(f->layout_.layers.size());
  for (size_t l = 0; l < f->layout_.layers.size(); ++l) {
    const Extent& e = f->layout_.layers[l].bundle_crcs;
    std::vector<uint32_t>& table = f->bundle_crcs_[l];
    table.resize(n_ff);
    const std::string what = absl::StrCat("layer ", l, " bundle CRC table");
    if (absl::Status s = ReadAt(fd.fd, e.offset, e.bytes, table.data(), what); !s.ok()) {
      return fail(s);
    }
    if (absl::Status s =
            VerifyExtent(e, reinterpret_cast<const uint8_t*>(table.data()), what);
        !s.ok()) {
      return fail(s);
    }
  }
  return f;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> FlashFile::MakeTokenizer() const {
  std::shared_ptr<const MappedFile> meta = MappedFile::FromString(std::string_view(
      reinterpret_cast<const char*>(metadata_.data()), metadata_.size()));
  absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Parse(meta);
  if (!g.ok()) return Prefix(path_, g.status());
  absl::StatusOr<Vocab> vocab = LoadVocabFromGguf(**g);
  if (!vocab.ok()) {
    return Prefix(path_, absl::Status(vocab.status().code(),
                                      absl::StrCat("embedded tokenizer: ",
                                                   vocab.status().message())));
  }
  if ((*g)->Find(kLlama2cStyleKey) != nullptr) {
    absl::StatusOr<bool> style = (*g)->GetBool(kLlama2cStyleKey);
    if (!style.ok()) return Prefix(path_, style.status());
    vocab->llama2c_style = *style;
  }
  if (vocab->size() != layout_.config.n_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": embedded tokenizer has ", vocab->size(),
        " tokens but the model's vocabulary is ", layout_.config.n_vocab));
  }
  return std::make_unique<Tokenizer>(*std::move(vocab));
}

absl::Status FlashFile::CheckSource(const std::string& model_path) const {
  absl::StatusOr<uint64_t> id = SourceIdentity(model_path);
  if (!id.ok()) return id.status();
  if (*id != layout_.source_identity) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, " was converted from a different model file than ", model_path,
        absl::StrFormat(" (source identity %016x, %s has %016x)",
                        layout_.source_identity, model_path, *id),
        "; re-run flashd convert"));
  }
  return absl::OkStatus();
}

absl::Span<const uint32_t> FlashFile::ChunkCrcs(const TensorExtent& t) const {
  if (t.extent.offset == layout_.token_embd.extent.offset) return token_embd_chunk_crcs_;
  if (t.extent.offset == layout_.output.extent.offset) return output_chunk_crcs_;
  return {};
}

absl::Status FlashFile::VerifyBundle(int32_t layer, int32_t neuron,
                                     const uint8_t* bytes) const {
  FLASHD_CHECK(layer >= 0 && layer < static_cast<int32_t>(bundle_crcs_.size()));
  FLASHD_CHECK(neuron >= 0 && neuron < layout_.config.n_ff);
  const LayerLayout& L = layout_.layers[layer];
  const size_t n = L.geometry.bundle_bytes();
  const uint32_t want = bundle_crcs_[layer][neuron];
  const uint32_t got = Crc32c(bytes, n);
  if (got == want) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      path_, ": layer ", layer, " neuron ", neuron, " bundle (", n,
      " bytes at offset ", L.bundles.offset + uint64_t(neuron) * n,
      ") is corrupt: CRC32C expected ", Hex(want), ", found ", Hex(got)));
}

absl::Status FlashFile::VerifyExtent(const Extent& extent, const uint8_t* bytes,
                                     const std::string& what) {
  const uint32_t got = Crc32c(bytes, extent.bytes);
  if (got == extent.crc32c) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      what, " (", extent.bytes, " bytes at offset ", extent.offset,
      ") is corrupt: CRC32C expected ", Hex(extent.crc32c), ", found ", Hex(got)));
}

absl::Status FlashFile::VerifyBundles(int32_t layer, const int32_t* ids,
                                      const uint8_t* const* bytes,
                                      int32_t n) const {
  const std::vector<uint32_t>& want = bundle_crcs_[layer];
  const size_t bb = layout_.layers[layer].geometry.bundle_bytes();
  int32_t k = 0;
  for (; k + 3 <= n; k += 3) {
    uint32_t got[3];
    Crc32c3(bytes[k], bytes[k + 1], bytes[k + 2], bb, got);
    for (int j = 0; j < 3; ++j) {
      if (got[j] != want[ids[k + j]]) {
        return VerifyBundle(layer, ids[k + j], bytes[k + j]);
      }
    }
  }
  for (; k < n; ++k) {
    absl::Status s = VerifyBundle(layer, ids[k], bytes[k]);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace flashd::flash
