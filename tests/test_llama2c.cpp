// llama2.c -> HuggingFace conversion: config, tensor names and shapes, the RoPE row permutation,
// the hand-serialised sentencepiece tokenizer, and clear errors for broken inputs. The synthetic
// cases run everywhere; the stories260K cases need ../shared.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/config.h"
#include "engine/llama2c.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using cepe::Llama2cHeader;

const char* const kStories = "models/stories260K/stories260K.bin";

// Greedy continuation of BOS by stories260K, from an independent numpy forward pass over the
// converted (rotate_half) weights; 200 new tokens, and they decode to expected_greedy_200.txt.
const std::vector<int32_t> kGreedyIds = {
    1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396,
    267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261,
    370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267,
    414, 270, 333, 415, 426, 13,  438, 310, 439, 419, 357, 336, 432, 313, 438, 310, 432, 278, 316,
    439, 419, 298, 414, 267, 265, 282, 295, 433, 426, 436, 317, 286, 296, 418, 269, 279, 292, 416,
    439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 338, 336, 432, 313, 442, 391, 267, 337,
    335, 364, 420, 268, 388, 432, 398, 359, 280, 303, 439, 413, 272, 417, 264, 312, 426, 436, 13,
    438, 310, 286, 296, 418, 269, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400,
    426, 338, 336, 432, 313, 442, 439, 423, 262, 304, 420, 422, 432, 317, 426, 359, 279, 292, 416,
    439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 436, 13,  438, 310, 279, 292, 416, 439,
    413, 391, 267, 281, 421, 427, 311, 357, 432, 384, 358};

// ---- helpers to write llama2.c files ----

void append_i32(std::string* s, int32_t v) {
  s->append(reinterpret_cast<const char*>(&v), 4);
}
void append_f32(std::string* s, float v) {
  s->append(reinterpret_cast<const char*>(&v), 4);
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

struct TokPiece {
  std::string text;  // as llama2.c stores it: spaces, not "▁"
  float score;
};

// A small llama2.c tokenizer: <unk>, <s>, </s>, the 256 bytes, then `normal` pieces.
std::string tokenizer_bin(const std::vector<TokPiece>& normal) {
  std::vector<TokPiece> all = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    all.push_back({buf, 0});
  }
  all.insert(all.end(), normal.begin(), normal.end());
  int32_t max_len = 0;
  for (const auto& p : all)
    max_len = std::max<int32_t>(max_len, static_cast<int32_t>(p.text.size()));
  std::string s;
  append_i32(&s, max_len);
  for (const auto& p : all) {
    append_f32(&s, p.score);
    append_i32(&s, static_cast<int32_t>(p.text.size()));
    s += p.text;
  }
  return s;
}

// Pieces 259.. of the synthetic tokenizer; the scores make " a"+"b" -> " ab" and " "+"c" -> " c".
const std::vector<TokPiece> kSyntheticPieces = {{" ", -10}, {"a", -11},  {"b", -12}, {"c", -13},
                                                {" a", -1}, {" ab", -2}, {" c", -3}};
constexpr int kSyntheticVocab = 3 + 256 + 7;

// Header fields, then every float array filled with small distinct finite values, so a
// misplaced copy shows up as a mismatch.
std::string checkpoint_bin(const Llama2cHeader& h, bool shared) {
  std::string s;
  for (int v : {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads,
                shared ? h.vocab_size : -h.vocab_size, h.seq_len})
    append_i32(&s, v);
  Llama2cHeader hh = h;
  hh.shared_classifier = shared;
  for (uint64_t i = 0; i < hh.weight_count(); ++i)
    append_f32(&s, static_cast<float>(std::sin(0.37 * static_cast<double>(i))));
  return s;
}

Llama2cHeader tiny_header() {
  Llama2cHeader h;
  h.dim = 16, h.hidden_dim = 24, h.n_layers = 2, h.n_heads = 4, h.n_kv_heads = 2;
  h.vocab_size = kSyntheticVocab, h.seq_len = 32;
  return h;
}

// Float i of the weights (after the 28-byte header) of a checkpoint file image.
float weight_at(const std::string& file, uint64_t index) {
  float v;
  std::memcpy(&v, file.data() + 28 + 4 * index, 4);
  return v;
}

std::vector<float> tensor_row(const cepe::Tensor& t, int64_t row) {
  const int64_t cols = t.dim(1);
  const float* p = t.data<float>() + row * cols;
  return std::vector<float>(p, p + cols);
}

