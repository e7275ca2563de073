// safetensors reading and writing: round trips, sharded checkpoints, zero-copy views, and one test
// per kind of corrupt input, each checking that the error names the tensor and/or the file.
#include "engine/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/fileio.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using cepe::DType;
using cepe::Tensor;
using cepe::WeightStore;
using cepe::write_safetensors;

namespace {

// Fresh temporary directory, deleted when the test binary exits (most tests make several).
fs::path temp_dir(const std::string& tag) {
  struct Cleanup {
    std::vector<fs::path> dirs;
    ~Cleanup() {
      std::error_code ec;
      for (const auto& d : dirs) fs::remove_all(d, ec);
    }
  };
  static Cleanup cleanup;
  cleanup.dirs.push_back(cepe::test::temp_dir(tag));
  return cleanup.dirs.back();
}

// Writes a safetensors file by hand: 8-byte length, the header text as given, then the data.
void write_raw(const fs::path& path, const std::string& header, const std::string& data,
               uint64_t declared_len = UINT64_MAX) {
  const uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  bytes += header;
  bytes += data;
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The message of the cepe::Error that `fn` throws (fails the test when it throws nothing).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const cepe::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected cepe::Error";
  return "";
}

Tensor iota_f32(std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 0.5f * static_cast<float>(i) - 3.f;
  return t;
}

// Opens a single hand-built file in a fresh directory and returns the error text.
std::string open_error(const std::string& tag, const std::string& header, const std::string& data,
                       uint64_t declared_len = UINT64_MAX) {
  const fs::path dir = temp_dir(tag);
  write_raw(dir / "model.safetensors", header, data, declared_len);
  return error_of([&] { WeightStore::open(dir); });
}

// The address range of the mapping of `file` in this process, from /proc/self/maps.
std::vector<std::pair<uintptr_t, uintptr_t>> mappings_of(const fs::path& file) {
  std::vector<std::pair<uintptr_t, uintptr_t>> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const std::string target = fs::canonical(file).string();
  while (std::getline(maps, line)) {
    if (line.size() < target.size() ||
        line.compare(line.size() - target.size(), target.size(), target))
      continue;
    std::istringstream ls(line);
    std::string range;
    ls >> range;
    const auto dash = range.find('-');
    out.emplace_back(std::stoull(range.substr(0, dash), nullptr, 16),
                     std::stoull(range.substr(dash + 1), nullptr, 16));
  }
  return out;
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypesWithMetadata) {
  const fs::path dir = temp_dir("st-roundtrip");
  Tensor f32 = iota_f32({2, 3});
  Tensor f16 = Tensor::empty({4}, DType::F16);
  Tensor bf16 = Tensor::empty({3, 1}, DType::BF16);
  Tensor i32 = Tensor::empty({5}, DType::I32);
  const float f16_vals[] = {1.f, -2.5f, 65504.f, 0.000061035156f};
  for (int i = 0; i < 4; ++i) f16.data<uint16_t>()[i] = cepe::f32_to_f16(f16_vals[i]);
  for (int i = 0; i < 3; ++i) bf16.data<uint16_t>()[i] = cepe::f32_to_bf16(1.5f * i - 1.f);
  for (int i = 0; i < 5; ++i) i32.data<int32_t>()[i] = i * i - 7;
  Tensor scalar = Tensor::empty({}, DType::F32);
  *scalar.data<float>() = 42.f;
  Tensor empty = Tensor::empty({0, 4}, DType::F32);

  // An odd-sized F16 tensor first pushes the following tensors off 4-byte alignment.
  Tensor odd = Tensor::empty({1}, DType::F16);
  odd.data<uint16_t>()[0] = cepe::f32_to_f16(3.f);

  write_safetensors(dir / "model.safetensors",
                    {{"odd", odd},
                     {"w.f32", f32},
                     {"w.f16", f16},
                     {"w.bf16", bf16},
                     {"w.i32", i32},
                     {"scalar", scalar},
                     {"empty", empty}},
                    {{"format", "pt"}, {"quote\"d", "line\nbreak"}});

  WeightStore ws = WeightStore::open(dir);
  EXPECT_EQ(ws.names(), (std::vector<std::string>{"empty", "odd", "scalar", "w.bf16", "w.f16",
                                                  "w.f32", "w.i32"}));
  EXPECT_EQ(ws.total_bytes(), size_t{2 + 24 + 8 + 6 + 20 + 4 + 0});
  ASSERT_EQ(ws.files().size(), 1u);
  EXPECT_EQ(ws.files()[0]->metadata().at("format"), "pt");
  EXPECT_EQ(ws.files()[0]->metadata().at("quote\"d"), "line\nbreak");
  EXPECT_EQ(ws.file_of("w.f32"), dir / "model.safetensors");

  Tensor g = ws.get("w.f32", {2, 3});
  EXPECT_EQ(g.dtype(), DType::F32);
  ASSERT_EQ(g.nbytes(), f32.nbytes());
  EXPECT_EQ(0, std::memcmp(g.raw(), f32.raw(), f32.nbytes()));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(g.raw()) % 4, 0u);  // unaligned in the file -> aligned copy

