// NeuronCache: swap-delete, windowing, LRU victims, edge capacities.
#include "common/flash/neuron_cache.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace flashd::flash {
namespace {

constexpr size_t kBundle = 100;

// Byte j of neuron id's bundle in these tests.
uint8_t Tag(int32_t id, size_t j) {
  return static_cast<uint8_t>(id * 31 + j * 7 + 1);
}

NeuronCache Make(int32_t n_ff, int32_t capacity, uint8_t* memory = nullptr) {
  absl::StatusOr<NeuronCache> c =
      NeuronCache::Create(n_ff, kBundle, capacity, memory);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

void Fill(uint8_t* p, int32_t id) {
  ASSERT_NE(p, nullptr);
  for (size_t j = 0; j < kBundle; ++j) p[j] = Tag(id, j);
}

// The cache holds exactly `model` (id -> last used token), each slot's bytes
// tagged by its id, the maps agreeing and the span matching.
void ExpectMatches(const NeuronCache& c,
                   const std::map<int32_t, int64_t>& model) {
  ASSERT_EQ(c.size(), static_cast<int32_t>(model.size()));
  const BundleSpan span = c.span();
  EXPECT_EQ(span.count, c.size());
  EXPECT_EQ(span.data, c.data());
  std::set<int32_t> seen;
  for (int32_t s = 0; s < c.size(); ++s) {
    const int32_t id = c.ids()[s];
    ASSERT_TRUE(model.count(id)) << "slot " << s << " holds " << id;
    EXPECT_TRUE(seen.insert(id).second);
    EXPECT_EQ(span.ids[s], id);
    EXPECT_EQ(c.SlotOf(id), s);
    EXPECT_EQ(c.last_used(s), model.at(id));
    const uint8_t* p = c.data() + s * kBundle;
    for (size_t j = 0; j < kBundle; ++j) {
      ASSERT_EQ(p[j], Tag(id, j)) << "slot " << s << " byte " << j;
    }
  }
  for (int32_t id = 0; id < c.n_ff(); ++id) {
    EXPECT_EQ(c.SlotOf(id) >= 0, model.count(id) == 1) << "neuron " << id;
  }
}

TEST(NeuronCacheTest, InsertLookupAndStats) {
  NeuronCache c = Make(10, 4);
  EXPECT_EQ(c.Lookup(3), -1);
  Fill(c.Insert(3, 0), 3);
  Fill(c.Insert(7, 0), 7);
  EXPECT_EQ(c.Lookup(3), 0);
  EXPECT_EQ(c.Lookup(7), 1);
  EXPECT_EQ(c.Lookup(8), -1);
  EXPECT_EQ(c.stats().hits, 2u);
  EXPECT_EQ(c.stats().misses, 2u);
  EXPECT_EQ(c.stats().inserts, 2u);
  ExpectMatches(c, {{3, 0}, {7, 0}});
}

TEST(NeuronCacheTest, SwapDeleteMovesTheLastSlot) {
  NeuronCache c = Make(10, 4);
  for (int32_t id : {5, 6, 7, 8}) Fill(c.Insert(id, id), id);
  c.Evict(1);  // neuron 6 goes; neuron 8 (slot 3) moves to slot 1
  EXPECT_EQ(c.ids()[1], 8);
  EXPECT_EQ(c.SlotOf(8), 1);
  EXPECT_EQ(c.SlotOf(6), -1);
  ExpectMatches(c, {{5, 5}, {7, 7}, {8, 8}});
  c.Evict(2);  // the last slot: nothing moves
  ExpectMatches(c, {{5, 5}, {8, 8}});
  EXPECT_EQ(c.stats().evictions, 2u);
}

TEST(NeuronCacheTest, FullCacheRefusesInserts) {
  NeuronCache c = Make(10, 2);
  Fill(c.Insert(1, 0), 1);
  Fill(c.Insert(2, 0), 2);
  EXPECT_TRUE(c.full());
  EXPECT_EQ(c.Insert(3, 0), nullptr);
  EXPECT_EQ(c.SlotOf(3), -1);
  EXPECT_EQ(c.stats().inserts, 2u);
  ExpectMatches(c, {{1, 0}, {2, 0}});
}

TEST(NeuronCacheTest, CapacityZero) {
  NeuronCache c = Make(10, 0);
  EXPECT_EQ(c.Insert(1, 0), nullptr);
  EXPECT_EQ(c.Lookup(1), -1);
  int32_t out[4];
  EXPECT_EQ(c.ChooseVictims(
                0, [](int32_t) { return false; }, 4, out),
            0);
  EXPECT_EQ(c.ExpireWindow(10, 1), 0);
  EXPECT_EQ(c.span().count, 0);
}

TEST(NeuronCacheTest, CallerMemoryIsUsed) {
  std::vector<uint8_t> memory(3 * kBundle);
  NeuronCache c = Make(10, 3, memory.data());
  Fill(c.Insert(4, 0), 4);
  EXPECT_EQ(c.data(), memory.data());
  EXPECT_EQ(memory[0], Tag(4, 0));
}

TEST(NeuronCacheTest, ExpireWindowKeepsTheLastKTokens) {
  NeuronCache c = Make(10, 8);
  Fill(c.Insert(0, 0), 0);
  Fill(c.Insert(1, 1), 1);
  Fill(c.Insert(2, 2), 2);
  Fill(c.Insert(3, 3), 3);
  c.Touch(c.SlotOf(0), 3);
  EXPECT_EQ(c.ExpireWindow(4, 0), 0);  // k <= 0: never by age
  EXPECT_EQ(c.ExpireWindow(4, -1), 0);
  // Window of 2 before token 4: tokens 2 and 3 (and 4).
  EXPECT_EQ(c.ExpireWindow(4, 2), 1);
  ExpectMatches(c, {{0, 3}, {2, 2}, {3, 3}});
  EXPECT_EQ(c.ExpireWindow(4, 1), 1);
  ExpectMatches(c, {{0, 3}, {3, 3}});
  EXPECT_EQ(c.ExpireWindow(100, 1), 2);
  EXPECT_EQ(c.size(), 0);
}

TEST(NeuronCacheTest, ChooseVictimsPicksLeastRecentlyUsed) {
  NeuronCache c = Make(20, 8);
  // Neuron id used last at token last[id].
  const std::map<int32_t, int64_t> last = {{10, 5}, {11, 2}, {12, 9},
                                           {13, 1}, {14, 3}, {15, 9}};
  for (const auto& [id, t] : last) Fill(c.Insert(id, t), id);
  int32_t out[8];
  // Token 9 is current: 12 and 15 are never victims; 13 is protected.
  auto is_protected = [](int32_t id) { return id == 13; };
  ASSERT_EQ(c.ChooseVictims(9, is_protected, 2, out), 2);
  std::set<int32_t> ids = {c.ids()[out[0]], c.ids()[out[1]]};
  EXPECT_EQ(ids, (std::set<int32_t>{11, 14}));
  EXPECT_GT(out[0], out[1]) << "descending slots";
  ASSERT_EQ(c.ChooseVictims(9, is_protected, 8, out), 3);  // 11, 14, 10
  for (int i = 0; i < 3; ++i) c.Evict(out[i]);
  ExpectMatches(c, {{12, 9}, {13, 1}, {15, 9}});
  EXPECT_EQ(c.ChooseVictims(9, is_protected, 8, out), 0);
}

TEST(NeuronCacheTest, RandomOperationsMatchAModel) {
  constexpr int32_t kNff = 64;
  NeuronCache c = Make(kNff, 24);
  std::map<int32_t, int64_t> model;
  std::mt19937 rng(42);
  int32_t victims[24];
  int refused = 0;  // inserts into a full cache
  for (int64_t token = 0; token < 3000; ++token) {
    const int32_t id = static_cast<int32_t>(rng() % kNff);
    switch (rng() % 10) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
      case 5: {  // use a neuron: hit -> touch, miss -> insert if room
        const int32_t slot = c.Lookup(id);
        if (slot >= 0) {
          c.Touch(slot, token);
          model[id] = token;
        } else if (uint8_t* p = c.Insert(id, token)) {
          Fill(p, id);
          model[id] = token;
        } else {
          ASSERT_EQ(model.size(), 24u);
          ++refused;
        }
        break;
      }
      case 6:
        if (c.size() > 0) {
          const int32_t slot = static_cast<int32_t>(rng() % c.size());
          model.erase(c.ids()[slot]);
          c.Evict(slot);
        }
        break;
      case 7: {
        const int64_t k = rng() % 200;
        c.ExpireWindow(token, k);
        if (k > 0)
          std::erase_if(model,
                        [&](const auto& e) { return e.second < token - k; });
        break;
      }
      case 8: {
        const int32_t n = c.ChooseVictims(
            token, [](int32_t v) { return v % 5 == 0; }, rng() % 4, victims);
        // Every victim is at least as old as every eligible non-victim.
        int64_t newest_victim = -1;
        for (int i = 0; i < n; ++i) {
          newest_victim = std::max(newest_victim, c.last_used(victims[i]));
        }
        for (const auto& [v, t] : model) {
          const bool eligible = v % 5 != 0 && t != token;
          if (eligible && t < newest_victim) {
            EXPECT_NE(std::count(victims, victims + n, c.SlotOf(v)), 0)
                << "older neuron " << v << " was passed over";
          }
        }
        for (int i = 0; i < n; ++i) {
          const int32_t v = c.ids()[victims[i]];
          EXPECT_NE(v % 5, 0);
          model.erase(v);
          c.Evict(victims[i]);
        }
        break;
      }
      default:
        if (rng() % 50 == 0) {
          c.Clear();
          model.clear();
        }
    }
    ASSERT_NO_FATAL_FAILURE(ExpectMatches(c, model)) << "token " << token;
  }
  // Every path was exercised (seeded: 160 refusals, ~1200 evictions).
  EXPECT_GT(refused, 50);
  EXPECT_GT(c.stats().evictions, 500u);
  EXPECT_GT(c.stats().hits, 200u);
}

TEST(NeuronCacheTest, CreateRejectsBadSizes) {
  EXPECT_FALSE(NeuronCache::Create(-1, kBundle, 4).ok());
  EXPECT_FALSE(NeuronCache::Create(10, kBundle, -1).ok());
  EXPECT_EQ(NeuronCache::Create(10, 0, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flashd::flash