std::vector<float> file_row(const std::string& file, uint64_t offset, int64_t row, int64_t cols) {
  std::vector<float> out;
  for (int64_t c = 0; c < cols; ++c) out.push_back(weight_at(file, offset + row * cols + c));
  return out;
}

rapidjson::Document read_json(const fs::path& p) {
  rapidjson::Document doc;
  const std::string text = cepe::test::read_file(p);
  doc.Parse(text.c_str(), text.size());
  EXPECT_FALSE(doc.HasParseError()) << p;
  return doc;
}

// Runs the conversion expecting an error whose message contains every one of `needles`.
void expect_conversion_error(const fs::path& ckpt, const fs::path& tok, const fs::path& out,
                             const std::vector<std::string>& needles) {
  try {
    cepe::convert_llama2c(ckpt, tok, out);
    ADD_FAILURE() << "expected an error converting " << ckpt << " + " << tok;
  } catch (const cepe::Error& e) {
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "error lacks '" << n << "': " << e.what();
  }
  EXPECT_FALSE(fs::exists(out / "config.json")) << "a failed conversion must write nothing";
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

// ---- synthetic checkpoints: run without ../shared ----

TEST(Llama2c, RopeRowOrder) {
  EXPECT_EQ(cepe::llama2c_rope_row_order(2, 4), (std::vector<int64_t>{0, 2, 1, 3, 4, 6, 5, 7}));
  EXPECT_EQ(cepe::llama2c_rope_row_order(1, 8), (std::vector<int64_t>{0, 2, 4, 6, 1, 3, 5, 7}));
}

TEST(Llama2c, SyntheticUnsharedClassifier) {
  const fs::path dir = cepe::test::temp_dir("l2c");
  const Llama2cHeader h = tiny_header();
  const std::string ckpt = checkpoint_bin(h, /*shared=*/false);
  write_bytes(dir / "tiny.bin", ckpt);
  write_bytes(dir / "tok.bin", tokenizer_bin(kSyntheticPieces));

  const Llama2cHeader got = cepe::convert_llama2c(dir / "tiny.bin", dir / "tok.bin", dir / "out");
  EXPECT_FALSE(got.shared_classifier);
  EXPECT_EQ(got.vocab_size, kSyntheticVocab);

  const auto cfg = read_json(dir / "out" / "config.json");
  EXPECT_FALSE(cfg["tie_word_embeddings"].GetBool());
  EXPECT_EQ(cfg["vocab_size"].GetInt(), kSyntheticVocab);
  EXPECT_EQ(cfg["num_key_value_heads"].GetInt(), 2);

  const auto ws = cepe::WeightStore::open(dir / "out");
  const int64_t d = h.dim, v = h.vocab_size, kv = h.kv_dim(), hd = h.hidden_dim, L = h.n_layers;
  EXPECT_EQ(ws.names().size(), static_cast<size_t>(3 + 9 * L)) << "embed, norm, lm_head, layers";
  // wcls is the last array, after rms_final and the freq_cis tables.
  Llama2cHeader shared = h;
  shared.shared_classifier = true;
  const uint64_t wcls_offset = shared.weight_count();
  const cepe::Tensor lm_head = ws.get("lm_head.weight", {v, d});
  for (int64_t r : {int64_t{0}, v / 2, v - 1})
    EXPECT_EQ(tensor_row(lm_head, r), file_row(ckpt, wcls_offset, r, d)) << "lm_head row " << r;
  const cepe::Tensor embed = ws.get("model.embed_tokens.weight", {v, d});
  EXPECT_EQ(tensor_row(embed, 7), file_row(ckpt, 0, 7, d));
  EXPECT_NE(tensor_row(embed, 7), tensor_row(lm_head, 7));

  // Every q and k row of every layer comes from the row the permutation names.
  const uint64_t wq_off = v * d + L * d;
  const uint64_t wk_off = wq_off + L * d * d;
  const uint64_t wv_off = wk_off + L * kv * d;
  const uint64_t w2_off = wv_off + L * kv * d + L * d * d + L * d + L * hd * d;
  const auto q_order = cepe::llama2c_rope_row_order(h.n_heads, h.head_size());
  const auto k_order = cepe::llama2c_rope_row_order(h.n_kv_heads, h.head_size());
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const cepe::Tensor q = ws.get(p + "self_attn.q_proj.weight", {d, d});
    const cepe::Tensor k = ws.get(p + "self_attn.k_proj.weight", {kv, d});
    const cepe::Tensor vv = ws.get(p + "self_attn.v_proj.weight", {kv, d});
    for (int64_t r = 0; r < d; ++r)
      EXPECT_EQ(tensor_row(q, r), file_row(ckpt, wq_off + l * d * d, q_order[r], d));
    for (int64_t r = 0; r < kv; ++r) {
      EXPECT_EQ(tensor_row(k, r), file_row(ckpt, wk_off + l * kv * d, k_order[r], d));
      EXPECT_EQ(tensor_row(vv, r), file_row(ckpt, wv_off + l * kv * d, r, d))
          << "v is not permuted";
    }
    const cepe::Tensor down = ws.get(p + "mlp.down_proj.weight", {d, hd});
    EXPECT_EQ(tensor_row(down, 3), file_row(ckpt, w2_off + l * d * hd, 3, hd)) << "w2 is down";
  }
  fs::remove_all(dir);
}

