// Integration tests of `cepe serve`: the real binary (CEPE_BINARY) on loopback with a port of its
// choosing, a tiny random CEPE model, a sentencepiece tokenizer and a BM25 index over a corpus
// this test writes itself (no shared data needed), spoken to over HTTP. Every endpoint, every
// error status, streaming, cancellation when the client leaves, deadlines, queue limits, API keys,
// CORS, slow clients and graceful shutdown with requests in flight.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include "common/system.h"
#include "server/http_client.h"
#include "server/http_date.h"
#include "server/request.h"
#include "server/resources.h"
#include "server/server.h"
#include "test_util.h"

namespace cepe::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// ---- test data: corpus, tokenizer, model, index ----

struct TestData {
  fs::path model, index;
  std::string skip;   // why the tests cannot run: an outside tool or shared data is missing
  std::string error;  // our own command failed: a product regression, so the tests fail
};

const TestData& test_data() {
  static const TestData data = [] {
    TestData d;
    const fs::path dir = test::temp_dir("server-http");
    const char* cities[] = {"Paris",  "Rome", "Berlin", "Madrid", "Lisbon", "Vienna",
                            "Prague", "Oslo", "Athens", "Dublin", "Warsaw", "Bern"};
    const char* countries[] = {"France",   "Italy",   "Germany", "Spain",
                               "Portugal", "Austria", "Czechia", "Norway",
                               "Greece",   "Ireland", "Poland",  "Switzerland"};
    const char* rivers[] = {"Seine",  "Tiber",     "Spree",   "Manzanares", "Tagus",   "Danube",
                            "Vltava", "Akerselva", "Kifisos", "Liffey",     "Vistula", "Aare"};
    {
      std::ofstream jsonl(dir / "passages.jsonl"), txt(dir / "corpus.txt");
      for (int i = 0; i < 12; ++i) {
        for (int j = 0; j < 4; ++j) {
          const std::string text = std::string(cities[i]) + " is the capital of " + countries[i] +
                                   ". The river " + rivers[i] + " flows through " + cities[i] +
                                   ". It has " + std::to_string(j + 2) +
                                   " million people, museums, parks and old bridges.";
          jsonl << "{\"id\":\"p" << i << "-" << j << "\",\"title\":\"" << countries[i]
                << "\",\"text\":\"" << text << "\"}\n";
          txt << countries[i] << "\n" << text << "\n";
        }
      }
    }
    std::string out;
    fs::path tokenizer = dir / "spm.model";
    if (test::run_command("command -v spm_train", &out) == 0) {
      const std::string cmd = "spm_train --input=" + (dir / "corpus.txt").string() +
                              " --model_prefix=" + (dir / "spm").string() +
                              " --vocab_size=400 --hard_vocab_limit=false --model_type=bpe"
                              " --byte_fallback=true --minloglevel=2";
      if (test::run_command(cmd, &out) != 0) {
        d.skip = "spm_train failed: " + out;
        return d;
      }
    } else if (auto shared = test::shared_dir();
               shared && fs::exists(*shared / "models/llama2-tokenizer/tokenizer.model")) {
      tokenizer = *shared / "models/llama2-tokenizer/tokenizer.model";
    } else {
      d.skip = "neither spm_train (package sentencepiece) nor the shared llama2 tokenizer found";
      return d;
    }
    const std::string cepe = test::cepe_binary().string();
    d.model = dir / "model";
    d.index = dir / "index";
    if (test::run_command(cepe + " random-model --preset tiny --tokenizer " + tokenizer.string() +
                              " --out " + d.model.string(),
                          &out) != 0) {
      d.error = "cepe random-model failed: " + out;
      return d;
    }
    if (test::run_command(cepe + " index build --input " + (dir / "passages.jsonl").string() +
                              " --out " + d.index.string(),
                          &out) != 0) {
      d.error = "cepe index build failed: " + out;
    }
    return d;
  }();
  return data;
}

#define REQUIRE_TEST_DATA()                                          \
  do {                                                               \
    if (!test_data().error.empty()) FAIL() << test_data().error;     \
    if (!test_data().skip.empty()) GTEST_SKIP() << test_data().skip; \
  } while (0)

// ---- the server process ----

class ServerProcess {
 public:
  /// Starts `cepe serve` with the test model and index plus `extra` flags; waits for "ready".
  /// `model` replaces the test model; `wait_ready` false returns once it listens (still loading).
  explicit ServerProcess(const std::vector<std::string>& extra, bool with_index = true,
                         const fs::path& model = {}, bool wait_ready = true) {
    static std::atomic<int> counter{0};
    log_path_ = test::temp_dir("server-log") / ("serve" + std::to_string(counter++) + ".log");
    std::vector<std::string> args = {test::cepe_binary().string(),
                                     "serve",
                                     "--model",
                                     model.empty() ? test_data().model.string() : model.string(),
                                     "--port",
                                     "0",
                                     "--threads",
                                     "1",
                                     "--io-threads",
                                     "2",
                                     "--retrieval-threads",
                                     "1"};
    if (with_index) args.insert(args.end(), {"--index", test_data().index.string()});
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int null = ::open("/dev/null", O_WRONLY);
      dup2(fd, 2);
      dup2(null, 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto until = SteadyClock::now() + 60s;
    const std::regex port_re("\"event\":\"listening\".*\"port\":([0-9]+)");
    while (SteadyClock::now() < until) {
      const std::string log = this->log();
      std::smatch m;
      if (port_ == 0 && std::regex_search(log, m, port_re)) port_ = std::stoi(m[1]);
      if (port_ != 0 && (!wait_ready || log.find("\"event\":\"ready\"") != std::string::npos))
        return;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("cepe serve exited during startup: " + log);
      }
      std::this_thread::sleep_for(20ms);
    }
    throw std::runtime_error("cepe serve did not become ready in 60 s: " + log());
  }

  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  /// The bound port.
  uint16_t port() const { return static_cast<uint16_t>(port_); }
  /// The process id.
  pid_t pid() const { return pid_; }
  /// Everything the server logged so far.
  std::string log() const { return test::read_file(log_path_); }

  /// Sends `sig` and waits up to `limit` for the exit; returns the exit status (-1: still running,
  /// -2: killed by a signal).
  int stop(int sig, std::chrono::milliseconds limit) {
    kill(pid_, sig);
    return wait_exit(limit);
  }

