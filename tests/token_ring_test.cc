// The shared-memory token ring: order across processes, back-pressure,
// wrap-around, finish reasons, header validation, permissions, cleanup,
// a dead producer and a hostile consumer.
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/shm/shm_segment.h"
#include "common/shm/token_ring_layout.h"
#include "common/shm/token_ring_reader.h"
#include "common/shm/token_ring_writer.h"
#include "tests/shm_test_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace flashd::shm {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSession = 0x5e55;

// The deterministic text of token i: 0..130 bytes, so up to 3 records.
std::string PieceFor(uint32_t i) {
  std::string s((i * 7919u) % 131u, ' ');
  for (size_t j = 0; j < s.size(); ++j)
    s[j] = static_cast<char>('a' + (i + j) % 26);
  return s;
}

std::unique_ptr<TokenRingWriter> NewWriter(uint32_t capacity,
                                           uint64_t session = kSession) {
  auto w = TokenRingWriter::Create(TestShmDir(), MakeTokenRingName(session),
                                   capacity, session, ::geteuid());
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? std::move(*w) : nullptr;
}

std::string PathOf(const std::string& name) {
  return TestShmDir()->PathOf(name);
}

bool Exists(const std::string& name) {
  struct stat st;
  return ::stat(PathOf(name).c_str(), &st) == 0;
}

// Runs `fn` in a forked child; returns its exit code (-1 if killed).
int RunInChild(const std::function<int()>& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(fn());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(TokenRingLayout, SizesAndRecordCounts) {
  EXPECT_EQ(TokenRingSegmentBytes(8), 192u + 8 * 64);
  EXPECT_EQ(RecordsForText(0), 1u);
  EXPECT_EQ(RecordsForText(48), 1u);
  EXPECT_EQ(RecordsForText(49), 2u);
  EXPECT_TRUE(CheckRingCapacity(1024).ok());
  EXPECT_FALSE(CheckRingCapacity(1000).ok());
  EXPECT_FALSE(CheckRingCapacity(1).ok());
  EXPECT_EQ(FinishReasonName(FinishReason::kLength), "length");
}

TEST(TokenRing, ForkedProducerDeliversInOrder) {
  (void)TestShmDir();  // before the fork: the child uses it too
  constexpr uint32_t kTokens = 100000;
  const std::string name = MakeTokenRingName(kSession);
  int ready[2], go[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    auto w = TokenRingWriter::Create(TestShmDir(), name, 256, kSession, ::geteuid());
    char c = w.ok() ? 'R' : 'E';
    if (::write(ready[1], &c, 1) != 1 || !w.ok()) ::_exit(2);
    if (::read(go[0], &c, 1) != 1) ::_exit(3);
    for (uint32_t i = 0; i < kTokens; ++i) {
      absl::Status s;
      while (absl::IsResourceExhausted(
          s = (*w)->Push(static_cast<int32_t>(i * 31 % 32000), i,
                         PieceFor(i)))) {
        ::usleep(50);
      }
      if (!s.ok()) ::_exit(4);
    }
    const bool finished = (*w)->Finish(FinishReason::kLength).ok();
    w->reset();  // unlinks the name; the parent's mapping stays
    ::_exit(finished ? 0 : 5);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'R');
  auto r = TokenRingReader::Attach(PathOf(name), kSession);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->producer().pid, child);
  ASSERT_EQ(::write(go[1], "G", 1), 1);
  uint32_t bad = 0;
  for (uint32_t i = 0; i < kTokens; ++i) {
    absl::StatusOr<RingEvent> e = (*r)->Next(absl::Seconds(20));
    ASSERT_TRUE(e.ok()) << "token " << i << ": " << e.status();
    ASSERT_EQ(e->kind, RingEvent::Kind::kToken) << i;
    bad += e->index != i ||
           e->token_id != static_cast<int32_t>(i * 31 % 32000) ||
           e->text != PieceFor(i);
  }
  EXPECT_EQ(bad, 0u);
  absl::StatusOr<RingEvent> end = (*r)->Next(absl::Seconds(20));
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->kind, RingEvent::Kind::kFinished);
  EXPECT_EQ(end->reason, FinishReason::kLength);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(Exists(name)) << "the child's writer unlinks on exit";
}