TEST(Llama2c, SyntheticTokenizerEncodesLikeLlama2c) {
  const fs::path dir = cepe::test::temp_dir("l2c");
  write_bytes(dir / "tiny.bin", checkpoint_bin(tiny_header(), true));
  write_bytes(dir / "tok.bin", tokenizer_bin(kSyntheticPieces));
  cepe::convert_llama2c(dir / "tiny.bin", dir / "tok.bin", dir / "out");
  const cepe::Tokenizer tok(dir / "out" / "tokenizer.model");
  EXPECT_EQ(tok.vocab_size(), kSyntheticVocab);
  EXPECT_EQ(tok.piece(0), "<unk>");
  EXPECT_EQ(tok.piece(1), "<s>");
  EXPECT_EQ(tok.piece(2), "</s>");
  EXPECT_TRUE(tok.is_control(1));
  EXPECT_TRUE(tok.is_byte(3 + 0x41));
  EXPECT_EQ(tok.piece(259), "\xE2\x96\x81") << "llama2.c's ' ' is sentencepiece's '▁'";
  EXPECT_EQ(tok.piece(264),
            "\xE2\x96\x81"
            "ab");
  // llama2.c: " ab c" -> " a"+"b" (-1), then " a"+"b" -> " ab" (-2) beats " c" (-3).
  EXPECT_EQ(tok.encode("ab c"), (std::vector<int32_t>{1, 264, 265}));
  // A character outside the vocabulary falls back to its UTF-8 bytes.
  EXPECT_EQ(tok.encode("\xC3\xA9", false), (std::vector<int32_t>{259, 3 + 0xC3, 3 + 0xA9}));
  for (const std::string text : {"ab c", "cab", "a\nb", "\xC3\xA9t\xC3\xA9 \xF0\x9F\xA6\x99"})
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  fs::remove_all(dir);
}

TEST(Llama2c, BrokenCheckpointsAreNamed) {
  const fs::path dir = cepe::test::temp_dir("l2c");
  const Llama2cHeader h = tiny_header();
  const std::string good = checkpoint_bin(h, true);
  write_bytes(dir / "tok.bin", tokenizer_bin(kSyntheticPieces));
  const uint64_t weight_bytes = h.weight_count() * 4;

  expect_conversion_error(dir / "nope.bin", dir / "tok.bin", dir / "out",
                          {"nope.bin", "no such file"});

  write_bytes(dir / "cut.bin", good.substr(0, good.size() - 100));
  expect_conversion_error(dir / "cut.bin", dir / "tok.bin", dir / "out",
                          {"cut.bin: truncated: expected " + std::to_string(weight_bytes) +
                           " bytes of weights, found " + std::to_string(weight_bytes - 100)});

  write_bytes(dir / "short.bin", good.substr(0, 10));
  expect_conversion_error(dir / "short.bin", dir / "tok.bin", dir / "out",
                          {"short.bin", "truncated", "header"});

  write_bytes(dir / "long.bin", good + std::string(8, '\0'));
  expect_conversion_error(dir / "long.bin", dir / "tok.bin", dir / "out",
                          {"long.bin", "8 unexpected bytes"});

  std::string bad_heads = good;
  const int32_t three = 3;  // does not divide dim 16
  std::memcpy(bad_heads.data() + 12, &three, 4);
  write_bytes(dir / "heads.bin", bad_heads);
  expect_conversion_error(dir / "heads.bin", dir / "tok.bin", dir / "out",
                          {"heads.bin", "n_heads (3)"});

  std::string negative = good;
  const int32_t minus = -5;
  std::memcpy(negative.data() + 8, &minus, 4);
  write_bytes(dir / "layers.bin", negative);
  expect_conversion_error(dir / "layers.bin", dir / "tok.bin", dir / "out",
                          {"layers.bin", "n_layers = -5"});

  std::string versioned = good;
  const int32_t magic = 0x616b3432;
  std::memcpy(versioned.data(), &magic, 4);
  write_bytes(dir / "v1.bin", versioned);
  expect_conversion_error(dir / "v1.bin", dir / "tok.bin", dir / "out", {"v1.bin", "legacy"});

  std::string nan = good;
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan.data() + 28 + 4 * 40, &qnan, 4);
  write_bytes(dir / "nan.bin", nan);
  expect_conversion_error(dir / "nan.bin", dir / "tok.bin", dir / "out",
                          {"nan.bin", "token_embedding", "non-finite"});
  fs::remove_all(dir);
}