  Tensor h = ws.get("w.f16", {4});
  EXPECT_EQ(h.dtype(), DType::F16);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(cepe::f16_to_f32(h.data<uint16_t>()[i]), f16_vals[i]);
  Tensor b = ws.get("w.bf16", {3, 1});
  EXPECT_EQ(b.dtype(), DType::BF16);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cepe::bf16_to_f32(b.data<uint16_t>()[i]), 1.5f * i - 1.f);
  Tensor n = ws.get("w.i32", {5});
  EXPECT_EQ(n.dtype(), DType::I32);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(n.data<int32_t>()[i], i * i - 7);
  EXPECT_EQ(*ws.get("scalar", {}).data<float>(), 42.f);
  EXPECT_EQ(ws.get("empty", {0, 4}).numel(), 0);
  EXPECT_EQ(ws.get("w.i32").shape(), (std::vector<int64_t>{5}));
}

TEST(Safetensors, HeaderIsPaddedAndDataSectionAligned) {
  const fs::path dir = temp_dir("st-pad");
  write_safetensors(dir / "a.safetensors", {{"x", iota_f32({3})}});
  const std::string bytes = cepe::test::read_file(dir / "a.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 12);
  EXPECT_TRUE(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}');
  // A direct file path opens too.
  EXPECT_TRUE(WeightStore::open(dir / "a.safetensors").contains("x"));
}

TEST(Safetensors, AlignedGetIsAViewIntoTheMapping) {
  const fs::path dir = temp_dir("st-view");
  Tensor big = iota_f32({64, 64});
  write_safetensors(dir / "model.safetensors", {{"a", iota_f32({7})}, {"big", big}});
  {
    WeightStore ws = WeightStore::open(dir);
    Tensor v = ws.get("big", {64, 64});
    Tensor v2 = ws.get("a", {7});
    ASSERT_EQ(0, std::memcmp(v.raw(), big.raw(), big.nbytes()));
    // Both views share the mapping as their owner: nothing was allocated per tensor.
    EXPECT_EQ(v.owner().get(), v2.owner().get());
    const auto maps = mappings_of(dir / "model.safetensors");
    ASSERT_FALSE(maps.empty()) << "file is not mapped";
    const auto addr = reinterpret_cast<uintptr_t>(v.raw());
    bool inside = false;
    for (const auto& [lo, hi] : maps) inside = inside || (addr >= lo && addr + v.nbytes() <= hi);
    EXPECT_TRUE(inside) << "tensor data is not inside the file mapping";
  }
}

TEST(Safetensors, ViewOutlivesTheStore) {
  const fs::path dir = temp_dir("st-outlive");
  write_safetensors(dir / "model.safetensors", {{"big", iota_f32({32, 8})}});
  Tensor v;
  { v = WeightStore::open(dir).get("big", {32, 8}); }
  // The store is gone; the mapping must still be alive through the tensor's owner.
  EXPECT_EQ(v.data<float>()[255], 0.5f * 255 - 3.f);
  EXPECT_FALSE(mappings_of(dir / "model.safetensors").empty());
  v = Tensor();
  EXPECT_TRUE(mappings_of(dir / "model.safetensors").empty()) << "mapping leaked";
}

TEST(Safetensors, AtomicWriteLeavesNoTempFile) {
  const fs::path dir = temp_dir("st-atomic");
  write_safetensors(dir / "model.safetensors", {{"x", iota_f32({2})}});
  write_safetensors(dir / "model.safetensors", {{"y", iota_f32({3})}});  // replaces
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});
  WeightStore ws = WeightStore::open(dir);
  EXPECT_FALSE(ws.contains("x"));
  EXPECT_TRUE(ws.contains("y"));
}