TEST(TokenRing, FullRingPushesBackWithoutWriting) {
  auto w = NewWriter(8);
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  ASSERT_TRUE(r.ok()) << r.status();
  for (uint32_t i = 0; i < 8; ++i) ASSERT_TRUE(w->Push(1, i, "x").ok());
  EXPECT_EQ(w->FreeRecords(), 0u);
  absl::Status full = w->Push(1, 8, "y");
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  EXPECT_THAT(std::string(full.message()), HasSubstr("0 of 8 are free"));
  EXPECT_EQ(w->write_index(), 8u);
  ASSERT_TRUE((*r)->Next(absl::ZeroDuration()).ok());
  ASSERT_TRUE((*r)->Next(absl::ZeroDuration()).ok());
  EXPECT_EQ(w->FreeRecords(), 2u);
  // A 3-record token does not fit into 2 free records: all or nothing.
  EXPECT_TRUE(absl::IsResourceExhausted(w->Push(2, 8, std::string(100, 'z'))));
  EXPECT_TRUE(w->Push(2, 8, std::string(96, 'z')).ok());  // exactly 2
  EXPECT_TRUE(
      absl::IsInvalidArgument(w->Push(3, 9, std::string(8 * 48 + 1, 'q'))));
}

TEST(TokenRing, WrapsAroundWithSplitTokens) {
  auto w = NewWriter(4);
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  ASSERT_TRUE(r.ok()) << r.status();
  uint32_t next_read = 0;
  for (uint32_t i = 0; i < 2000; ++i) {
    const std::string text = PieceFor(i).substr(0, i % 4 == 3 ? 190 : 60);
    while (
        absl::IsResourceExhausted(w->Push(static_cast<int32_t>(i), i, text))) {
      absl::StatusOr<RingEvent> e = (*r)->Next(absl::ZeroDuration());
      ASSERT_TRUE(e.ok()) << e.status();
      ASSERT_EQ(e->index, next_read);
      ASSERT_EQ(e->text,
                PieceFor(next_read).substr(0, next_read % 4 == 3 ? 190 : 60));
      ++next_read;
    }
  }
  ASSERT_TRUE(w->Finish(FinishReason::kStop).ok());
  size_t tokens = 0;
  bool finished = false;
  auto polled = (*r)->Poll([&](const RingEvent& e) {
    if (e.kind == RingEvent::Kind::kFinished) {
      finished = true;
    } else {
      EXPECT_EQ(e.index, next_read + tokens);
      ++tokens;
    }
  });
  ASSERT_TRUE(polled.ok()) << polled.status();
  EXPECT_EQ(next_read + tokens, 2000u);
  EXPECT_TRUE(finished);
  EXPECT_GT(w->write_index(), 2000u);  // wrapped hundreds of times
}

TEST(TokenRing, FinishReasonsReachTheReader) {
  for (FinishReason reason :
       {FinishReason::kStop, FinishReason::kLength, FinishReason::kCancelled,
        FinishReason::kError, FinishReason::kShutdown}) {
    auto w = NewWriter(16);
    auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(w->Push(5, 0, "Hello").ok());
    ASSERT_TRUE(w->Finish(reason).ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(w->Push(6, 1, "late")));
    EXPECT_TRUE(absl::IsFailedPrecondition(w->Finish(reason)));
    auto first = (*r)->Next(absl::Seconds(1));
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(first->text, "Hello");
    for (int k = 0; k < 2; ++k) {  // stays finished
      auto end = (*r)->Next(absl::Seconds(1));
      ASSERT_TRUE(end.ok()) << end.status();
      EXPECT_EQ(end->kind, RingEvent::Kind::kFinished);
      EXPECT_EQ(end->reason, reason) << FinishReasonName(reason);
    }
  }
  // A writer destroyed without Finish says so.
  auto w = NewWriter(4);
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  ASSERT_TRUE(r.ok());
  w.reset();
  auto end = (*r)->Next(absl::Seconds(1));
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->reason, FinishReason::kAbandoned);
}

TEST(TokenRing, EmptyRingTimesOut) {
  auto w = NewWriter(4);
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  ASSERT_TRUE(r.ok());
  const absl::Time t0 = absl::Now();
  auto e = (*r)->Next(absl::Milliseconds(80));
  EXPECT_TRUE(absl::IsDeadlineExceeded(e.status())) << e.status();
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(80));
}

// A sleeping reader is woken by the futex, not by its 50 ms liveness tick.
TEST(TokenRing, SleepingReaderWakesPromptly) {
  auto w = NewWriter(16);
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  ASSERT_TRUE(r.ok());
  std::vector<absl::Duration> latency;
  for (uint32_t i = 0; i < 5; ++i) {
    absl::Time pushed;
    std::thread producer([&] {
      absl::SleepFor(absl::Milliseconds(30));  // the reader is asleep by now
      pushed = absl::Now();
      ASSERT_TRUE(w->Push(1, i, "wake").ok());
    });
    auto e = (*r)->Next(absl::Seconds(5));
    const absl::Time got = absl::Now();
    producer.join();
    ASSERT_TRUE(e.ok()) << e.status();
    latency.push_back(got - pushed);
  }
  std::sort(latency.begin(), latency.end());
  EXPECT_LT(latency[2], absl::Milliseconds(10)) << "median wake-up latency";
}