TEST(Llama2c, BrokenTokenizersAreNamed) {
  const fs::path dir = cepe::test::temp_dir("l2c");
  write_bytes(dir / "tiny.bin", checkpoint_bin(tiny_header(), true));
  const std::string tok = tokenizer_bin(kSyntheticPieces);

  expect_conversion_error(dir / "tiny.bin", dir / "nope_tok.bin", dir / "out",
                          {"nope_tok.bin", "no such file"});

  write_bytes(dir / "cut_tok.bin", tok.substr(0, tok.size() - 3));
  expect_conversion_error(dir / "tiny.bin", dir / "cut_tok.bin", dir / "out",
                          {"cut_tok.bin: truncated: piece 265 of 266"});

  // One piece more than the checkpoint's vocab_size: the files do not belong together.
  write_bytes(dir / "big_tok.bin",
              tokenizer_bin({kSyntheticPieces.begin(), kSyntheticPieces.end()}) +
                  std::string("\0\0\0\0\1\0\0\0z", 9));
  expect_conversion_error(dir / "tiny.bin", dir / "big_tok.bin", dir / "out",
                          {"big_tok.bin", "unexpected bytes after 266 pieces"});

  auto dup = kSyntheticPieces;
  dup[6].text = " a";
  write_bytes(dir / "dup_tok.bin", tokenizer_bin(dup));
  expect_conversion_error(dir / "tiny.bin", dir / "dup_tok.bin", dir / "out",
                          {"dup_tok.bin", "piece 265", "repeats piece 263"});

  std::string no_bos = tok;
  no_bos.replace(no_bos.find("<s>"), 3, "<x>");
  write_bytes(dir / "bos_tok.bin", no_bos);
  expect_conversion_error(dir / "tiny.bin", dir / "bos_tok.bin", dir / "out",
                          {"bos_tok.bin", "piece 1", "expected <s>"});
  fs::remove_all(dir);
}

TEST(Llama2c, CliConvertsAndReportsErrors) {
  const fs::path bin = cepe::test::cepe_binary();
  // Our own binary is built with the tests: its absence is a failure, not a skip.
  ASSERT_TRUE(fs::exists(bin)) << "cepe binary not found at " << bin;
  const fs::path dir = cepe::test::temp_dir("l2c");
  write_bytes(dir / "tiny.bin", checkpoint_bin(tiny_header(), true));
  write_bytes(dir / "tok.bin", tokenizer_bin(kSyntheticPieces));
  const std::string base = bin.string() + " convert ";
  std::string out;
  EXPECT_EQ(cepe::test::run_command(base + "llama2c --checkpoint " + (dir / "tiny.bin").string() +
                                        " --tokenizer " + (dir / "tok.bin").string() + " --out " +
                                        (dir / "m").string(),
                                    &out),
            0)
      << out;
  EXPECT_TRUE(fs::exists(dir / "m" / "config.json")) << out;
  EXPECT_TRUE(fs::exists(dir / "m" / "tokenizer.model")) << out;

  EXPECT_NE(cepe::test::run_command(base + "gguf --checkpoint x --tokenizer y --out z", &out), 0);
  EXPECT_NE(out.find("unknown format 'gguf'"), std::string::npos) << out;
  EXPECT_NE(cepe::test::run_command(base + "llama2c --checkpoint " + (dir / "tiny.bin").string() +
                                        " --tokenizer " + (dir / "tok.bin").string(),
                                    &out),
            0);
  EXPECT_NE(out.find("--out"), std::string::npos) << out;
  EXPECT_NE(cepe::test::run_command(base + "llama2c --checkpoint " + (dir / "gone.bin").string() +
                                        " --tokenizer " + (dir / "tok.bin").string() + " --out " +
                                        (dir / "m2").string(),
                                    &out),
            0);
  EXPECT_NE(out.find("gone.bin: no such file"), std::string::npos) << out;
  fs::remove_all(dir);
}