// What a process killed between an atomic write's create and rename leaves is cleaned up, and
// nothing else in the directory is touched.
TEST(FileIo, StaleTempsOfOneFileAreRemoved) {
  const fs::path dir = temp_dir("stale-temps");
  const fs::path target = dir / "store.ces.partial.ckpt";
  for (const char* name : {"store.ces.partial.ckpt.tmp-123-0", "store.ces.partial.ckpt.tmp-9-4",
                           "store.ces.partial.ckpt", "other.tmp-1-0", "store.ces.partial"})
    std::ofstream(dir / name) << "x";
  EXPECT_EQ(cepe::remove_stale_temps(target), 2);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"other.tmp-1-0", "store.ces.partial",
                                             "store.ces.partial.ckpt"}));
  EXPECT_EQ(cepe::remove_stale_temps(dir / "missing-dir" / "x"), 0);
}

TEST(Safetensors, WriteErrorsNameThePath) {
  const fs::path dir = temp_dir("st-write-err");
  const fs::path target = dir / "no-such-dir" / "model.safetensors";
  std::string msg = error_of([&] { write_safetensors(target, {{"x", iota_f32({2})}}); });
  EXPECT_NE(msg.find(target.string()), std::string::npos) << msg;
  msg = error_of([&] {
    write_safetensors(dir / "m.safetensors", {{"x", iota_f32({2})}, {"x", iota_f32({1})}});
  });
  EXPECT_NE(msg.find("'x' given twice"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir / "m.safetensors"));
  EXPECT_TRUE(fs::is_empty(dir));
}

// A streamed write makes each tensor only when the file reaches it, in order, and gives the
// same bytes as writing the tensors at once; a produced tensor that does not match its header
// entry stops the write, naming the tensor, and leaves neither the file nor a temporary one.
TEST(Safetensors, StreamedWriteProducesTensorsInTurn) {
  const fs::path dir = temp_dir("st-streamed");
  const Tensor a = iota_f32({3, 5}), b = iota_f32({7});
  write_safetensors(dir / "whole.safetensors", {{"a", a}, {"b", b}}, {{"format", "pt"}});
  std::vector<std::string> events;
  const auto make = [&](const char* name, const Tensor& t) {
    return [&events, name, &t] {
      events.push_back(std::string("make ") + name);
      return t;
    };
  };
  cepe::write_safetensors_streamed(
      dir / "streamed.safetensors",
      {{"a", DType::F32, {3, 5}, make("a", a)}, {"b", DType::F32, {7}, make("b", b)}},
      {{"format", "pt"}}, [&](size_t i) { events.push_back("wrote " + std::to_string(i)); });
  EXPECT_EQ(events, (std::vector<std::string>{"make a", "wrote 0", "make b", "wrote 1"}));
  EXPECT_EQ(cepe::test::read_file(dir / "streamed.safetensors"),
            cepe::test::read_file(dir / "whole.safetensors"));

  const fs::path bad_dir = temp_dir("st-streamed-bad");
  const std::string msg = error_of([&] {
    cepe::write_safetensors_streamed(
        bad_dir / "m.safetensors",
        {{"a", DType::F32, {3, 5}, [&] { return a; }}, {"b", DType::BF16, {7}, [&] { return b; }}});
  });
  EXPECT_NE(msg.find("tensor 'b' came out F32 [7], its header entry says BF16"), std::string::npos)
      << msg;
  EXPECT_TRUE(fs::is_empty(bad_dir));
}

TEST(Safetensors, ShardedCheckpoint) {
  const fs::path dir = temp_dir("st-sharded");
  write_safetensors(
      dir / "model-00001-of-00002.safetensors",
      {{"model.embed_tokens.weight", iota_f32({4, 2})}, {"model.norm.weight", iota_f32({2})}});
  write_safetensors(dir / "model-00002-of-00002.safetensors",
                    {{"lm_head.weight", iota_f32({4, 2})}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata": {"total_size": 72}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}})";
  WeightStore ws = WeightStore::open(dir);
  EXPECT_EQ(ws.files().size(), 2u);  // each shard opened once
  EXPECT_EQ(ws.names().size(), 3u);
  EXPECT_EQ(ws.total_bytes(), 72u);
  EXPECT_EQ(ws.file_of("lm_head.weight"), dir / "model-00002-of-00002.safetensors");
  EXPECT_EQ(ws.get("model.norm.weight", {2}).data<float>()[1], -2.5f);

  const std::string msg = error_of([&] {
    ws.get("model.layers.3.self_attn.q_proj.weight", {2, 2});
  });
  EXPECT_NE(
      msg.find("tensor 'model.layers.3.self_attn.q_proj.weight' not found in " + dir.string()),
      std::string::npos)
      << msg;
  EXPECT_NE(msg.find("model-00001-of-00002.safetensors, model-00002-of-00002.safetensors"),
            std::string::npos)
      << msg;
}

TEST(Safetensors, ShardedIndexListsTensorAbsentFromShard) {
  const fs::path dir = temp_dir("st-shard-missing");
  write_safetensors(dir / "a.safetensors", {{"x", iota_f32({2})}});
  write_safetensors(dir / "b.safetensors", {{"y", iota_f32({2})}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}})";
  const std::string msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("tensor 'y'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("a.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
}

TEST(Safetensors, ShardedDuplicateTensorAcrossShards) {
  const fs::path dir = temp_dir("st-shard-dup");
  write_safetensors(dir / "a.safetensors", {{"x", iota_f32({2})}});
  write_safetensors(dir / "b.safetensors", {{"x", iota_f32({2})}, {"y", iota_f32({1})}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})";
  const std::string msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("tensor 'x' is in both"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir / "a.safetensors").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir / "b.safetensors").string()), std::string::npos) << msg;
}