  /// Waits up to `limit` for the process to exit; see stop().
  int wait_exit(std::chrono::milliseconds limit) {
    const auto until = SteadyClock::now() + limit;
    while (SteadyClock::now() < until) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

  /// A client of this server.
  HttpClient client(std::chrono::milliseconds timeout = 60s) const {
    return HttpClient("127.0.0.1", port(), timeout);
  }

 private:
  fs::path log_path_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// ---- helpers ----

rapidjson::Document parse_json(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str(), text.size());
  EXPECT_FALSE(d.HasParseError()) << "not JSON: " << text;
  return d;
}

// Checks an error answer: status, {"error":{"code","message"}}, the code, and that the message
// mentions `mentions`.
void expect_error(const HttpResponse& r, int status, const std::string& code,
                  const std::string& mentions = "") {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_FALSE(r.header("x-request-id").empty());
  const auto d = parse_json(r.body);
  ASSERT_TRUE(d.IsObject() && d.HasMember("error") && d["error"].IsObject()) << r.body;
  ASSERT_TRUE(d["error"].HasMember("code") && d["error"]["code"].IsString()) << r.body;
  ASSERT_TRUE(d["error"].HasMember("message") && d["error"]["message"].IsString()) << r.body;
  EXPECT_EQ(std::string(d["error"]["code"].GetString()), code) << r.body;
  EXPECT_NE(std::string(d["error"]["message"].GetString()).find(mentions), std::string::npos)
      << r.body;
}

// The value of one sample (`name` with its labels, e.g. `x{a="b"}`) in a Prometheus text, or -1.
double metric(const std::string& text, const std::string& name) {
  size_t pos = 0;
  while ((pos = text.find(name + " ", pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + name.size() + 1));
    pos += name.size();
  }
  return -1;
}

double metric_of(const ServerProcess& s, const std::string& name) {
  HttpClient c = s.client();
  return metric(c.request("GET", "/metrics").body, name);
}

// Waits up to 10 s for the n-th log line of `event` (a JSON log's "event" field) of `s`.
bool wait_for_event(const ServerProcess& s, const std::string& event, size_t n) {
  const std::string needle = "\"event\":\"" + event + "\"";
  for (int i = 0; i < 1000; ++i) {
    const std::string log = s.log();
    size_t count = 0;
    for (size_t p = 0; (p = log.find(needle, p)) != std::string::npos; ++p) ++count;
    if (count >= n) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// Polls until metric `name` satisfies `ok` (or `limit` passes); returns the last value.
template <class Pred>
double wait_metric(const ServerProcess& s, const std::string& name, Pred ok,
                   std::chrono::milliseconds limit = 10s) {
  const auto until = SteadyClock::now() + limit;
  double v = metric_of(s, name);
  while (!ok(v) && SteadyClock::now() < until) {
    std::this_thread::sleep_for(20ms);
    v = metric_of(s, name);
  }
  return v;
}

// The log line of one request id, waiting up to 5 s for it (a request is logged as it ends, which
// can be just after the client saw the connection close); "" when absent.
std::string log_line_of(const ServerProcess& s, const std::string& request_id) {
  const auto until = SteadyClock::now() + 5s;
  for (;;) {
    const std::string log = s.log();
    const size_t at = log.find("\"request_id\":\"" + request_id + "\"");
    if (at != std::string::npos) {
      const size_t b = log.rfind('\n', at);
      const size_t begin = b == std::string::npos ? 0 : b + 1;
      return log.substr(begin, log.find('\n', at) - begin);
    }
    if (SteadyClock::now() > until) return "";
    std::this_thread::sleep_for(20ms);
  }
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string ask_body(const std::string& question, const std::string& extra = "") {
  return "{\"question\":" + json_quote(question) + (extra.empty() ? "" : "," + extra) + "}";
}

bool can_connect(uint16_t port) {
  try {
    HttpClient c("127.0.0.1", port, 2s);
    c.request("GET", "/healthz");
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// ---- the main server: most endpoints and errors ----

class ServerHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test_data().skip.empty() || !test_data().error.empty()) return;
    server_ = new ServerProcess({"--max-batch",
                                 "8",
                                 "--max-queue",
                                 "32",
                                 "--max-new-tokens",
                                 "2000",
                                 "--max-body-bytes",
                                 "4096",
                                 "--header-timeout-ms",
                                 "1000",
                                 "--body-timeout-ms",
                                 "1000",
                                 "--cors-origin",
                                 "http://allowed.example",
                                 "--max-k",
                                 "8",
                                 "--default-k",
                                 "3",
                                 "--max-question-chars",
                                 "200",
                                 "--model-name",
                                 "tiny-test"});
  }
  static void TearDownTestSuite() {
    if (!server_) return;
    EXPECT_EQ(server_->stop(SIGTERM, 20s), 0) << server_->log();
    // Every log line is one JSON object with a time, a level and an event.
    std::istringstream lines(server_->log());
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
      const auto d = parse_json(line);
      EXPECT_TRUE(d.IsObject() && d.HasMember("ts") && d.HasMember("level") && d.HasMember("event"))
          << line;
      ++n;
    }
    EXPECT_GT(n, 50);
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { REQUIRE_TEST_DATA(); }

  static ServerProcess* server_;
};

ServerProcess* ServerHttp::server_ = nullptr;

TEST_F(ServerHttp, HealthReadyAndInfo) {
  HttpClient c = server_->client();
  const int64_t before = static_cast<int64_t>(std::time(nullptr));
  auto r = c.request("GET", "/healthz");
  const int64_t after = static_cast<int64_t>(std::time(nullptr));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"status\":\"ok\"}");
  // Every answer is dated (RFC 9110 6.6.1), in the second it was sent.
  const std::string date = r.header("date");
  bool dated = false;
  for (int64_t t = before; t <= after; ++t) dated = dated || date == http_date(t);
  EXPECT_TRUE(dated) << date;
  r = c.request("GET", "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"status\":\"ready\"}");
  r = c.request("GET", "/v1/info");
  ASSERT_EQ(r.status, 200);
  const auto d = parse_json(r.body);
  EXPECT_STREQ(d["model"]["name"].GetString(), "tiny-test");
  EXPECT_TRUE(d["model"]["cepe"].GetBool());
  EXPECT_STREQ(d["model"]["cross_attention"].GetString(), "absorbed");  // auto on the CPU
  EXPECT_STREQ(d["model"]["kv_cache"].GetString(), "F32");  // auto with stored F32 weights
  EXPECT_STREQ(d["model"]["weights"].GetString(), "stored");
  EXPECT_GT(d["model"]["weight_bytes"].GetUint64(), 0u);
  EXPECT_EQ(std::string(d["model"]["backend"].GetString()).rfind("cpu (", 0), 0u)
      << d["model"]["backend"].GetString();
  EXPECT_EQ(d["index"]["passages"].GetInt(), 48);
  EXPECT_STREQ(d["index"]["retriever"].GetString(), "bm25");
  EXPECT_TRUE(d["index"]["embedder"].IsNull());  // no dense side
  EXPECT_DOUBLE_EQ(d["index"]["bm25"]["k1"].GetDouble(), 0.9);
  EXPECT_STREQ(d["index"]["bm25"]["stemmer"].GetString(), "english");
  EXPECT_EQ(d["limits"]["max_k"].GetInt(), 8);
  EXPECT_EQ(d["limits"]["max_new_tokens"].GetInt(), 2000);
  EXPECT_EQ(d["limits"]["max_body_bytes"].GetInt(), 4096);
  EXPECT_EQ(d["limits"]["max_logprobs"].GetInt(), 20);
  EXPECT_EQ(d["engine"]["max_batch"].GetInt(), 8);
  EXPECT_TRUE(d["engine"]["batching"].GetBool());
  EXPECT_FALSE(d["auth"].GetBool());

  expect_error(c.request("GET", "/nope"), 404, "not_found", "/nope");
  r = c.request("POST", "/healthz", "{}");
  expect_error(r, 405, "method_not_allowed", "/healthz");
  EXPECT_EQ(r.header("allow"), "GET, HEAD, OPTIONS");
  r = c.request("GET", "/ask");
  expect_error(r, 405, "method_not_allowed", "POST");
  EXPECT_EQ(r.header("allow"), "POST, OPTIONS");
}

TEST_F(ServerHttp, AskAnswersWithPassagesUsageAndTimings) {
  HttpClient c = server_->client();
  const auto r = c.request("POST", "/ask", ask_body("Which river flows through Rome?"),
                           {{"X-Request-Id", "ask-basic-1"}, {"Content-Type", "application/json"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("x-request-id"), "ask-basic-1");
  const auto d = parse_json(r.body);
  ASSERT_TRUE(d["answer"].IsString());
  const std::string finish = d["finish_reason"].GetString();
  EXPECT_TRUE(finish == "length" || finish == "eos" || finish == "stop") << finish;
  EXPECT_STREQ(d["model"].GetString(), "tiny-test");
  // k defaults to 3 (--default-k); BM25 puts a Rome passage first.
  const auto& ps = d["passages"];
  ASSERT_TRUE(ps.IsArray());
  ASSERT_EQ(ps.Size(), 3u);
  for (rapidjson::SizeType i = 0; i < ps.Size(); ++i) {
    EXPECT_EQ(ps[i]["rank"].GetInt(), static_cast<int>(i) + 1);
    EXPECT_TRUE(ps[i]["id"].IsString() && ps[i]["title"].IsString() && ps[i]["text"].IsString());
    EXPECT_TRUE(ps[i]["score"].IsNumber());
    if (i > 0) {
      EXPECT_LE(ps[i]["score"].GetDouble(), ps[i - 1]["score"].GetDouble());
    }
  }
  EXPECT_STREQ(ps[0]["title"].GetString(), "Italy");
  const auto& u = d["usage"];
  EXPECT_GT(u["prompt_tokens"].GetInt(), 5);
  EXPECT_GT(u["encoder_tokens"].GetInt(), 20);  // decoder_passages 0: all three are encoded
  EXPECT_GE(u["completion_tokens"].GetInt(), 1);
  EXPECT_LE(u["completion_tokens"].GetInt(), 25);  // the default max_new_tokens
  const auto& t = d["timings"];
  for (const char* k : {"retrieve_ms", "encode_ms", "prefill_ms", "decode_ms", "total_ms"}) {
    ASSERT_TRUE(t.HasMember(k) && t[k].IsNumber()) << k;
    EXPECT_GE(t[k].GetDouble(), 0.0) << k;
  }
  EXPECT_GE(t["total_ms"].GetDouble(), t["decode_ms"].GetDouble());
  EXPECT_GT(t["encode_ms"].GetDouble(), 0.0);

  const std::string line = log_line_of(*server_, "ask-basic-1");
  EXPECT_NE(line.find("\"status\":200"), std::string::npos) << line;
  EXPECT_NE(line.find("\"path\":\"/ask\""), std::string::npos) << line;

  // Without an X-Request-Id the server makes one and echoes it.
  const auto r2 =
      c.request("POST", "/ask", ask_body("Where is the Tagus?", "\"max_new_tokens\":2"));
  ASSERT_EQ(r2.status, 200);
  EXPECT_FALSE(r2.header("x-request-id").empty());
  EXPECT_STREQ(parse_json(r2.body)["request_id"].GetString(), r2.header("x-request-id").c_str());
}

// /search answers with the passages /ask retrieves for the same question and settings (ids and
// scores), without generating; its body takes only the retrieval fields, each checked.
TEST_F(ServerHttp, SearchReturnsThePassagesAskRetrieves) {
  HttpClient c = server_->client();
  const std::string question = "Which river flows through Rome?";
  const auto ask = c.request("POST", "/ask", ask_body(question, "\"k\":3,\"max_new_tokens\":1"));
  ASSERT_EQ(ask.status, 200) << ask.body;
  const auto r =
      c.request("POST", "/search", ask_body(question, "\"k\":3"), {{"X-Request-Id", "search-1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json");
  const auto a = parse_json(ask.body), d = parse_json(r.body);
  ASSERT_TRUE(d["passages"].IsArray()) << r.body;
  ASSERT_EQ(d["passages"].Size(), 3u) << r.body;
  for (rapidjson::SizeType i = 0; i < 3; ++i) {
    const auto &p = d["passages"][i], &q = a["passages"][i];
    EXPECT_STREQ(p["id"].GetString(), q["id"].GetString()) << i;
    EXPECT_STREQ(p["text"].GetString(), q["text"].GetString()) << i;
    EXPECT_EQ(p["score"].GetDouble(), q["score"].GetDouble()) << i;
    EXPECT_EQ(p["rank"].GetInt(), static_cast<int>(i) + 1);
  }
  EXPECT_FALSE(d.HasMember("answer"));
  EXPECT_GE(d["timings"]["retrieve_ms"].GetDouble(), 0.0);
  EXPECT_STREQ(d["request_id"].GetString(), "search-1");
  // k up to max_k, and more passages than /ask's default.
  const auto wide = c.request("POST", "/search", ask_body(question, "\"k\":8"));
  ASSERT_EQ(wide.status, 200) << wide.body;
  EXPECT_EQ(parse_json(wide.body)["passages"].Size(), 8u);
  expect_error(c.request("POST", "/search", "{\"k\":3}"), 400, "missing_field", "question");
  expect_error(c.request("POST", "/search", ask_body(question, "\"k\":0")), 400, "invalid_field",
               "k");
  expect_error(c.request("POST", "/search", ask_body(question, "\"k\":9")), 400, "limit_exceeded",
               "k");
  expect_error(c.request("POST", "/search", ask_body(question, "\"max_new_tokens\":3")), 400,
               "unknown_field", "max_new_tokens");
  expect_error(c.request("POST", "/search", ask_body("   ")), 400, "invalid_field", "question");
  expect_error(c.request("GET", "/search"), 405, "method_not_allowed", "POST");
  const std::string line = log_line_of(*server_, "search-1");
  EXPECT_NE(line.find("\"path\":\"/search\""), std::string::npos) << line;
  EXPECT_NE(server_->client().request("GET", "/metrics").body.find("route=\"/search\""),
            std::string::npos);
}

TEST_F(ServerHttp, DecoderPassagesMoveFromEncoderToPrompt) {
  HttpClient c = server_->client();
  auto usage = [&](int decoder_passages) {
    const auto r = c.request("POST", "/ask",
                             ask_body("Which river flows through Oslo?",
                                      "\"k\":3,\"max_new_tokens\":1,\"decoder_passages\":" +
                                          std::to_string(decoder_passages)));
    EXPECT_EQ(r.status, 200) << r.body;
    const auto d = parse_json(r.body);
    return std::pair<int, int>(d["usage"]["prompt_tokens"].GetInt(),
                               d["usage"]["encoder_tokens"].GetInt());
  };
  const auto [p0, e0] = usage(0);
  const auto [p2, e2] = usage(2);
  const auto [p3, e3] = usage(3);
  EXPECT_GT(p2, p0 + 20);
  EXPECT_LT(e2, e0);
  EXPECT_GT(e2, 0);
  EXPECT_GT(p3, p2);
  EXPECT_EQ(e3, 0);
  expect_error(c.request("POST", "/ask", ask_body("q", "\"k\":2,\"decoder_passages\":3")), 400,
               "invalid_field", "'decoder_passages'");
}

TEST_F(ServerHttp, CallerPassagesReplaceRetrieval) {
  HttpClient c = server_->client();
  const auto r = c.request(
      "POST", "/ask",
      ask_body("What is on Mars?",
               R"("passages":[{"title":"Mars","text":"Olympus Mons is on Mars."},)"
               R"({"text":"Valles Marineris is a canyon.","id":"vm"}],"max_new_tokens":3)"));
  ASSERT_EQ(r.status, 200) << r.body;
  const auto d = parse_json(r.body);
  const auto& ps = d["passages"];
  ASSERT_EQ(ps.Size(), 2u);
  EXPECT_STREQ(ps[0]["title"].GetString(), "Mars");
  EXPECT_STREQ(ps[1]["id"].GetString(), "vm");
  EXPECT_EQ(ps[1]["rank"].GetInt(), 2);
  EXPECT_TRUE(ps[0]["score"].IsNull());
  EXPECT_EQ(d["timings"]["retrieve_ms"].GetDouble(), 0.0);
  EXPECT_GT(d["usage"]["encoder_tokens"].GetInt(), 5);
}

TEST_F(ServerHttp, StreamingSendsPassagesTokensAndDone) {
  const std::string body =
      ask_body("Which river flows through Vienna?", R"("max_new_tokens":16,"stop":[],"k":2)");
  HttpClient plain = server_->client();
  const auto whole = plain.request("POST", "/ask", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const auto wd = parse_json(whole.body);

  HttpClient c = server_->client();
  const auto head = c.start_stream("/ask", body.substr(0, body.size() - 1) + ",\"stream\":true}",
                                   {{"X-Request-Id", "sse-1"}});
  ASSERT_EQ(head.status, 200);
  EXPECT_EQ(head.header("content-type"), "text/event-stream");
  EXPECT_EQ(head.header("x-request-id"), "sse-1");
  std::vector<SseEvent> events;
  while (auto ev = c.next_event()) events.push_back(*ev);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front().event, "passages");
  EXPECT_EQ(parse_json(events.front().data)["passages"].Size(), 2u);
  EXPECT_EQ(events.back().event, "done");
  std::string text;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    EXPECT_EQ(events[i].event, "token");
    text += parse_json(events[i].data)["text"].GetString();
  }
  const auto done = parse_json(events.back().data);
  EXPECT_EQ(trim(text), std::string(done["answer"].GetString()));
  // Greedy decoding: the streamed answer is the plain one.
  EXPECT_STREQ(done["answer"].GetString(), wd["answer"].GetString());
  EXPECT_EQ(done["usage"]["completion_tokens"].GetInt(), wd["usage"]["completion_tokens"].GetInt());
  EXPECT_GT(done["usage"]["encoder_tokens"].GetInt(), 0);
  for (const char* k : {"retrieve_ms", "encode_ms", "prefill_ms", "decode_ms", "total_ms"})
    EXPECT_TRUE(done["timings"].HasMember(k)) << k;
  EXPECT_STREQ(done["finish_reason"].GetString(), wd["finish_reason"].GetString());

  // The connection stays usable after a stream (chunked encoding ends it cleanly).
  const auto after = c.request("GET", "/healthz");
  EXPECT_EQ(after.status, 200);
}

// "logprobs": n lists each generated token with its log-probability and the n most likely tokens,
// in the plain answer and, the same figures, spread over the stream's token events. The tokens'
// bytes, joined, are the generated text (which the answer is, trimmed).
TEST_F(ServerHttp, AskLogprobsListEveryGeneratedToken) {
  const std::string body = ask_body("Which river flows through Madrid?",
                                    R"("max_new_tokens":10,"stop":[],"k":2,"logprobs":3)");
  HttpClient c = server_->client();
  const auto plain = c.request("POST", "/ask", body);
  ASSERT_EQ(plain.status, 200) << plain.body;
  const auto d = parse_json(plain.body);
  ASSERT_TRUE(d.HasMember("logprobs") && d["logprobs"].IsArray()) << plain.body;
  const auto& lps = d["logprobs"];
  ASSERT_EQ(static_cast<int>(lps.Size()), d["usage"]["completion_tokens"].GetInt());
  std::string joined;
  bool control = false;
  for (const auto& e : lps.GetArray()) {
    const double logprob = e["logprob"].GetDouble();
    EXPECT_LE(logprob, 0.0);
    ASSERT_EQ(e["top_logprobs"].Size(), 3u);
    // Greedy: the token is the most likely one.
    EXPECT_STREQ(e["token"].GetString(), e["top_logprobs"][0]["token"].GetString());
    EXPECT_EQ(logprob, e["top_logprobs"][0]["logprob"].GetDouble());
    double mass = 0;
    for (rapidjson::SizeType r = 0; r < 3; ++r) {
      mass += std::exp(e["top_logprobs"][r]["logprob"].GetDouble());
      if (r > 0) {
        EXPECT_GE(e["top_logprobs"][r - 1]["logprob"].GetDouble(),
                  e["top_logprobs"][r]["logprob"].GetDouble());
      }
    }
    EXPECT_LE(mass, 1.0 + 1e-5);
    std::string bytes;
    for (const auto& b : e["bytes"].GetArray()) bytes += static_cast<char>(b.GetInt());
    EXPECT_EQ(sanitize_utf8(bytes), e["token"].GetString());
    control |= bytes.size() > 2 && bytes.front() == '<' && bytes.back() == '>';
    joined += bytes;
  }
  // Control pieces are listed by name but decode to nothing. A byte that is no part of a valid
  // character decodes to U+FFFD, as sanitize_utf8 replaces it.
  if (!control) {
    EXPECT_EQ(trim(sanitize_utf8(joined)), d["answer"].GetString());
  }

  HttpClient s = server_->client();
  const auto head = s.start_stream("/ask", body.substr(0, body.size() - 1) + ",\"stream\":true}");
  ASSERT_EQ(head.status, 200);
  std::vector<std::string> streamed;
  while (auto ev = s.next_event()) {
    if (ev->event != "token") continue;
    const auto t = parse_json(ev->data);
    ASSERT_TRUE(t.HasMember("logprobs")) << ev->data;
    for (const auto& e : t["logprobs"].GetArray())
      streamed.push_back(std::string(e["token"].GetString()) + " " +
                         std::to_string(e["logprob"].GetDouble()));
  }
  ASSERT_EQ(streamed.size(), lps.Size());
  for (rapidjson::SizeType i = 0; i < lps.Size(); ++i) {
    EXPECT_EQ(streamed[i], std::string(lps[i]["token"].GetString()) + " " +
                               std::to_string(lps[i]["logprob"].GetDouble()));
  }

  // Without the field there are none; out of range is a 400 naming it.
  const auto none = c.request("POST", "/ask", ask_body("Where is Rome?", R"("max_new_tokens":2)"));
  EXPECT_FALSE(parse_json(none.body).HasMember("logprobs"));
  expect_error(c.request("POST", "/ask", ask_body("x", "\"logprobs\":21")), 400, "limit_exceeded",
               "'logprobs'");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"logprobs\":-1")), 400, "invalid_field",
               "'logprobs'");
}

TEST_F(ServerHttp, StopStringsAndSeededSampling) {
  HttpClient c = server_->client();
  const auto sampled = [&](uint64_t seed) {
    const auto r = c.request("POST", "/ask",
                             ask_body("Where is Lisbon?",
                                      "\"temperature\":1.0,\"top_p\":0.9,\"top_k\":50,"
                                      "\"max_new_tokens\":12,\"stop\":[],\"seed\":" +
                                          std::to_string(seed)));
    EXPECT_EQ(r.status, 200) << r.body;
    return std::string(parse_json(r.body)["answer"].GetString());
  };
  EXPECT_EQ(sampled(42), sampled(42));

  // Greedy text with no stop string, then again stopping at a piece of it.
  const auto full =
      c.request("POST", "/ask", ask_body("Where is Bern?", "\"max_new_tokens\":40,\"stop\":[]"));
  ASSERT_EQ(full.status, 200);
  const std::string answer = parse_json(full.body)["answer"].GetString();
  // An ASCII character at its first occurrence: sanitising invalid UTF-8 (U+FFFD) never creates
  // or moves ASCII, so the cut answer is the text before it.
  std::string stop;
  size_t at = std::string::npos;
  for (size_t i = 1; i < answer.size(); ++i) {
    if (std::isalnum(static_cast<unsigned char>(answer[i])) && answer.find(answer[i]) == i) {
      stop = answer.substr(i, 1);
      at = i;
      break;
    }
  }
  if (stop.empty()) GTEST_SKIP() << "no plain substring to stop at in: " << answer;
  const auto cut =
      c.request("POST", "/ask",
                ask_body("Where is Bern?", "\"max_new_tokens\":40,\"stop\":" + json_quote(stop)));
  ASSERT_EQ(cut.status, 200);
  const auto d = parse_json(cut.body);
  EXPECT_EQ(std::string(d["answer"].GetString()), trim(answer.substr(0, at))) << stop;
  EXPECT_STREQ(d["finish_reason"].GetString(), "stop");
}

TEST_F(ServerHttp, KeepAliveAndPipelining) {
  HttpClient c = server_->client();
  const std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string out = c.raw(req + req + "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 1500ms);
  size_t n = 0;
  for (size_t p = 0; (p = out.find("HTTP/1.1 200 OK", p)) != std::string::npos; ++p) ++n;
  EXPECT_EQ(n, 3u) << out;
  EXPECT_NE(out.find("{\"status\":\"ready\"}"), std::string::npos);
  // Empty lines before a request line are skipped (RFC 9112 2.2), up to a header's worth.
  const std::string lines = c.raw("\r\n" + req + "\r\n\n\r\n" + req, 1500ms);
  n = 0;
  for (size_t p = 0; (p = lines.find("HTTP/1.1 200 OK", p)) != std::string::npos; ++p) ++n;
  EXPECT_EQ(n, 2u) << lines;
  const std::string flood = c.raw(std::string(20000, '\n') + req, 3s);
  EXPECT_EQ(flood.rfind("HTTP/1.1 400", 0), 0u) << flood;
  // HTTP/1.0 without keep-alive: one answer, then the server closes.
  const auto t0 = SteadyClock::now();
  const std::string one = c.raw("GET /healthz HTTP/1.0\r\n\r\n", 5s);
  EXPECT_NE(one.find("HTTP/1.0 200 OK"), std::string::npos) << one;
  EXPECT_LT(SteadyClock::now() - t0, 2s);
}

// A response to HEAD has GET's header and no content, whatever its status: a client reads no
// body after it, so content would be taken for the start of the next response.
TEST_F(ServerHttp, HeadAnswersHaveNoContent) {
  HttpClient c = server_->client();
  const auto get = c.request("GET", "/healthz");
  auto r = c.request("HEAD", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-length"), get.header("content-length"));
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.body, "");
  r = c.request("HEAD", "/ask");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("allow"), "POST, OPTIONS");
  EXPECT_EQ(c.request("GET", "/readyz").status, 200);  // the connection is still in step
  // On the wire: each answer ends where its header does, so the pipelined GET's answer follows.
  const std::string req =
      "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
      "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string out =
      c.raw(req + "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5s);
  const size_t end1 = out.find("\r\n\r\n");
  ASSERT_NE(end1, std::string::npos) << out;
  EXPECT_EQ(out.compare(end1 + 4, 12, "HTTP/1.1 404"), 0) << out;
  const size_t end2 = out.find("\r\n\r\n", end1 + 4);
  ASSERT_NE(end2, std::string::npos) << out;
  EXPECT_EQ(out.compare(end2 + 4, 15, "HTTP/1.1 200 OK"), 0) << out;
  EXPECT_EQ(out.substr(out.size() - 15), "{\"status\":\"ok\"}") << out;
}

TEST_F(ServerHttp, RequestErrorsAreJsonWithTheRightStatus) {
  HttpClient c = server_->client();
  expect_error(c.request("POST", "/ask", std::string(5000, ' ')), 413, "body_too_large", "4096");
  // A chunked body has no Content-Length: the limit is found while reading it.
  const std::string chunk(3000, 'a');
  char size[16];
  std::snprintf(size, sizeof size, "%zx", chunk.size());
  const std::string chunked = c.raw(
      "POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + std::string(size) +
          "\r\n" + chunk + "\r\n" + size + "\r\n" + chunk + "\r\n0\r\n\r\n",
      3s);
  EXPECT_EQ(chunked.rfind("HTTP/1.1 413", 0), 0u) << chunked;

  expect_error(c.request("POST", "/ask", "{\"question\": \"x\""), 400, "invalid_json", "byte");
  expect_error(c.request("POST", "/ask", ""), 400, "invalid_json");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"k\":\"3\"")), 400, "invalid_field",
               "'k'");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"stream\":1")), 400, "invalid_field",
               "'stream'");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"bogus\":true")), 400, "unknown_field",
               "'bogus'");
  expect_error(c.request("POST", "/ask", "{\"k\":1}"), 400, "missing_field", "'question'");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"k\":9")), 400, "limit_exceeded", "'k'");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"max_new_tokens\":2001")), 400,
               "limit_exceeded", "'max_new_tokens'");
  expect_error(c.request("POST", "/ask", ask_body(std::string(201, 'q'))), 400, "limit_exceeded",
               "'question'");
  expect_error(
      c.request("POST", "/ask",
                "{\"question\":\"x\",\"a\":" + std::string(100, '[') + std::string(100, ']') + "}"),
      400, "invalid_json", "nests");
  expect_error(c.request("POST", "/ask", "{\"question\":\"\xc0\xaf\"}"), 400, "invalid_json");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"passages\":[{\"title\":\"t\"}]")), 400,
               "missing_field", "'passages[0].text'");
  // Values the float sampler would round to 0 are refused, not silently changed.
  expect_error(c.request("POST", "/ask", ask_body("x", "\"top_p\":1e-300")), 400, "invalid_field",
               "'top_p'");
  expect_error(c.request("POST", "/ask", ask_body("x", "\"temperature\":1e-300")), 400,
               "invalid_field", "'temperature'");

  expect_error(c.request("GET", "/healthz", "", {{"X-Big", std::string(20000, 'b')}}), 431,
               "header_too_large");
  // An HTTP/1.1 request names its host exactly once (RFC 9112 3.2); HTTP/1.0 needs none.
  for (const std::string& hosts : {std::string(), std::string("Host: a\r\nHost: b\r\n")}) {
    const std::string out = c.raw("GET /healthz HTTP/1.1\r\n" + hosts + "\r\n", 3s);
    EXPECT_EQ(out.rfind("HTTP/1.1 400", 0), 0u) << out;
    EXPECT_NE(out.find("exactly one Host header"), std::string::npos) << out;
  }
  EXPECT_EQ(c.raw("GET /healthz HTTP/1.0\r\n\r\n", 3s).rfind("HTTP/1.0 200", 0), 0u);
  const std::string absolute =
      c.raw("GET http://x:1/healthz?a=b HTTP/1.1\r\nHost: x:1\r\n\r\n", 1s);
  EXPECT_EQ(absolute.rfind("HTTP/1.1 200", 0), 0u) << absolute;
  const std::string garbage = c.raw("BLAH\r\n\r\n", 2s);
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  EXPECT_NE(garbage.find("\"bad_request\""), std::string::npos) << garbage;
  // The server is still healthy after all that.
  EXPECT_EQ(c.request("GET", "/healthz").status, 200);
}

