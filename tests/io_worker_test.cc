// IoWorker: data, order, per-ticket errors, back-pressure, shutdown.
#include "common/flash/io_worker.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/aligned_buffer.h"
#include "common/io/fault_injection_file.h"
#include "common/io/posix_file.h"
#include "common/io/uring_file.h"
#include "gtest/gtest.h"
#include "tests/random_bytes_file.h"

namespace flashd::flash {
namespace {

constexpr size_t kFileSize = 1 << 20;

// kFileSize random bytes under /var/tmp.
class TempFile : public testing::RandomBytesFile {
 public:
  TempFile() : RandomBytesFile(kFileSize, 5) {}
  std::unique_ptr<io::RandomAccessFile> Open() const {
    absl::StatusOr<std::unique_ptr<io::PosixFile>> f =
        io::PosixFile::Open(path());
    EXPECT_TRUE(f.ok()) << f.status();
    return std::move(*f);
  }
};

std::string AsString(const std::vector<uint8_t>& b) {
  return std::string(b.begin(), b.end());
}

// A batch of `n` reads of `len` bytes each at the given offsets, with its
// own buffers.
struct Batch {
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<io::ReadRequest> reqs;
  Batch(const std::vector<uint64_t>& offsets, size_t len) {
    bufs.assign(offsets.size(), std::vector<uint8_t>(len));
    for (size_t i = 0; i < offsets.size(); ++i) {
      reqs.push_back({offsets[i], len, bufs[i].data(), absl::OkStatus()});
    }
  }
  void ExpectMatches(const TempFile& f) const {
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_TRUE(reqs[i].status.ok()) << reqs[i].status;
      EXPECT_EQ(AsString(bufs[i]), f.Slice(reqs[i].offset, reqs[i].n))
          << "request " << i;
    }
  }
};

// Holds every ReadBatch until Open() and records each batch's first offset.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  std::vector<uint64_t> first_offsets;
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
};

class GatedFile final : public io::RandomAccessFile {
 public:
  GatedFile(std::unique_ptr<io::RandomAccessFile> base, Gate* gate)
      : base_(std::move(base)), gate_(gate) {}
  uint64_t size() const override { return base_->size(); }
  size_t required_alignment() const override { return 1; }
  const std::string& path() const override { return base_->path(); }
  absl::Status Read(uint64_t offset, size_t n, uint8_t* dst) override {
    return base_->Read(offset, n, dst);
  }
  absl::Status ReadBatch(absl::Span<io::ReadRequest> reqs) override {
    {
      std::unique_lock<std::mutex> lock(gate_->mu);
      gate_->cv.wait(lock, [&] { return gate_->open; });
      gate_->first_offsets.push_back(reqs.empty() ? ~0ull : reqs[0].offset);
    }
    return base_->ReadBatch(reqs);
  }

 private:
  std::unique_ptr<io::RandomAccessFile> base_;
  Gate* gate_;
};

TEST(IoWorkerTest, ReadsDataAndCountsBytes) {
  TempFile f;
  IoWorker w(f.Open());
  Batch b({0, 4096, 100000, kFileSize - 512}, 512);
  absl::StatusOr<IoWorker::Ticket> t = w.Submit(absl::MakeSpan(b.reqs));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(w.Wait(*t).ok());
  b.ExpectMatches(f);
  const IoWorker::Counters c = w.counters();
  EXPECT_EQ(c.batches, 1u);
  EXPECT_EQ(c.requests, 4u);
  EXPECT_EQ(c.bytes_read, 4 * 512u);
  EXPECT_GT(c.busy_seconds, 0);
  EXPECT_GT(c.bytes_per_second(), 0);
  EXPECT_EQ(w.outstanding(), 0);
}

TEST(IoWorkerTest, BatchesRunInSubmissionOrder) {
  TempFile f;
  Gate gate;
  IoWorker w(std::make_unique<GatedFile>(f.Open(), &gate), 8);
  std::vector<Batch> batches;
  for (uint64_t i = 0; i < 8; ++i)
    batches.emplace_back(std::vector<uint64_t>{i * 1000}, 64);
  std::vector<IoWorker::Ticket> tickets;
  for (Batch& b : batches) tickets.push_back(*w.Submit(absl::MakeSpan(b.reqs)));
  EXPECT_FALSE(w.Ready(tickets[0]));
  // Full: the ninth is refused without blocking.
  Batch extra({0}, 64);
  const absl::StatusOr<IoWorker::Ticket> refused =
      w.Submit(absl::MakeSpan(extra.reqs));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  gate.Open();
  // Waiting out of order is fine.
  EXPECT_TRUE(w.Wait(tickets[5]).ok());
  for (int i = 0; i < 8; ++i) {
    if (i != 5) {
      EXPECT_TRUE(w.Wait(tickets[i]).ok());
    }
    batches[i].ExpectMatches(f);
  }
  EXPECT_EQ(
      gate.first_offsets,
      (std::vector<uint64_t>{0, 1000, 2000, 3000, 4000, 5000, 6000, 7000}));
  // Room again.
  const absl::StatusOr<IoWorker::Ticket> t =
      w.Submit(absl::MakeSpan(extra.reqs));
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(w.Wait(*t).ok());
}