// ---- stories260K ----

TEST(Stories260K, ConfigAndShapes) {
  CEPE_REQUIRE_SHARED(kStories, ckpt);
  const fs::path dir = cepe::test::temp_dir("l2c");
  const Llama2cHeader h = cepe::convert_llama2c(ckpt, ckpt.parent_path() / "tok512.bin", dir);
  EXPECT_EQ(h.dim, 64);
  EXPECT_EQ(h.n_kv_heads, 4);
  EXPECT_TRUE(h.shared_classifier);

  const auto cfg = read_json(dir / "config.json");
  EXPECT_EQ(cfg["hidden_size"].GetInt(), 64);
  EXPECT_EQ(cfg["intermediate_size"].GetInt(), 172);
  EXPECT_EQ(cfg["num_attention_heads"].GetInt(), 8);
  EXPECT_EQ(cfg["num_key_value_heads"].GetInt(), 4);
  EXPECT_EQ(cfg["num_hidden_layers"].GetInt(), 5);
  EXPECT_EQ(cfg["vocab_size"].GetInt(), 512);
  EXPECT_EQ(cfg["max_position_embeddings"].GetInt(), 512);
  EXPECT_DOUBLE_EQ(cfg["rms_norm_eps"].GetDouble(), 1e-5);
  EXPECT_DOUBLE_EQ(cfg["rope_theta"].GetDouble(), 10000.0);
  EXPECT_TRUE(cfg["tie_word_embeddings"].GetBool());
  EXPECT_EQ(cfg["bos_token_id"].GetInt(), 1);
  EXPECT_EQ(cfg["eos_token_id"].GetInt(), 2);
  EXPECT_STREQ(cfg["architectures"][0].GetString(), "LlamaForCausalLM");

  // The engine's own config reader accepts it.
  const cepe::ModelConfig mc = cepe::load_model_config(dir);
  EXPECT_EQ(mc.decoder.head_dim, 8);
  EXPECT_EQ(mc.decoder.num_key_value_heads, 4);
  EXPECT_TRUE(mc.decoder.tie_word_embeddings);
  EXPECT_FALSE(mc.is_cepe());

  const auto ws = cepe::WeightStore::open(dir);
  EXPECT_EQ(ws.names().size(), 2u + 9u * 5u);
  EXPECT_FALSE(ws.contains("lm_head.weight")) << "stories260K shares its classifier";
  EXPECT_EQ(ws.get("model.embed_tokens.weight", {512, 64}).dtype(), cepe::DType::F32);
  ws.get("model.norm.weight", {64});
  for (int l = 0; l < 5; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ws.get(p + "input_layernorm.weight", {64});
    ws.get(p + "post_attention_layernorm.weight", {64});
    ws.get(p + "self_attn.q_proj.weight", {64, 64});
    ws.get(p + "self_attn.k_proj.weight", {32, 64});
    ws.get(p + "self_attn.v_proj.weight", {32, 64});
    ws.get(p + "self_attn.o_proj.weight", {64, 64});
    ws.get(p + "mlp.gate_proj.weight", {172, 64});
    ws.get(p + "mlp.up_proj.weight", {172, 64});
    ws.get(p + "mlp.down_proj.weight", {64, 172});
  }
  fs::remove_all(dir);
}