// Bytes 0x80-0xFF in the target reach "no route for ...": the error body must stay valid UTF-8.
TEST_F(ServerHttp, ErrorBodiesAreValidUtf8) {
  HttpClient c = server_->client();
  const std::string out =
      c.raw("GET /caf\xe9\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3s);
  ASSERT_EQ(out.rfind("HTTP/1.1 404", 0), 0u) << out;
  const std::string body = out.substr(out.find("\r\n\r\n") + 4);
  rapidjson::Document d;
  d.Parse<rapidjson::kParseValidateEncodingFlag>(body.c_str(), body.size());
  ASSERT_FALSE(d.HasParseError()) << "not valid UTF-8 JSON: " << body;
  EXPECT_NE(std::string(d["error"]["message"].GetString()).find("no route for /caf"),
            std::string::npos);
}

// Trailers of a chunked body are buffered whole by the parser: they are bounded like a header
// (431), and a trailer field too large for Beast's field storage is a 431 too, not a throw that
// drops the connection.
TEST_F(ServerHttp, ChunkedTrailersAreBoundedLikeHeaders) {
  HttpClient c = server_->client();
  const std::string body = ask_body("Where is Rome?", "\"max_new_tokens\":1");
  char size[16];
  std::snprintf(size, sizeof size, "%zx", body.size());
  const std::string head = "POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                           std::string(size) + "\r\n" + body + "\r\n0\r\n";
  // A small trailer is fine.
  std::string out = c.raw(head + "X-Trailer: ok\r\n\r\n", 3s);
  EXPECT_EQ(out.rfind("HTTP/1.1 200", 0), 0u) << out.substr(0, 200);
  for (size_t n : {30000u, 70000u}) {
    out = c.raw(head + "X-Trailer: " + std::string(n, 't') + "\r\n\r\n", 5s);
    EXPECT_EQ(out.rfind("HTTP/1.1 431", 0), 0u) << n << ": " << out.substr(0, 200);
    EXPECT_NE(out.find("\"header_too_large\""), std::string::npos) << out.substr(0, 300);
  }
  EXPECT_EQ(c.request("GET", "/healthz").status, 200);
}

// A client that pipelines a byte after its request and then hangs up is still noticed: the
// disconnect watch keeps reading after the byte.
TEST_F(ServerHttp, DisconnectAfterAPipelinedByteCancelsGeneration) {
  const double c0 = metric_of(*server_, "cepe_cancelled_total");
  {
    HttpClient c = server_->client();
    const std::string body = ask_body("Where is the Tagus?", R"("max_new_tokens":2000,"stop":[])");
    c.raw("POST /ask HTTP/1.1\r\nHost: x\r\nX-Request-Id: cancel-pipelined\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\n\r\n" + body + "G",
          300ms);
  }
  EXPECT_EQ(wait_metric(*server_, "cepe_cancelled_total", [&](double v) { return v >= c0 + 1; }),
            c0 + 1);
  const std::string line = log_line_of(*server_, "cancel-pipelined");
  EXPECT_NE(line.find("\"status\":499"), std::string::npos) << line;
  EXPECT_NE(line.find("\"finish_reason\":\"cancelled\""), std::string::npos) << line;
}

TEST_F(ServerHttp, CorsOrigins) {
  HttpClient c = server_->client();
  auto r = c.request("GET", "/healthz", "", {{"Origin", "http://allowed.example"}});
  EXPECT_EQ(r.header("access-control-allow-origin"), "http://allowed.example");
  EXPECT_EQ(r.header("vary"), "Origin");
  r = c.request("GET", "/healthz", "", {{"Origin", "http://evil.example"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("access-control-allow-origin"), "");
  r = c.request("OPTIONS", "/ask", "",
                {{"Origin", "http://allowed.example"}, {"Access-Control-Request-Method", "POST"}});
  EXPECT_EQ(r.status, 204);
  EXPECT_NE(r.header("access-control-allow-methods").find("POST"), std::string::npos);
  EXPECT_NE(r.header("access-control-allow-headers").find("Authorization"), std::string::npos);
  expect_error(c.request("OPTIONS", "/ask", "", {{"Origin", "http://evil.example"}}), 403,
               "origin_not_allowed", "evil");
}

TEST_F(ServerHttp, SlowClientsAreDisconnected) {
  HttpClient c = server_->client();
  // Half a header: dropped after --header-timeout-ms (1 s), without an answer.
  auto t0 = SteadyClock::now();
  std::string out = c.raw("POST /ask HTTP/1.1\r\nHost: x\r\n", 6s);
  auto took = SteadyClock::now() - t0;
  EXPECT_EQ(out, "");
  EXPECT_GT(took, 800ms);
  EXPECT_LT(took, 4s);
  // A body that never completes: dropped after --body-timeout-ms (1 s), logged as 408.
  t0 = SteadyClock::now();
  out = c.raw(
      "POST /ask HTTP/1.1\r\nHost: x\r\nX-Request-Id: slow-body\r\nContent-Length: 100\r\n\r\n{\"q",
      6s);
  took = SteadyClock::now() - t0;
  EXPECT_LT(took, 4s);
  EXPECT_GT(took, 800ms);
  const std::string line = log_line_of(*server_, "slow-body");
  EXPECT_NE(line.find("\"status\":408"), std::string::npos) << line;
}

TEST_F(ServerHttp, ClientDisconnectCancelsGeneration) {
  const double c0 = metric_of(*server_, "cepe_cancelled_total");
  const double tok0 = metric_of(*server_, "cepe_generated_tokens_total");
  const std::string long_body = R"("max_new_tokens":2000,"stop":[])";
  {
    // Streaming: read the first token, then hang up.
    HttpClient c = server_->client();
    const auto head =
        c.start_stream("/ask", ask_body("Where is the Liffey?", long_body + ",\"stream\":true"),
                       {{"X-Request-Id", "cancel-stream"}});
    ASSERT_EQ(head.status, 200);
    for (;;) {
      auto ev = c.next_event();
      ASSERT_TRUE(ev.has_value());
      if (ev->event == "token") break;
    }
    c.close();
  }
  EXPECT_EQ(wait_metric(*server_, "cepe_cancelled_total", [&](double v) { return v >= c0 + 1; }),
            c0 + 1);
  {
    // Plain: send the request, wait a little, hang up before the answer.
    HttpClient c = server_->client();
    const std::string body = ask_body("Where is the Aare?", long_body);
    c.raw("POST /ask HTTP/1.1\r\nHost: x\r\nX-Request-Id: cancel-plain\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\n\r\n" + body,
          300ms);
  }
  EXPECT_EQ(wait_metric(*server_, "cepe_cancelled_total", [&](double v) { return v >= c0 + 2; }),
            c0 + 2);
  // Both left the batch (their caches are freed with their sequences) long before 2000 tokens.
  EXPECT_EQ(wait_metric(*server_, "cepe_batch_size", [](double v) { return v == 0; }), 0);
  // The /metrics request itself stays; the connections of the cancelled requests are accounted
  // for when their IO thread sees the hang-up, which may come just after the batch empties.
  EXPECT_EQ(wait_metric(*server_, "cepe_in_flight_requests", [](double v) { return v == 1; }), 1);
  EXPECT_LT(metric_of(*server_, "cepe_generated_tokens_total") - tok0, 2 * 2000);
  for (const char* id : {"cancel-stream", "cancel-plain"}) {
    const std::string line = log_line_of(*server_, id);
    EXPECT_NE(line.find("\"status\":499"), std::string::npos) << line;
    EXPECT_NE(line.find("\"finish_reason\":\"cancelled\""), std::string::npos) << line;
  }
}

TEST_F(ServerHttp, ConcurrentRequestsShareBatchesWithIdenticalAnswers) {
  HttpClient solo = server_->client();
  const std::string body =
      ask_body("Which river flows through Prague?", R"("max_new_tokens":40,"stop":[],"k":2)");
  const auto alone = solo.request("POST", "/ask", body);
  ASSERT_EQ(alone.status, 200);
  const std::string expected = parse_json(alone.body)["answer"].GetString();

  const double steps0 = metric_of(*server_, "cepe_engine_steps_total");
  const double seqs0 = metric_of(*server_, "cepe_engine_stepped_sequences_total");
  constexpr int kClients = 8;
  std::vector<HttpResponse> results(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      HttpClient c = server_->client();
      results[i] = c.request("POST", "/ask", body);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(std::string(parse_json(r.body)["answer"].GetString()), expected);
  }
  const double steps = metric_of(*server_, "cepe_engine_steps_total") - steps0;
  const double seqs = metric_of(*server_, "cepe_engine_stepped_sequences_total") - seqs0;
  EXPECT_GT(seqs / steps, 2.0) << "mean batch " << seqs / steps << " over " << steps << " steps";
}

TEST_F(ServerHttp, FuzzedRequestsOverHttpAre4xx) {
  std::mt19937_64 rng(7);
  const std::string valid = ask_body("Where is Oslo?", R"("k":2,"max_new_tokens":2,"stop":["x"])");
  HttpClient c = server_->client(10s);
  int ok = 0;
  for (int i = 0; i < 150; ++i) {
    std::string body = valid;
    for (int e = 0; e < 1 + static_cast<int>(rng() % 3); ++e) {
      const size_t at = rng() % body.size();
      switch (rng() % 4) {
        case 0:
          body[at] = static_cast<char>(rng());
          break;
        case 1:
          body.erase(at, 1 + rng() % 3);
          break;
        case 2:
          body.insert(at, std::string(1 + rng() % 200, "[{\"\xff"[rng() % 4]));
          break;
        default:
          body.insert(at, "1e999");
          break;
      }
    }
    const auto r = c.request("POST", "/ask", body);
    if (r.status == 200) {
      ++ok;
      continue;
    }
    EXPECT_GE(r.status, 400) << body;
    EXPECT_LT(r.status, 500) << body << " -> " << r.body;
    EXPECT_NE(r.body.find("\"error\""), std::string::npos);
  }
  // Raw garbage on fresh connections: a 4xx or nothing, never a crash.
  for (int i = 0; i < 20; ++i) {
    std::string bytes(1 + rng() % 300, '\0');
    for (char& b : bytes) b = static_cast<char>(rng());
    if (i % 2) bytes = "POST /ask HTTP/1.1\r\n" + bytes + "\r\n\r\n";
    const std::string out = c.raw(bytes, 300ms);
    if (!out.empty()) {
      EXPECT_EQ(out.rfind("HTTP/1.1 4", 0), 0u) << out;
    }
  }
  EXPECT_EQ(c.request("GET", "/healthz").status, 200);
  EXPECT_LT(ok, 150);
}

TEST_F(ServerHttp, MetricsExposeRequestsLatencyQueueAndTokens) {
  HttpClient c = server_->client();
  ASSERT_EQ(c.request("POST", "/ask", ask_body("Where is Athens?", "\"max_new_tokens\":3")).status,
            200);
  const auto r = c.request("GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type").rfind("text/plain", 0), 0u);
  const std::string& m = r.body;
  EXPECT_GE(metric(m, "cepe_http_requests_total{route=\"/ask\",status=\"200\"}"), 1);
  EXPECT_GE(metric(m, "cepe_http_requests_total{route=\"/ask\",status=\"400\"}"), 1);
  EXPECT_GE(metric(m, "cepe_http_requests_total{route=\"/healthz\",status=\"200\"}"), 1);
  EXPECT_GE(metric(m, "cepe_http_request_duration_seconds_count{route=\"/ask\"}"), 1);
  EXPECT_GE(metric(m, "cepe_http_request_duration_seconds_bucket{route=\"/ask\",le=\"+Inf\"}"), 1);
  EXPECT_EQ(metric(m, "cepe_queue_depth"), 0);
  EXPECT_EQ(metric(m, "cepe_batch_size"), 0);
  EXPECT_EQ(metric(m, "cepe_sequence_cache_bytes"), 0);  // nothing running, nothing held
  EXPECT_GT(metric(m, "cepe_generated_tokens_total"), 0);
  EXPECT_GT(metric(m, "cepe_encoder_tokens_total"), 0);
  EXPECT_GT(metric(m, "cepe_retrieval_duration_seconds_count"), 0);
  EXPECT_GT(metric(m, "cepe_engine_step_duration_seconds_count"), 0);
  EXPECT_EQ(metric(m, "cepe_ready"), 1);
  EXPECT_NE(m.find("# TYPE cepe_http_request_duration_seconds histogram"), std::string::npos);
  // The process figures are the server's own: what procfs says of its pid, read just after.
  const ProcessStats p = process_stats(server_->pid());
  EXPECT_EQ(metric(m, "process_start_time_seconds"), p.start_time_unix);
  EXPECT_NEAR(metric(m, "process_resident_memory_bytes"), static_cast<double>(p.resident_bytes),
              16 << 20);
  EXPECT_GE(metric(m, "cepe_peak_resident_memory_bytes"),
            metric(m, "process_resident_memory_bytes"));
  EXPECT_GT(metric(m, "process_cpu_seconds_total"), 0);
  EXPECT_LE(metric(m, "process_cpu_seconds_total"), p.cpu_seconds);
  EXPECT_GE(metric(m, "process_open_fds"), 4);  // stdio and the listening socket at least
  EXPECT_EQ(metric(m, "process_max_fds"), static_cast<double>(p.max_fds));
  EXPECT_GT(metric(m, "process_virtual_memory_bytes"), metric(m, "process_resident_memory_bytes"));
}

// ---- servers with other settings ----

TEST(ServerLimits, ApiKeys) {
  REQUIRE_TEST_DATA();
  ServerProcess s({"--api-key", "s3cret", "--api-key", "other-key"});
  HttpClient c = s.client();
  const std::string body = ask_body("Where is Dublin?", "\"max_new_tokens\":2");
  auto r = c.request("POST", "/ask", body);
  expect_error(r, 401, "unauthorized", "API key");
  EXPECT_EQ(r.header("www-authenticate"), "Bearer");
  expect_error(c.request("POST", "/ask", body, {{"Authorization", "Bearer wrong"}}), 401,
               "unauthorized");
  expect_error(c.request("POST", "/ask", body, {{"Authorization", "Bearer s3cre"}}), 401,
               "unauthorized");
  EXPECT_EQ(c.request("POST", "/ask", body, {{"Authorization", "Bearer s3cret"}}).status, 200);
  EXPECT_EQ(c.request("POST", "/ask", body, {{"X-API-Key", "other-key"}}).status, 200);
  expect_error(c.request("GET", "/v1/info"), 401, "unauthorized");
  EXPECT_EQ(c.request("GET", "/healthz").status, 200);  // probes need no key
  EXPECT_EQ(c.request("GET", "/readyz").status, 200);
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

// SIGHUP re-reads api_key_file: a key added there works and a key removed stops working, without
// a restart; the keys given as flags stay; a file left without keys keeps the keys in use.
TEST(ServerLimits, SighupReloadsTheApiKeyFile) {
  REQUIRE_TEST_DATA();
  const fs::path dir = test::temp_dir("server-keys");
  const fs::path file = dir / "keys.txt";
  const auto write_keys = [&](const std::string& text) {  // replaced whole, as an operator would
    std::ofstream(dir / "keys.tmp") << text;
    fs::rename(dir / "keys.tmp", file);
  };
  write_keys("# team A\nkey-a\n");
  ServerProcess s({"--api-key", "flag-key", "--api-key-file", file.string()});
  HttpClient c = s.client();
  const auto status = [&](const std::string& key) {
    return c.request("GET", "/v1/info", "", {{"X-API-Key", key}}).status;
  };
  const auto wait_for = [&](const std::string& event, size_t n) {
    return wait_for_event(s, event, n);
  };
  EXPECT_EQ(status("key-a"), 200);
  EXPECT_EQ(status("key-b"), 401);

  write_keys("key-b\n# key-a revoked\n");
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("keys_reloaded", 1)) << s.log();
  EXPECT_NE(s.log().find("\"keys\":2"), std::string::npos) << s.log();  // flag-key and key-b
  EXPECT_EQ(status("key-a"), 401);
  EXPECT_EQ(status("key-b"), 200);
  EXPECT_EQ(status("flag-key"), 200);

  write_keys("# every key revoked\n");
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("keys_reload_failed", 1)) << s.log();
  EXPECT_NE(s.log().find("holds no keys"), std::string::npos) << s.log();
  EXPECT_EQ(status("key-b"), 200);  // still the last good file's keys
  EXPECT_EQ(status("key-a"), 401);
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

// SIGHUP reopens the index when its manifest changed: after `cepe index add`, new requests find
// the new passages and /v1/info counts them (after `cepe index remove`, no longer the removed); an
// unchanged manifest is left alone; an index that no longer opens keeps the one being served.
TEST(ServerLimits, SighupReopensAGrownIndex) {
  REQUIRE_TEST_DATA();
  const fs::path dir = test::temp_dir("server-index-reload");
  const fs::path index = dir / "index";
  fs::copy(test_data().index, index, fs::copy_options::recursive);
  ServerProcess s({"--index", index.string()}, /*with_index=*/false);
  HttpClient c = s.client();
  const auto wait_for = [&](const std::string& event, size_t n) {
    return wait_for_event(s, event, n);
  };
  const auto passages = [&] {
    return parse_json(c.request("GET", "/v1/info").body)["index"]["passages"].GetInt();
  };
  const auto top_id = [&] {
    const auto r =
        c.request("POST", "/ask",
                  ask_body("Which river flows through Reykjavik?", R"("k":1,"max_new_tokens":1)"));
    EXPECT_EQ(r.status, 200) << r.body;
    return std::string(parse_json(r.body)["passages"][0]["id"].GetString());
  };
  EXPECT_EQ(passages(), 48);
  EXPECT_NE(top_id(), "is-0");

  std::ofstream(dir / "more.jsonl")
      << "{\"id\":\"is-0\",\"title\":\"Iceland\",\"text\":\"Reykjavik is the capital of "
         "Iceland. The river Ellidaar flows through Reykjavik.\"}\n"
      << "{\"id\":\"is-1\",\"title\":\"Iceland\",\"text\":\"Iceland has glaciers.\"}\n";
  std::string out;
  ASSERT_EQ(test::run_command(test::cepe_binary().string() + " index add --index " +
                                  index.string() + " --input " + (dir / "more.jsonl").string(),
                              &out),
            0)
      << out;
  EXPECT_EQ(passages(), 48) << "served until told";
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("index_reloaded", 1)) << s.log();
  EXPECT_NE(s.log().find("\"passages\":50"), std::string::npos) << s.log();
  EXPECT_EQ(passages(), 50);
  EXPECT_EQ(top_id(), "is-0");
  EXPECT_EQ(metric_of(s, "cepe_index_passages"), 50);
  EXPECT_EQ(metric_of(s, "cepe_index_reloads_total"), 1);

  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("index_unchanged", 1)) << s.log();
  EXPECT_EQ(metric_of(s, "cepe_index_reloads_total"), 1);

  // The grown index's encoder states, written while it is served, are taken up on the next
  // SIGHUP: the passages are then read from the store instead of being encoded.
  ASSERT_EQ(test::run_command(test::cepe_binary().string() + " index encode --index " +
                                  index.string() + " --model " + test_data().model.string(),
                              &out),
            0)
      << out;
  EXPECT_EQ(metric_of(s, "cepe_encoder_store_hits_total"), 0);
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("encoder_store_reloaded", 1)) << s.log();
  const std::string log = s.log();
  const std::string line = log.substr(log.find("\"event\":\"encoder_store_reloaded\""));
  EXPECT_NE(line.substr(0, line.find('\n')).find("\"passages\":50"), std::string::npos) << log;
  EXPECT_EQ(top_id(), "is-0");
  EXPECT_GE(metric_of(s, "cepe_encoder_store_hits_total"), 1);
  EXPECT_TRUE(parse_json(c.request("GET", "/v1/info").body)["model"]["encoder_store"].IsObject())
      << c.request("GET", "/v1/info").body;
  // Grown again: the store no longer covers the index, so encode writes it again (it would say
  // "is complete" otherwise), and one SIGHUP brings both in.
  std::ofstream(dir / "more2.jsonl")
      << "{\"id\":\"is-2\",\"title\":\"Iceland\",\"text\":\"Iceland has volcanoes.\"}\n";
  ASSERT_EQ(test::run_command(test::cepe_binary().string() + " index add --index " +
                                  index.string() + " --input " + (dir / "more2.jsonl").string() +
                                  " && " + test::cepe_binary().string() + " index encode --index " +
                                  index.string() + " --model " + test_data().model.string(),
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("holds 50 of the index's 51 passages (the index grew)"), std::string::npos)
      << out;
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("encoder_store_reloaded", 2)) << s.log();
  EXPECT_EQ(passages(), 51);
  EXPECT_EQ(
      parse_json(c.request("GET", "/v1/info").body)["model"]["encoder_store"]["passages"].GetInt(),
      51);
  // A store written again under the same name, at the same size (here: --overwrite, the same
  // bytes), is another file: taken up on the next SIGHUP.
  ASSERT_EQ(test::run_command(test::cepe_binary().string() + " index encode --overwrite --index " +
                                  index.string() + " --model " + test_data().model.string(),
                              &out),
            0)
      << out;
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("encoder_store_reloaded", 3)) << s.log();

  // A passage removed (cepe index remove) is no longer retrieved after the next SIGHUP; the
  // store keeps serving the others.
  ASSERT_EQ(
      test::run_command(
          test::cepe_binary().string() + " index remove --index " + index.string() + " is-0", &out),
      0)
      << out;
  EXPECT_EQ(top_id(), "is-0") << "served until told";
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("index_reloaded", 3)) << s.log();
  EXPECT_EQ(passages(), 50);
  EXPECT_NE(top_id(), "is-0");

  // A manifest that fails its checksum: the reload is refused and the index in use stays.
  std::string manifest = test::read_file(index / "manifest.json");
  const size_t at = manifest.find("\"bm25\"");
  ASSERT_NE(at, std::string::npos);
  manifest.replace(at, 6, "\"BM25\"");
  std::ofstream(index / "manifest.json", std::ios::trunc) << manifest;
  ASSERT_EQ(kill(s.pid(), SIGHUP), 0);
  ASSERT_TRUE(wait_for("index_reload_failed", 1)) << s.log();
  EXPECT_EQ(passages(), 50);
  EXPECT_NE(top_id(), "is-0");
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