TEST(Safetensors, ShardedBadIndex) {
  const fs::path dir = temp_dir("st-shard-bad");
  write_safetensors(dir / "a.safetensors", {{"x", iota_f32({2})}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "missing.safetensors"}})";
  std::string msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("missing.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'x'"), std::string::npos) << msg;

  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"x": "../a.safetensors"}})";
  msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("outside the model directory"), std::string::npos) << msg;

  std::ofstream(dir / "model.safetensors.index.json") << R"({"weights": {}})";
  msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("weight_map"), std::string::npos) << msg;

  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map": {"x": )";
  msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
}

TEST(Safetensors, MissingDirectoryOrCheckpoint) {
  const fs::path dir = temp_dir("st-none");
  std::string msg = error_of([&] { WeightStore::open(dir / "nope"); });
  EXPECT_NE(msg.find((dir / "nope").string()), std::string::npos) << msg;
  msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("no model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir.string()), std::string::npos) << msg;
}

TEST(Safetensors, UnreadableFile) {
  const fs::path dir = temp_dir("st-unreadable");
  fs::create_directory(dir / "model.safetensors");  // a directory where the file should be
  const std::string msg = error_of([&] { cepe::SafeTensorsFile f(dir / "model.safetensors"); });
  EXPECT_NE(msg.find((dir / "model.safetensors").string()), std::string::npos) << msg;
}

TEST(Safetensors, FileShorterThanEightBytes) {
  const fs::path dir = temp_dir("st-short");
  std::ofstream(dir / "model.safetensors") << "abc";
  const std::string msg = error_of([&] { WeightStore::open(dir); });
  EXPECT_NE(msg.find("too short"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir / "model.safetensors").string()), std::string::npos) << msg;
}

TEST(Safetensors, HeaderLengthHuge) {
  std::string msg = open_error("st-huge", "{}", "", uint64_t{1} << 60);
  EXPECT_NE(msg.find("absurd"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  msg = open_error("st-longer", "{}", "", 4096);
  EXPECT_NE(msg.find("exceeds the file size"), std::string::npos) << msg;
}

TEST(Safetensors, BadJson) {
  std::string msg = open_error("st-badjson", R"({"x": {"dtype": "F32", )", "");
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  msg = open_error("st-notobj", R"([1, 2])", "");
  EXPECT_NE(msg.find("must be a JSON object"), std::string::npos) << msg;
}

TEST(Safetensors, EntryFieldsMissingOrMistyped) {
  const std::string data(8, '\0');
  struct Case {
    const char* header;
    const char* expect;
  } cases[] = {
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", "missing \"dtype\""},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", "missing \"shape\""},
      {R"({"w": {"dtype": "F32", "shape": [2]}})", "missing \"data_offsets\""},
      {R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})",
       "\"dtype\" must be a string"},
      {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})",
       "\"shape\" must be an array"},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", "must be integers"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", "[begin, end]"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 8]}})", "non-negative"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", "reversed"},
      {R"({"w": [1]})", "entry must be an object"},
      {R"({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
       "__metadata__ entry 'a'"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
       "appears twice"},
  };
  for (const auto& c : cases) {
    const std::string msg = open_error("st-fields", c.header, data);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.header << " -> " << msg;
    if (std::string(c.expect).find("__metadata__") == std::string::npos) {
      EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
    }
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  }
}