TEST(Stories260K, QueryAndKeyRowsArePermuted) {
  CEPE_REQUIRE_SHARED(kStories, ckpt);
  const fs::path dir = cepe::test::temp_dir("l2c");
  cepe::convert_llama2c(ckpt, ckpt.parent_path() / "tok512.bin", dir);
  const std::string file = cepe::test::read_file(ckpt);
  const auto ws = cepe::WeightStore::open(dir);
  const int64_t d = 64, v = 512, L = 5, kv = 32;
  const uint64_t wq = v * d + L * d, wk = wq + L * d * d;
  const int l = 2;
  const cepe::Tensor q = ws.get("model.layers.2.self_attn.q_proj.weight", {d, d});
  const cepe::Tensor k = ws.get("model.layers.2.self_attn.k_proj.weight", {kv, d});
  // head_size 8: HF row (head 3, second half, i = 2) = 3*8 + 4 + 2 = 30 is llama2.c row
  // (head 3, pair 2, odd member) = 3*8 + 2*2 + 1 = 29.
  EXPECT_EQ(tensor_row(q, 30), file_row(file, wq + l * d * d, 29, d));
  EXPECT_EQ(tensor_row(q, 24), file_row(file, wq + l * d * d, 24, d)) << "row 0 of a head stays";
  EXPECT_NE(tensor_row(q, 30), file_row(file, wq + l * d * d, 30, d));
  // kv head 1: HF row 8 + 0*4 + 3 = 11 is llama2.c row 8 + 2*3 + 0 = 14.
  EXPECT_EQ(tensor_row(k, 11), file_row(file, wk + l * kv * d, 14, d));
  fs::remove_all(dir);
}

TEST(Stories260K, TokenizerEncodesAndDecodesLikeLlama2c) {
  CEPE_REQUIRE_SHARED(kStories, ckpt);
  const fs::path dir = cepe::test::temp_dir("l2c");
  cepe::convert_llama2c(ckpt, ckpt.parent_path() / "tok512.bin", dir);
  const cepe::Tokenizer tok(dir / "tokenizer.model");
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.piece(317), "\xE2\x96\x81Lily");
  // Ids from llama2.c's own encoder (dummy " " prefix, greedy highest-score merges).
  EXPECT_EQ(tok.encode("Once upon a time, there was a little girl named Lily."),
            (std::vector<int32_t>{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421,
                                  395, 317, 426}));
  EXPECT_EQ(tok.encode("Hello \xF0\x9F\xA6\x99 world"),
            (std::vector<int32_t>{1, 346, 306, 414, 410, 243, 162, 169, 156, 263, 304, 341}));
  EXPECT_EQ(tok.encode(" two  spaces"),
            (std::vector<int32_t>{1, 410, 259, 424, 414, 410, 262, 427, 412, 331, 419}));
  for (const std::string text : {"Lily's mom said, \"Let's go!\"", "a\nb\n\nc",
                                 "caf\xC3\xA9 \xE6\x97\xA5", "Tom had 3 toys."})
    EXPECT_EQ(tok.decode(tok.encode(text)), text);

  // The golden greedy ids decode, one-shot and streamed, to the golden text: BOS's following
  // space dropped, <0x0A> turned into a newline.
  const std::string expected =
      cepe::test::read_file(ckpt.parent_path() / "expected_greedy_200.txt");
  ASSERT_EQ(kGreedyIds.size(), 201u);
  EXPECT_EQ(tok.decode(kGreedyIds), expected);
  cepe::StreamDecoder stream(tok, {kGreedyIds[0]});
  std::string streamed;
  for (size_t i = 1; i < kGreedyIds.size(); ++i) streamed += stream.push(kGreedyIds[i]);
  streamed += stream.flush();
  EXPECT_EQ(streamed, expected);
  fs::remove_all(dir);
}

TEST(Stories260K, TruncatedCheckpointIsNamed) {
  CEPE_REQUIRE_SHARED(kStories, ckpt);
  const fs::path dir = cepe::test::temp_dir("l2c");
  const std::string file = cepe::test::read_file(ckpt);
  write_bytes(dir / "stories260K.bin", file.substr(0, 500000));
  expect_conversion_error(dir / "stories260K.bin", ckpt.parent_path() / "tok512.bin", dir / "out",
                          {"stories260K.bin: truncated: expected 1056512 bytes of weights, found "
                           "499972"});
  // tok512.bin with a checkpoint claiming another vocabulary size.
  std::string other = file;
  const int32_t vocab = 500;
  std::memcpy(other.data() + 20, &vocab, 4);
  write_bytes(dir / "v500.bin", other.substr(0, other.size() - 12 * 64 * 4));
  expect_conversion_error(dir / "v500.bin", ckpt.parent_path() / "tok512.bin", dir / "out",
                          {"tok512.bin", "unexpected bytes after 500 pieces"});
  fs::remove_all(dir);
}

}  // namespace