TEST(ServerLimits, QueueFullIs429WithRetryAfter) {
  REQUIRE_TEST_DATA();
  ServerProcess s(
      {"--max-batch", "1", "--max-queue", "1", "--retry-after-s", "2", "--max-new-tokens", "1000"});
  constexpr int kClients = 10;
  std::vector<HttpResponse> results(kClients);
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      HttpClient c = s.client();
      c.request("GET", "/healthz");  // connect first, so every request is sent at once
      ready.fetch_add(1);
      while (ready.load() < kClients) std::this_thread::yield();
      results[i] = c.request("POST", "/ask",
                             ask_body("Where is Warsaw?", R"("max_new_tokens":300,"stop":[])"));
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, rejected = 0;
  for (const auto& r : results) {
    if (r.status == 200) {
      ++ok;
    } else {
      expect_error(r, 429, "queue_full", "queue");
      EXPECT_EQ(r.header("retry-after"), "2");
      ++rejected;
    }
  }
  EXPECT_GE(ok, 1);  // at least the first; the next only if it was queued after it started
  EXPECT_GE(rejected, 1);
  EXPECT_EQ(ok + rejected, kClients);
  EXPECT_EQ(metric_of(s, "cepe_rejected_total"), rejected);
  EXPECT_EQ(metric_of(s, "cepe_http_requests_total{route=\"/ask\",status=\"429\"}"), rejected);
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

TEST(ServerLimits, BodiesThatArrivePastTheDeadlineAre504) {
  REQUIRE_TEST_DATA();
  // One queue place: a late /ask that kept the place it reserved would turn the next away (429).
  ServerProcess s({"--request-timeout-ms", "1500", "--max-queue", "1", "--max-batch", "1"});
  HttpClient c = s.client();
  const std::string body = ask_body("Where is Rome?", "\"k\":2");
  // The deadline counts from the header: a body sent 2 s after it arrives past the deadline.
  for (const std::string route : {"/search", "/ask"}) {
    const std::string head = "POST " + route +
                             " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             "Content-Type: application/json\r\nContent-Length: " +
                             std::to_string(body.size()) + "\r\n\r\n";
    const std::string out = c.raw({head, body}, 2000ms, 10s);
    EXPECT_EQ(out.rfind("HTTP/1.1 504", 0), 0u) << route << ": " << out;
    EXPECT_NE(out.find("\"deadline_exceeded\""), std::string::npos) << out;
    EXPECT_NE(out.find(route == "/search" ? "the search waited longer than 1500 ms"
                                          : "the request took longer than 1500 ms"),
              std::string::npos)
        << out;
  }
  EXPECT_EQ(metric_of(s, "cepe_http_requests_total{route=\"/search\",status=\"504\"}"), 1);
  EXPECT_EQ(metric_of(s, "cepe_deadline_exceeded_total"), 1);
  // Sent at once, both are answered, and the queue place the late /ask reserved is free again.
  EXPECT_EQ(c.request("POST", "/search", body).status, 200);
  const auto r = c.request("POST", "/ask", ask_body("Where is Rome?", "\"max_new_tokens\":2"));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

TEST(ServerLimits, DeadlineIs504AndStopsGeneration) {
  REQUIRE_TEST_DATA();
  ServerProcess s({"--request-timeout-ms", "400", "--max-new-tokens", "20000"});
  HttpClient c = s.client();
  const std::string body = ask_body("Where is Madrid?", R"("max_new_tokens":20000,"stop":[])");
  const auto t0 = SteadyClock::now();
  const auto r = c.request("POST", "/ask", body, {{"X-Request-Id", "late-1"}});
  EXPECT_LT(SteadyClock::now() - t0, 3s);
  expect_error(r, 504, "deadline_exceeded", "400 ms");
  EXPECT_EQ(metric_of(s, "cepe_deadline_exceeded_total"), 1);
  EXPECT_EQ(metric_of(s, "cepe_batch_size"), 0);
  const std::string line = log_line_of(s, "late-1");
  EXPECT_NE(line.find("\"status\":504"), std::string::npos) << line;
  EXPECT_NE(line.find("\"finish_reason\":\"deadline\""), std::string::npos) << line;
  EXPECT_EQ(line.find("\"completion_tokens\":20000"), std::string::npos) << line;

  // Streaming: the stream has begun, so the deadline arrives as an error event.
  const auto head = c.start_stream("/ask", body.substr(0, body.size() - 1) + ",\"stream\":true}");
  ASSERT_EQ(head.status, 200);
  std::vector<SseEvent> events;
  while (auto ev = c.next_event()) events.push_back(*ev);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.front().event, "passages");
  EXPECT_EQ(events.back().event, "error");
  EXPECT_NE(events.back().data.find("deadline_exceeded"), std::string::npos);
  EXPECT_EQ(metric_of(s, "cepe_deadline_exceeded_total"), 2);
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

TEST(ServerLimits, WithoutIndexRequestsMustBringPassages) {
  REQUIRE_TEST_DATA();
  ServerProcess s({}, /*with_index=*/false);
  HttpClient c = s.client();
  expect_error(c.request("POST", "/ask", ask_body("Where is Rome?")), 400, "missing_field",
               "passages");
  expect_error(c.request("POST", "/search", ask_body("Where is Rome?")), 400, "no_index",
               "no index");
  const auto r = c.request(
      "POST", "/ask",
      ask_body("Where is Rome?", R"("passages":[{"title":"Italy","text":"Rome is in Italy."}])"));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(parse_json(c.request("GET", "/v1/info").body)["index"].IsNull());
  EXPECT_EQ(s.stop(SIGINT, 10s), 0);
}

TEST(ServerLimits, PerClientConnectionLimit) {
  REQUIRE_TEST_DATA();
  ServerProcess s({"--max-connections-per-client", "3"});
  std::vector<std::unique_ptr<HttpClient>> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(std::make_unique<HttpClient>("127.0.0.1", s.port(), 5s));
    ASSERT_EQ(idle.back()->request("GET", "/healthz").status, 200);  // kept alive, then idle
  }
  // A fourth connection from the same address is closed as it is accepted.
  HttpClient extra = s.client(5s);
  int status = -1;
  try {
    status = extra.request("GET", "/healthz").status;
  } catch (const std::exception&) {
    status = 0;
  }
  EXPECT_EQ(status, 0);
  EXPECT_GE(metric(idle[0]->request("GET", "/metrics").body, "cepe_connections_refused_total"), 1);
  // Once one of them leaves, a new one gets in.
  idle[1]->close();
  bool admitted = false;
  for (int i = 0; i < 100 && !admitted; ++i) {
    try {
      HttpClient again = s.client(5s);
      admitted = again.request("GET", "/healthz").status == 200;
    } catch (const std::exception&) {
    }
    if (!admitted) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(admitted);
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

// Decoder passages that do not fit the prompt cap are dropped once (each tokenised on its own, not
// the whole prompt again after every drop), and the answer lists only what reached the model.
TEST(ServerLimits, PromptFittingIsLinearAndListsOnlyUsedPassages) {
  REQUIRE_TEST_DATA();
  ServerProcess s({"--max-prompt-tokens", "120", "--max-k", "20", "--max-body-bytes", "4000000"});
  HttpClient c = s.client();
  auto passages_json = [](int n, size_t chars) {
    std::string text;
    while (text.size() < chars) text += "Rome is the capital of Italy and the Tiber flows there. ";
    std::string out = "[";
    for (int i = 0; i < n; ++i)
      out += std::string(i ? "," : "") + "{\"id\":\"d" + std::to_string(i) +
             "\",\"title\":\"Italy\",\"text\":\"" + text + "\"}";
    return out + "]";
  };
  // Short passages: the first ones fit, the rest are dropped and not reported.
  auto r = c.request(
      "POST", "/ask",
      ask_body("Where is Rome?", "\"max_new_tokens\":1,\"decoder_passages\":6," +
                                     std::string("\"passages\":") + passages_json(6, 120)));
  ASSERT_EQ(r.status, 200) << r.body;
  auto d = parse_json(r.body);
  EXPECT_LE(d["usage"]["prompt_tokens"].GetInt(), 120);
  const auto& listed = d["passages"];
  EXPECT_GE(listed.Size(), 1u) << r.body;
  EXPECT_LT(listed.Size(), 6u) << r.body;
  for (rapidjson::SizeType i = 0; i < listed.Size(); ++i)
    EXPECT_EQ(std::string(listed[i]["id"].GetString()), "d" + std::to_string(i));
  // Mixed: decoder passages that do not fit are dropped, encoder passages stay.
  r = c.request(
      "POST", "/ask",
      ask_body("Where is Rome?", "\"max_new_tokens\":1,\"decoder_passages\":4," +
                                     std::string("\"passages\":") + passages_json(6, 120)));
  ASSERT_EQ(r.status, 200) << r.body;
  d = parse_json(r.body);
  EXPECT_EQ(std::string(d["passages"][d["passages"].Size() - 1]["id"].GetString()), "d5");
  EXPECT_LT(d["passages"].Size(), 6u);

  // Large passages: 20 of them cost about what one costs (the old loop re-tokenised the whole
  // prompt after each drop: 20 passages cost ~200 passage tokenisations, one cost ~2).
  auto timed = [&](int n) {
    const std::string body = ask_body(
        "Where is Rome?", "\"max_new_tokens\":1,\"decoder_passages\":" + std::to_string(n) +
                              ",\"passages\":" + passages_json(n, 40000));
    double best = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = SteadyClock::now();
      const auto res = c.request("POST", "/ask", body);
      EXPECT_EQ(res.status, 200) << res.body.substr(0, 300);
      best = std::min(best, std::chrono::duration<double>(SteadyClock::now() - t0).count());
    }
    return best;
  };
  const double one = timed(1), twenty = timed(20);
  // Beyond the fitting, 20 passages add only parsing 0.8 MB of JSON; a factor of 6 leaves room for
  // a busy machine while the quadratic loop was ~100x.
  EXPECT_LT(twenty, 6 * one + 0.05)
      << "1 passage: " << one << " s, 20 passages: " << twenty << " s";
  EXPECT_EQ(s.stop(SIGTERM, 10s), 0);
}

// ---- shutdown ----

TEST(ServerShutdown, SigtermFinishesEveryRequestInFlight) {
  REQUIRE_TEST_DATA();
  ServerProcess s({"--shutdown-grace-ms", "30000", "--max-new-tokens", "5000"});
  constexpr int kPlain = 3, kStream = 3;
  constexpr int kTokens = 500;
  const std::string body = ask_body(
      "Where is Berlin?", "\"max_new_tokens\":" + std::to_string(kTokens) + ",\"stop\":[]");
  std::vector<HttpResponse> plain(kPlain);
  std::vector<std::vector<SseEvent>> streams(kStream);
  std::vector<std::thread> threads;
  for (int i = 0; i < kPlain; ++i)
    threads.emplace_back([&, i] {
      HttpClient c = s.client();
      plain[i] = c.request("POST", "/ask", body);
    });
  for (int i = 0; i < kStream; ++i)
    threads.emplace_back([&, i] {
      HttpClient c = s.client();
      if (c.start_stream("/ask", body.substr(0, body.size() - 1) + ",\"stream\":true}").status !=
          200)
        return;
      while (auto ev = c.next_event()) streams[i].push_back(*ev);
    });
  // Signal once all six are generating.
  EXPECT_EQ(wait_metric(s, "cepe_batch_size", [](double v) { return v == kPlain + kStream; }),
            kPlain + kStream);
  kill(s.pid(), SIGTERM);
  // New connections are refused soon after.
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    refused = !can_connect(s.port());
    if (!refused) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(refused);
  for (auto& t : threads) t.join();
  EXPECT_EQ(s.wait_exit(30s), 0) << s.log();
  for (const auto& r : plain) {
    ASSERT_EQ(r.status, 200) << r.body;
    const auto d = parse_json(r.body);
    EXPECT_STRNE(d["finish_reason"].GetString(), "error");
    if (std::string(d["finish_reason"].GetString()) == "length") {
      EXPECT_EQ(d["usage"]["completion_tokens"].GetInt(), kTokens);
    }
  }
  for (const auto& evs : streams) {
    ASSERT_FALSE(evs.empty());
    EXPECT_EQ(evs.back().event, "done");
  }
  const std::string log = s.log();
  EXPECT_NE(log.find("\"event\":\"stopping\",\"signal\":\"SIGTERM\""), std::string::npos);
  EXPECT_NE(log.find("\"event\":\"shutdown\",\"clean\":true"), std::string::npos) << log;
}

TEST(ServerShutdown, GracePeriodEndsWhatIsLeft) {
  REQUIRE_TEST_DATA();
  ServerProcess s({"--shutdown-grace-ms", "300", "--max-new-tokens", "50000"});
  HttpResponse r;
  std::thread t([&] {
    HttpClient c = s.client();
    r = c.request("POST", "/ask", ask_body("Where is Rome?", R"("max_new_tokens":50000,"stop":[])"),
                  {{"X-Request-Id", "cut-running"}});
  });
  EXPECT_EQ(wait_metric(s, "cepe_batch_size", [](double v) { return v == 1; }), 1);
  // A running sequence holds its caches (self K/V and, absorbed, its encoder states).
  EXPECT_GT(wait_metric(s, "cepe_sequence_cache_bytes", [](double v) { return v > 0; }), 0);
  const auto t0 = SteadyClock::now();
  kill(s.pid(), SIGINT);
  t.join();
  EXPECT_EQ(s.wait_exit(10s), 0) << s.log();
  EXPECT_LT(SteadyClock::now() - t0, 5s);
  expect_error(r, 503, "shutting_down");
  EXPECT_NE(s.log().find("\"event\":\"shutdown\",\"clean\":false"), std::string::npos);
  // A running job the server stopped reads as a queued one does: cancelled, not an error.
  const std::string line = log_line_of(s, "cut-running");
  EXPECT_NE(line.find("\"finish_reason\":\"cancelled\""), std::string::npos) << line;
}

TEST(ServerShutdown, SigtermDuringModelLoadingIsHonoured) {
  REQUIRE_TEST_DATA();
  // A model whose config.json is a FIFO nobody writes: loading blocks in open() until killed.
  const fs::path model = test::temp_dir("server-slow-load") / "model";
  fs::create_directories(model);
  for (const auto& e : fs::directory_iterator(test_data().model))
    if (e.path().filename() != "config.json")
      fs::copy(e.path(), model / e.path().filename(), fs::copy_options::overwrite_existing);
  fs::remove(model / "config.json");
  ASSERT_EQ(mkfifo((model / "config.json").c_str(), 0644), 0);
  ServerProcess s({}, /*with_index=*/false, model, /*wait_ready=*/false);
  HttpClient c = s.client();
  EXPECT_EQ(c.request("GET", "/healthz").status, 200);
  expect_error(c.request("GET", "/readyz"), 503, "not_ready");
  const auto t0 = SteadyClock::now();
  EXPECT_EQ(s.stop(SIGTERM, 5s), 0) << s.log();
  EXPECT_LT(SteadyClock::now() - t0, 3s);
  EXPECT_NE(s.log().find("\"event\":\"stopping\",\"signal\":\"SIGTERM\",\"while\":\"loading\""),
            std::string::npos)
      << s.log();
}

// ---- CLI and in-process ----

TEST(ServerCli, ConfigFileFlagsAndStartupErrors) {
  REQUIRE_TEST_DATA();
  const std::string cepe = test::cepe_binary().string();
  const std::string conf = (test::source_dir() / "config" / "server.json").string();
  std::string out;
  ASSERT_EQ(test::run_command(cepe + " serve --config " + conf +
                                  " --model m --max-batch 3 --cors-origin http://a --print-config",
                              &out),
            0)
      << out;
  const auto d = parse_json(out);
  EXPECT_EQ(d["max_batch"].GetInt(), 3);
  EXPECT_EQ(d["max_queue"].GetInt(), 64);
  EXPECT_STREQ(d["cors_origins"][0].GetString(), "http://a");

  EXPECT_EQ(test::run_command(cepe + " serve --model /nonexistent/model --port 0", &out), 1);
  EXPECT_NE(out.find("'model'"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(cepe + " serve --model m --max-batch 0", &out), 1);
  EXPECT_NE(out.find("--max-batch"), std::string::npos) << out;
  const fs::path bad = test::temp_dir("server-cli") / "bad.json";
  std::ofstream(bad) << "{\"max_bach\": 4}";
  EXPECT_EQ(test::run_command(cepe + " serve --config " + bad.string() + " --model m", &out), 1);
  EXPECT_NE(out.find("'max_bach'"), std::string::npos) << out;
  // A key file with every key revoked must not start the server without authentication.
  const fs::path keys = test::temp_dir("server-cli") / "keys.txt";
  std::ofstream(keys) << "# all keys revoked\n\n   \n# old-key\n";
  EXPECT_EQ(test::run_command(cepe + " serve --model m --api-key-file " + keys.string(), &out), 1);
  EXPECT_NE(out.find("'api_key_file'"), std::string::npos) << out;
  EXPECT_NE(out.find("no keys"), std::string::npos) << out;
}

TEST(ServerInProcess, ReadyzIs503UntilTheModelIsAttached) {
  REQUIRE_TEST_DATA();
  config::ServerConfig cfg;
  cfg.port = 0;
  cfg.model = test_data().model.string();
  cfg.index = test_data().index.string();
  cfg.threads = 1;
  cfg.io_threads = 1;
  cfg.retrieval_threads = 1;
  Server srv(cfg, nullptr);
  srv.start();
  HttpClient c("127.0.0.1", srv.port());
  EXPECT_EQ(c.request("GET", "/healthz").status, 200);
  expect_error(c.request("GET", "/readyz"), 503, "not_ready", "not loaded");
  expect_error(c.request("POST", "/ask", ask_body("q")), 503, "not_ready");
  EXPECT_EQ(metric(c.request("GET", "/metrics").body, "cepe_ready"), 0);
  EXPECT_FALSE(srv.ready());

  // While the weights load, /readyz says how far it has come.
  uint64_t reported = 0;
  LoadedResources res = load_resources(cfg, [&](uint64_t done, uint64_t total) {
    srv.set_load_progress(done, total);
    reported = total;
  });
  ASSERT_GT(reported, 0u);
  srv.set_load_progress(3 << 20, 8 << 20);
  expect_error(c.request("GET", "/readyz"), 503, "not_ready", "(3 of 8 MB of weights read)");
  srv.attach(res.view());
  EXPECT_TRUE(srv.ready());
  EXPECT_EQ(c.request("GET", "/readyz").status, 200);
  EXPECT_EQ(c.request("POST", "/ask", ask_body("Where is Rome?", "\"max_new_tokens\":2")).status,
            200);
  EXPECT_TRUE(srv.shutdown(5s));
  EXPECT_FALSE(srv.ready());
}

}  // namespace
}  // namespace cepe::server