TEST(TokenRingAttach, RejectsForeignAndTruncatedSegments) {
  const std::string name = MakeTokenRingName(1);
  auto seg = ShmSegment::Create(*TestShmDir(), name, 4096, 0600);
  ASSERT_TRUE(seg.ok()) << seg.status();
  std::memset((*seg)->data(), 0xab, 4096);
  auto r = TokenRingReader::Attach(PathOf(name), kSession);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("is not a flashd token ring"));
  // A real header whose records were cut off.
  auto w = NewWriter(64);
  ASSERT_EQ(::truncate(PathOf(w->name()).c_str(), 1024), 0);
  r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("truncated: header says 64 records of 64 bytes"));
  EXPECT_TRUE(absl::IsNotFound(
      TokenRingReader::Attach(PathOf("flashd-no-such-ring"), kSession).status()));
  EXPECT_TRUE(ShmSegment::Remove(*TestShmDir(), name).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(ShmSegment::CheckName("../etc")));
}

TEST(TokenRingAttach, RejectsOtherVersionAndOtherSession) {
  auto w = NewWriter(8);
  auto seg = ShmSegment::Open(w->path());
  ASSERT_TRUE(seg.ok());
  auto* h = reinterpret_cast<TokenRingHeader*>((*seg)->data());
  h->layout_version = 2;
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("layout version 2; this client reads 1"));
  h->layout_version = kTokenRingLayoutVersion;
  r = TokenRingReader::Attach(PathOf(w->name()), kSession + 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("belongs to session"));
}