// A UringFile opened on this thread and read only by the worker's.
TEST(IoWorkerTest, DrivesAUringFile) {
  TempFile f;
  absl::StatusOr<std::unique_ptr<io::UringFile>> u =
      io::UringFile::Open(f.path(), {.queue_depth = 8});
  if (!u.ok() && absl::IsUnavailable(u.status())) {
    GTEST_SKIP() << u.status();  // io_uring disabled on this machine
  }
  ASSERT_TRUE(u.ok()) << u.status();
  const size_t a = (*u)->required_alignment();
  IoWorker w(std::move(*u));
  absl::StatusOr<io::AlignedBuffer> buf = io::AlignedBuffer::Create(16 * a);
  ASSERT_TRUE(buf.ok());
  std::vector<io::ReadRequest> reqs;
  for (uint64_t i = 0; i < 16; ++i) {
    reqs.push_back({(i * 37 % 200) * a, a, buf->data() + i * a, {}});
  }
  const IoWorker::Ticket t = *w.Submit(absl::MakeSpan(reqs));
  ASSERT_TRUE(w.Wait(t).ok()) << w.file().path();
  for (uint64_t i = 0; i < 16; ++i) {
    EXPECT_EQ(std::string(reinterpret_cast<char*>(buf->data() + i * a), a),
              f.Slice(reqs[i].offset, a));
  }
}

TEST(IoWorkerTest, ErrorsGoToTheirOwnTicket) {
  TempFile f;
  auto faulty = std::make_unique<io::FaultInjectionFile>(f.Open());
  faulty->plan().FailRange(500000, 500001);
  IoWorker w(std::move(faulty));
  Batch good1({0, 8192}, 4096);
  Batch bad({16384, 499000, 600000}, 4096);  // the middle one covers 500000
  Batch good2({700000}, 4096);
  const IoWorker::Ticket t1 = *w.Submit(absl::MakeSpan(good1.reqs));
  const IoWorker::Ticket t2 = *w.Submit(absl::MakeSpan(bad.reqs));
  const IoWorker::Ticket t3 = *w.Submit(absl::MakeSpan(good2.reqs));
  EXPECT_TRUE(w.Wait(t1).ok());
  const absl::Status s = w.Wait(t2);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("499000"), absl::string_view::npos) << s;
  EXPECT_TRUE(w.Wait(t3).ok());
  good1.ExpectMatches(f);
  good2.ExpectMatches(f);
  EXPECT_TRUE(bad.reqs[0].status.ok());
  EXPECT_FALSE(bad.reqs[1].status.ok());
  EXPECT_TRUE(bad.reqs[2].status.ok());
  EXPECT_EQ(AsString(bad.bufs[2]), f.Slice(600000, 4096));
  EXPECT_EQ(w.counters().bytes_read, 5 * 4096u);  // the failed read excluded
}

TEST(IoWorkerTest, ManySmallBatchesPipelined) {
  TempFile f;
  IoWorker w(f.Open(), 4);
  std::mt19937 rng(3);
  constexpr int kBatches = 400;
  std::vector<Batch> batches;
  batches.reserve(kBatches);
  for (int i = 0; i < kBatches; ++i) {
    std::vector<uint64_t> offsets(1 + rng() % 5);
    for (uint64_t& o : offsets) o = rng() % (kFileSize - 300);
    batches.emplace_back(offsets, 1 + rng() % 300);
  }
  std::vector<IoWorker::Ticket> tickets(kBatches);
  for (int i = 0; i < kBatches; ++i) {
    if (i >= 4) {
      ASSERT_TRUE(w.Wait(tickets[i - 4]).ok());
    }
    absl::StatusOr<IoWorker::Ticket> t =
        w.Submit(absl::MakeSpan(batches[i].reqs));
    ASSERT_TRUE(t.ok()) << "batch " << i << ": " << t.status();
    tickets[i] = *t;
  }
  for (int i = kBatches - 4; i < kBatches; ++i)
    ASSERT_TRUE(w.Wait(tickets[i]).ok());
  uint64_t bytes = 0;
  for (const Batch& b : batches) {
    b.ExpectMatches(f);
    for (const io::ReadRequest& r : b.reqs) bytes += r.n;
  }
  EXPECT_EQ(w.counters().batches, uint64_t{kBatches});
  EXPECT_EQ(w.counters().bytes_read, bytes);
}

TEST(IoWorkerTest, BadTicketsAndEmptyBatches) {
  TempFile f;
  IoWorker w(f.Open());
  EXPECT_EQ(w.Wait(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Wait(77).code(), absl::StatusCode::kInvalidArgument);
  const IoWorker::Ticket t = *w.Submit({});
  EXPECT_TRUE(w.Wait(t).ok());
  EXPECT_EQ(w.Wait(t).code(), absl::StatusCode::kInvalidArgument);  // twice
}

TEST(IoWorkerTest, DestructorFinishesPendingWork) {
  TempFile f;
  Gate gate;
  std::vector<Batch> batches;
  for (uint64_t i = 0; i < 8; ++i)
    batches.emplace_back(std::vector<uint64_t>{i * 5000, i * 7000}, 256);
  auto w =
      std::make_unique<IoWorker>(std::make_unique<GatedFile>(f.Open(), &gate));
  for (Batch& b : batches) ASSERT_TRUE(w->Submit(absl::MakeSpan(b.reqs)).ok());
  // Destroy while every batch is still queued (the first blocked in the
  // gate), then let them through: the destructor drains and joins.
  std::thread destroy([&] { w.reset(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  gate.Open();
  destroy.join();
  EXPECT_EQ(gate.first_offsets.size(), 8u);
  for (const Batch& b : batches) b.ExpectMatches(f);
}

}  // namespace
}  // namespace flashd::flash
