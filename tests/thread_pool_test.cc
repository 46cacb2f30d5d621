#include "common/base/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace flashd {
namespace {

TEST(ThreadPool, RunsOnEveryThread) {
  for (int n : {1, 2, 3, 5}) {
    ThreadPool pool(n);
    std::vector<std::atomic<int>> hits(n);
    for (int rep = 0; rep < 1000; ++rep) {
      pool.Run([&](int i, int count) {
        EXPECT_EQ(count, n);
        hits[i].fetch_add(1);
      });
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1000);
  }
}

TEST(ThreadPool, ParallelForCoversRangeOnceAligned) {
  ThreadPool pool(3);
  for (int64_t n : {1, 15, 16, 17, 100, 1000}) {
    std::vector<std::atomic<int>> seen(n);
    pool.ParallelFor(n, 16, [&](int64_t b, int64_t e) {
      EXPECT_EQ(b % 16, 0);
      for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << n << " " << i;
  }
}

}  // namespace
}  // namespace flashd