TEST(TokenRingPermissions, SegmentIsMode0600AndRemovedWithWriter) {
  auto w = NewWriter(8);
  const std::string name = w->name();
  struct stat st;
  ASSERT_EQ(::stat(PathOf(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
  auto again = TokenRingWriter::Create(TestShmDir(), name, 8, kSession, ::geteuid());
  EXPECT_TRUE(absl::IsAlreadyExists(again.status())) << again.status();
  auto r = TokenRingReader::Attach(PathOf(name), kSession);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(w->Remove().ok());
  EXPECT_FALSE(Exists(name));
  ASSERT_TRUE(w->Push(1, 0, "still mapped").ok());  // unlinked, not unmapped
  EXPECT_EQ((*r)->Next(absl::Seconds(1))->text, "still mapped");
  const std::string name2 = NewWriter(8)->name();  // destroyed at once
  EXPECT_FALSE(Exists(name2));
}

TEST(TokenRingPermissions, OnlyTheOwnerUidCanMap) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown and setuid";
  constexpr uid_t kClient = 41234, kOther = 41235;
  auto w = TokenRingWriter::Create(TestShmDir(), MakeTokenRingName(7), 8, 7, kClient);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string name = (*w)->name();
  struct stat st;
  ASSERT_EQ(::stat(PathOf(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kClient);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_TRUE((*w)->Push(9, 0, "for you").ok());
  auto attach_as = [&](uid_t uid) {
    return RunInChild([&] {
      if (::setgid(65534) != 0 || ::setuid(uid) != 0) return 100;
      auto r = TokenRingReader::Attach(PathOf(name), 7);
      if (!r.ok()) return static_cast<int>(r.status().code());
      auto e = (*r)->Next(absl::Seconds(5));
      return e.ok() && e->text == "for you" ? 0 : 101;
    });
  };
  EXPECT_EQ(attach_as(kOther),
            static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(attach_as(kClient), 0);
  // A daemon without CAP_CHOWN cannot give a ring away, and leaves nothing
  // (it runs in a directory of its own: ours is not writable for it).
  const std::string own_dir = TestShmDir()->path() + "-other";
  const std::string name3 = MakeTokenRingName(8);
  EXPECT_EQ(RunInChild([&] {
              if (::setuid(kOther) != 0) return 100;
              auto d = ShmDir::Open(own_dir);
              if (!d.ok()) return 102;
              auto w3 = TokenRingWriter::Create(*d, name3, 8, 8, kClient);
              return static_cast<int>(w3.status().code());
            }),
            static_cast<int>(absl::StatusCode::kPermissionDenied));
  struct stat st3;
  EXPECT_NE(::stat((own_dir + "/" + name3).c_str(), &st3), 0);
  // A non-root daemon with only CAP_CHOWN (AmbientCapabilities=CAP_CHOWN)
  // gives the ring away and unlinks it from its own directory.
  const std::string name4 = MakeTokenRingName(9);
  EXPECT_EQ(RunInChild([&] {
              if (::prctl(PR_SET_KEEPCAPS, 1) != 0 || ::setuid(kOther) != 0) {
                return 100;
              }
              __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
              __user_cap_data_struct caps[2] = {};
              caps[0].effective = caps[0].permitted = 1u << CAP_CHOWN;
              if (::syscall(SYS_capset, &hdr, caps) != 0) return 101;
              auto d = ShmDir::Open(own_dir);
              if (!d.ok()) return 102;
              auto w4 = TokenRingWriter::Create(*d, name4, 8, 9, kClient);
              if (!w4.ok()) return static_cast<int>(w4.status().code());
              struct stat st4;
              if (::stat((*w4)->path().c_str(), &st4) != 0 ||
                  st4.st_uid != kClient) {
                return 103;
              }
              return static_cast<int>((*w4)->Remove().code());
            }),
            0);
  struct stat st4;
  EXPECT_NE(::stat((own_dir + "/" + name4).c_str(), &st4), 0);
  std::filesystem::remove_all(own_dir);
  w->reset();
  EXPECT_FALSE(Exists(name));
}

TEST(TokenRing, ReaderSeesDeadProducerInsteadOfHanging) {
  (void)TestShmDir();  // before the fork: the child uses it too
  const std::string name = MakeTokenRingName(kSession);
  int ready[2], go[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    auto w = TokenRingWriter::Create(TestShmDir(), name, 16, kSession, ::geteuid());
    for (uint32_t i = 0; w.ok() && i < 3; ++i) (void)(*w)->Push(1, i, "t");
    char c = w.ok() ? 'R' : 'E';
    if (::write(ready[1], &c, 1) != 1) ::_exit(2);
    (void)::read(go[0], &c, 1);
    ::_exit(0);  // dies without Finish, destructor or unlink
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'R');
  auto r = TokenRingReader::Attach(PathOf(name), kSession);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)->CheckProducer().ok());
  ASSERT_EQ(::write(go[1], "G", 1), 1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*r)->Next(absl::Seconds(5)).ok());
  const absl::Time t0 = absl::Now();
  // The child is a zombie until waitpid below, and must count as dead.
  auto e = (*r)->Next(absl::Seconds(30));
  EXPECT_TRUE(absl::IsUnavailable(e.status())) << e.status();
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("died"));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  ::waitpid(child, nullptr, 0);
  EXPECT_TRUE(absl::IsUnavailable((*r)->CheckProducer()));
  EXPECT_TRUE(ShmSegment::Remove(*TestShmDir(), name).ok());
}

TEST(TokenRingHostileConsumer, TruncatedSegmentFailsTheSessionNotTheDaemon) {
  auto w = NewWriter(64);
  ASSERT_TRUE(w->Push(1, 0, "before").ok());
  const int fd = ::open(PathOf(w->name()).c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 0), 0);  // what a malicious client could do
  ::close(fd);
  absl::Status s = w->Push(2, 1, "after");  // would be SIGBUS unguarded
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("truncated by its consumer"));
  EXPECT_TRUE(absl::IsDataLoss(w->Finish(FinishReason::kStop)));
  EXPECT_EQ(w->FreeRecords(), 0u);
}

TEST(TokenRingHostileConsumer, BogusReadIndexIsDataLoss) {
  auto w = NewWriter(8);
  auto seg = ShmSegment::Open(w->path());
  ASSERT_TRUE(seg.ok());
  reinterpret_cast<TokenRingHeader*>((*seg)->data())->read_index = 1000;
  absl::Status s = w->Push(1, 0, "x");
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("read index 1000"));
}

TEST(TokenRingHostileProducer, CorruptRecordIsDataLoss) {
  auto w = NewWriter(8);
  auto seg = ShmSegment::Open(w->path());  // before Push unlinks the name
  ASSERT_TRUE(seg.ok());
  auto r = TokenRingReader::Attach(PathOf(w->name()), kSession);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(w->Push(1, 0, "ok").ok());
  auto* rec =
      reinterpret_cast<TokenRecord*>((*seg)->data() + kTokenRingHeaderBytes);
  rec[0].text_bytes = 200;
  auto e = (*r)->Next(absl::Seconds(1));
  EXPECT_TRUE(absl::IsDataLoss(e.status())) << e.status();
}