TEST(Safetensors, NegativeAndHugeDims) {
  std::string msg = open_error(
      "st-negdim", R"({"w": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 0]}})", "");
  EXPECT_NE(msg.find("negative dimension -2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
  // 2^32 * 2^32 wraps to 0 in 64-bit arithmetic: must be caught, not accepted as an empty tensor.
  msg = open_error(
      "st-overflow",
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", "");
  EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
  msg = open_error(
      "st-bytes-overflow",
      R"({"w": {"dtype": "F32", "shape": [4611686018427387905], "data_offsets": [0, 4]}})",
      std::string(4, '\0'));
  EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
  msg = open_error(
      "st-toolarge",
      R"({"w": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 4]}})",
      std::string(4, '\0'));
  EXPECT_NE(msg.find("too large"), std::string::npos) << msg;
}

TEST(Safetensors, TruncatedData) {
  // The header promises 16 bytes; only 10 are present.
  const std::string msg = open_error(
      "st-trunc", R"({"layer.w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
      std::string(10, '\0'));
  EXPECT_NE(msg.find("tensor 'layer.w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("exceed the data section (10 bytes)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
}

TEST(Safetensors, OffsetsOutOfRange) {
  const std::string msg =
      open_error("st-oor", R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [100, 108]}})",
                 std::string(8, '\0'));
  EXPECT_NE(msg.find("tensor 'a'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[100, 108]"), std::string::npos) << msg;
}

TEST(Safetensors, ShapeOffsetMismatch) {
  const std::string msg = open_error(
      "st-mismatch", R"({"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})",
      std::string(8, '\0'));
  EXPECT_NE(msg.find("tensor 'a'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hold 8 bytes but shape [2, 3] of BF16 needs 12"), std::string::npos) << msg;
}

TEST(Safetensors, OverlappingTensors) {
  const std::string msg =
      open_error("st-overlap",
                 R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                 std::string(12, '\0'));
  EXPECT_NE(msg.find("'a' and 'b' overlap"), std::string::npos) << msg;
}

TEST(Safetensors, UnknownDtype) {
  // Not a safetensors dtype at all: the size is unknown, so the file cannot be validated.
  std::string msg =
      open_error("st-dtype", R"({"a": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}})",
                 std::string(8, '\0'));
  EXPECT_NE(msg.find("tensor 'a'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dtype Q4_K not supported"), std::string::npos) << msg;

  // A valid safetensors dtype the engine does not compute with: the file opens (such buffers ride
  // along in real checkpoints), and asking for that tensor names the dtype.
  const fs::path dir = temp_dir("st-f64");
  write_raw(dir / "model.safetensors",
            R"({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})",
            std::string(24, '\0'));
  WeightStore ws = WeightStore::open(dir);
  EXPECT_FALSE(ws.contains("a"));
  EXPECT_TRUE(ws.contains("b"));
  msg = error_of([&] { ws.get("a", {2}); });
  EXPECT_NE(msg.find("tensor 'a'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("F64 not supported"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  // Its bytes are still validated.
  msg = open_error("st-f64-bad", R"({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}})",
                   std::string(8, '\0'));
  EXPECT_NE(msg.find("needs 16"), std::string::npos) << msg;
}

TEST(Safetensors, MissingTensor) {
  const fs::path dir = temp_dir("st-missing");
  write_safetensors(dir / "model.safetensors", {{"model.norm.weight", iota_f32({2})}});
  WeightStore ws = WeightStore::open(dir);
  std::string msg = error_of([&] { ws.get("model.layers.3.self_attn.q_proj.weight", {8, 8}); });
  EXPECT_NE(msg.find("tensor 'model.layers.3.self_attn.q_proj.weight' not found in " +
                     dir.string() + " (checked model.safetensors)"),
            std::string::npos)
      << msg;
  msg = error_of([&] { ws.file_of("nope"); });
  EXPECT_NE(msg.find("tensor 'nope' not found"), std::string::npos) << msg;
  // A near miss (a wrapper's prefix) is pointed out.
  msg = error_of([&] { ws.get("norm.weight", {2}); });
  EXPECT_NE(msg.find("did you mean 'model.norm.weight'"), std::string::npos) << msg;
}

TEST(Safetensors, WrongExpectedShape) {
  const fs::path dir = temp_dir("st-shape");
  write_safetensors(dir / "model.safetensors", {{"x", iota_f32({4, 2})}});
  const std::string msg = error_of([&] { WeightStore::open(dir).get("x", {2, 4}); });
  EXPECT_NE(msg.find("tensor 'x' in " + (dir / "model.safetensors").string() +
                     " has shape [4, 2], expected [2, 4]"),
            std::string::npos)
      << msg;
}