TEST(TokenRing, StaleRingsOfDeadDaemonsAreRemoved) {
  const pid_t dead = ::fork();  // a pid that existed and is gone
  if (dead == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(dead, nullptr, 0), dead);
  const std::string stale = PathOf(TokenRingPrefix(dead) + "1-test");
  const std::string alive = PathOf(TokenRingPrefix(::getpid()) + "1-test");
  // Another pid namespace's ring with the same (dead) pid, and a name that
  // is not a ring's.
  const std::string foreign =
      PathOf(absl::StrCat("flashd-ring-1-", dead, "-1-test"));
  const std::string other = PathOf("flashd-ringx-1-1-test");
  for (const std::string& p : {stale, alive, foreign, other}) {
    const int fd = ::open(p.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << p;
    ASSERT_EQ(::ftruncate(fd, 4096), 0);
    ::close(fd);
  }
  // A stale ring its client linked elsewhere: removed, and its memory freed
  // through the other link too.
  const std::string linked = PathOf(TokenRingPrefix(dead) + "3-linked");
  const std::string elsewhere = TestShmDir()->path() + "-elsewhere";
  ASSERT_EQ(::link(stale.c_str(), linked.c_str()), 0);
  ASSERT_EQ(::link(stale.c_str(), elsewhere.c_str()), 0);
  // A symlink named like a dead daemon's ring is not followed or removed.
  const std::string link = PathOf(TokenRingPrefix(dead) + "2-link");
  ASSERT_EQ(::symlink(other.c_str(), link.c_str()), 0);
  EXPECT_GE(RemoveStaleTokenRings(*TestShmDir()), 2);
  struct stat st;
  EXPECT_NE(::stat(stale.c_str(), &st), 0) << "stale ring kept";
  EXPECT_NE(::stat(linked.c_str(), &st), 0) << "stale ring kept";
  ASSERT_EQ(::stat(elsewhere.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0) << "a link elsewhere keeps the ring's memory";
  EXPECT_EQ(::stat(alive.c_str(), &st), 0) << "a live daemon's ring removed";
  EXPECT_EQ(::stat(foreign.c_str(), &st), 0) << "another namespace's ring removed";
  EXPECT_EQ(::stat(other.c_str(), &st), 0);
  EXPECT_EQ(::lstat(link.c_str(), &st), 0) << "symlink removed";
  for (const std::string& p : {alive, foreign, other, link, elsewhere}) {
    ::unlink(p.c_str());
  }
}

TEST(TokenRingHostileConsumer, HardLinkKeepsNoMemoryAfterTheSession) {
  auto w = NewWriter(64);
  ASSERT_TRUE(w->Push(1, 0, "x").ok());
  const std::string elsewhere = TestShmDir()->path() + "-hardlink";
  ASSERT_EQ(::link(w->path().c_str(), elsewhere.c_str()), 0);
  struct stat st;
  ASSERT_EQ(::stat(elsewhere.c_str(), &st), 0);
  EXPECT_GT(st.st_size, 0);
  w.reset();
  ASSERT_EQ(::stat(elsewhere.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  ::unlink(elsewhere.c_str());
}

TEST(TokenRingAttach, ClientRefusesFilesThatAreNotItsAlone) {
  auto w = NewWriter(8);
  const std::string link = TestShmDir()->path() + "-symlink";
  ASSERT_EQ(::symlink(w->path().c_str(), link.c_str()), 0);
  auto r = TokenRingReader::Attach(link, kSession);
  EXPECT_TRUE(absl::IsPermissionDenied(r.status())) << r.status();
  ::unlink(link.c_str());
  ASSERT_EQ(::chmod(w->path().c_str(), 0644), 0);
  r = TokenRingReader::Attach(w->path(), kSession);
  EXPECT_TRUE(absl::IsPermissionDenied(r.status())) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("lets others in"));
}

TEST(TokenRing, DaemonUnlinksTheNameOnceTheClientAttached) {
  auto w = NewWriter(8);
  ASSERT_TRUE(w->Push(1, 0, "a").ok());
  EXPECT_TRUE(Exists(w->name()));
  auto r = TokenRingReader::Attach(w->path(), kSession);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(w->Push(2, 1, "b").ok());
  EXPECT_FALSE(Exists(w->name()));
  EXPECT_EQ((*r)->Next(absl::Seconds(1))->text, "a");
  EXPECT_EQ((*r)->Next(absl::Seconds(1))->text, "b");
}

}  // namespace
}  // namespace flashd::shm
