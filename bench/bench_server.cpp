// Load test of a running `cepe serve`: N client threads, each on its own keep-alive connection,
// send POST /ask until a fixed number of requests has been answered (a 429 is retried after a short
// back-off), for a few rounds. It reports per round the answers, 429s (checked to be clean: JSON
// error "queue_full" with Retry-After) and other failures, throughput, latency percentiles and the
// server's resident memory (VmRSS from /proc/PID/status) after the round. Exit status 1 when a
// request failed in another way than a clean 429, when 429s came although --expect-no-429 was
// given, or when RSS grew across rounds by more than --max-rss-growth-kb.
//
//   bench_server --port 8080 --pid 1234 --concurrency 32 --requests 200 --rounds 3
//
// With --openai it drives POST /v1/chat/completions with "stream": true instead and reports what
// serving peers publish (vLLM's `bench serve`, GuideLLM): time to first token (TTFT), time per
// output token after the first (TPOT), inter-token latency (ITL, every gap between two streamed
// chunks) and end-to-end latency at p50/p90/p99, plus goodput (answers per second meeting both
// --slo-ttft-ms and --slo-tpot-ms). --workload shared sends every request the same caller
// passages; distinct gives each request its own passages (so nothing about the context repeats).
#include <rapidjson/document.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/args.h"
#include "common/error.h"
#include "common/system.h"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  long pid = 0;  // server process, for VmRSS (0: not read)
  int concurrency = 32;
  int requests = 200;  // per round
  int rounds = 3;
  int max_new_tokens = 8;
  int k = 3;
  int backoff_ms = 20;          // pause after a 429 before the client's next request
  long max_rss_growth_kb = -1;  // -1: not checked
  int warmup_rounds = 0;        // rounds before the RSS baseline (allocator pools fill up)
  bool expect_no_429 = false;
  std::string label = "run";
  bool openai = false;              // streamed chat completions, latency figures
  std::string workload = "shared";  // shared or distinct caller passages (--openai)
  int passages = 4;                 // caller passages per request (--openai)
  double slo_ttft_ms = 1000;        // goodput: TTFT at most this
  double slo_tpot_ms = 200;         // goodput: and TPOT at most this
};

Options parse_args(int argc, char** argv) {
  cepe::Args args;
  args.option("port", "server port")
      .option("host", "server address", "127.0.0.1")
      .option("pid", "server process, for its VmRSS (0: not read)", "0")
      .option("concurrency", "concurrent clients", "32")
      .option("requests", "requests per round", "200")
      .option("rounds", "rounds", "3")
      .option("max-new-tokens", "tokens per answer", "8")
      .option("k", "passages per question", "3")
      .option("backoff-ms", "pause after a 429 before the client's next request", "20")
      .option("warmup-rounds", "rounds before the RSS baseline", "0")
      .option("max-rss-growth-kb", "fail when RSS grows more (-1: not checked)", "-1")
      .flag("expect-no-429", "fail on any 429")
      .option("label", "name printed with the figures", "run")
      .flag("openai", "streamed chat completions with latency figures")
      .option("workload", "--openai: shared or distinct caller passages", "shared")
      .option("passages", "--openai: caller passages per request", "4")
      .option("slo-ttft-ms", "goodput: time to first token at most this", "1000")
      .option("slo-tpot-ms", "goodput: and time per output token at most this", "200");
  Options o;
  try {
    args.parse(std::vector<std::string>(argv + 1, argv + argc));
    if (args.help_requested()) {
      std::cout << args.usage("bench_server --port P [flags]");
      std::exit(0);
    }
    CEPE_CHECK(args.has("port"), "--port is required");
    o.host = args.get("host");
    o.port = static_cast<int>(args.get_int("port", 1, 65535));
    o.pid = static_cast<long>(args.get_int("pid", 0, 1LL << 40));
    o.concurrency = static_cast<int>(args.get_int("concurrency", 1, 1 << 16));
    o.requests = static_cast<int>(args.get_int("requests", 1, 1 << 24));
    o.rounds = static_cast<int>(args.get_int("rounds", 1, 1 << 16));
    o.max_new_tokens = static_cast<int>(args.get_int("max-new-tokens", 0, 1 << 16));
    o.k = static_cast<int>(args.get_int("k", 0, 1 << 16));
    o.backoff_ms = static_cast<int>(args.get_int("backoff-ms", 0, 1 << 24));
    o.warmup_rounds = static_cast<int>(args.get_int("warmup-rounds", 0, 1 << 16));
    o.max_rss_growth_kb = static_cast<long>(args.get_int("max-rss-growth-kb", -1, 1LL << 40));
    o.expect_no_429 = args.is_set("expect-no-429");
    o.label = args.get("label");
    o.openai = args.is_set("openai");
    o.workload = args.get("workload");
    o.passages = static_cast<int>(args.get_int("passages", 0, 1 << 16));
    o.slo_ttft_ms = args.get_double("slo-ttft-ms", 0, 1e9);
    o.slo_tpot_ms = args.get_double("slo-tpot-ms", 0, 1e9);
    CEPE_CHECK(o.rounds > o.warmup_rounds, "--rounds must exceed --warmup-rounds");
    CEPE_CHECK(o.workload == "shared" || o.workload == "distinct",
               "--workload must be shared or distinct");
  } catch (const std::exception& e) {
    std::cerr << "bench_server: " << e.what() << "\n";
    std::exit(2);
  }
  return o;
}

long rss_kb(long pid) {
  if (pid <= 0) return -1;
  const uint64_t bytes = cepe::process_stats(static_cast<int>(pid)).resident_bytes;
  return bytes == 0 ? -1 : static_cast<long>(bytes / 1024);
}

// Questions that hit different passages of the benchmark corpus (any corpus works).
const char* kQuestions[] = {"Which river flows through the capital?",
                            "What is the capital of the country?",
                            "How many people live in the city?",
                            "Which museums are in the old town?",
                            "Where does the river reach the sea?",
                            "Who built the old bridges?",
                            "When was the city founded?",
                            "What language do people speak there?"};

struct Sample {
  int status = 0;
  double ms = 0;
  int tokens = 0;
  std::string error;  // set when the request failed other than with a clean 429
};

// A keep-alive connection to the server, opened again when the server has closed it.
class Connection {
 public:
  explicit Connection(const Options& o) : o_(o), socket_(ioc_) {}

 protected:
  // Connects when the socket is closed (first use, or the server closed it).
  void ensure_open() {
    if (socket_.is_open()) return;
    tcp::resolver resolver(ioc_);
    net::connect(socket_, resolver.resolve(o_.host, std::to_string(o_.port)));
    socket_.set_option(tcp::no_delay(true));
    buffer_.clear();
  }

  // Sends a JSON POST to `target` on the open connection.
  void post_json(const char* target, const std::string& body) {
    http::request<http::string_body> req{http::verb::post, target, 11};
    req.set(http::field::host, o_.host);
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    http::write(socket_, req);
  }

  void close() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
  }

  const Options& o_;
  net::io_context ioc_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

// One /ask client.
class Client : Connection {
 public:
  explicit Client(const Options& o) : Connection(o) {}

  Sample ask(int n) {
    Sample s;
    const std::string body =
        std::string("{\"question\":\"") + kQuestions[n % 8] + "\",\"k\":" + std::to_string(o_.k) +
        ",\"max_new_tokens\":" + std::to_string(o_.max_new_tokens) + ",\"stop\":[]}";
    const auto t0 = Clock::now();
    // One retry on a fresh connection: the server closes keep-alive connections idle longer than
    // its header timeout, which clients that sat out the end of a round are.
    for (int attempt = 0; attempt < 2; ++attempt) {
      s.error.clear();
      try {
        ensure_open();
        post_json("/ask", body);
        http::response<http::string_body> res;
        http::read(socket_, buffer_, res);
        s.ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        s.status = res.result_int();
        check(res, s);
        if (!res.keep_alive()) close();
        return s;
      } catch (const std::exception& e) {
        close();
        s.error = std::string("network: ") + e.what();
      }
    }
    s.status = 0;
    return s;
  }

 private:
  void check(const http::response<http::string_body>& res, Sample& s) {
    rapidjson::Document d;
    d.Parse(res.body().c_str(), res.body().size());
    if (d.HasParseError() || !d.IsObject()) {
      s.error = "status " + std::to_string(s.status) + " with a body that is not JSON";
      return;
    }
    if (s.status == 200) {
      if (!d.HasMember("usage") || !d.HasMember("answer"))
        s.error = "200 without answer/usage";
      else
        s.tokens = d["usage"]["completion_tokens"].GetInt();
      return;
    }
    if (s.status == 429) {
      const bool clean = res.count(http::field::retry_after) > 0 && d.HasMember("error") &&
                         d["error"].IsObject() && d["error"].HasMember("code") &&
                         std::string(d["error"]["code"].GetString()) == "queue_full";
      if (!clean) s.error = "429 without Retry-After or queue_full error";
      return;
    }
    s.error = "status " + std::to_string(s.status) + ": " + res.body().substr(0, 200);
  }
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// ---- --openai: streamed chat completions ----

struct StreamSample {
  int status = 0;
  double ttft_ms = -1;          // request sent -> first chunk with text
  double e2e_ms = 0;            // request sent -> data: [DONE]
  std::vector<double> gaps_ms;  // between consecutive text chunks
  int tokens = 0;               // usage.completion_tokens
  std::string error;            // set on any failure (429 included: counted apart)
};

// The caller passages of request `n`: the same for every request, or each request its own.
std::string passages_for(const Options& o, int n) {
  std::string out = "[";
  for (int i = 0; i < o.passages; ++i) {
    const std::string tag =
        o.workload == "shared" ? std::to_string(i) : std::to_string(n) + "-" + std::to_string(i);
    out += std::string(i ? "," : "") + "{\"title\":\"Place " + tag + "\",\"text\":\"Place " + tag +
           " lies on a river with old bridges. Its museums, parks and markets draw visitors, and "
           "about " +
           std::to_string(i + 2) + " million people live there.\"}";
  }
  return out + "]";
}

class StreamClient : Connection {
 public:
  explicit StreamClient(const Options& o) : Connection(o) {}

  StreamSample chat(int n) {
    StreamSample s;
    const std::string body =
        std::string(
            "{\"model\":\"bench\",\"stream\":true,"
            "\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":"
            "\"user\",\"content\":\"") +
        kQuestions[n % 8] + "\"}],\"max_tokens\":" + std::to_string(o_.max_new_tokens) +
        ",\"stop\":[],\"decoder_passages\":1,\"passages\":" + passages_for(o_, n) + "}";
    try {
      ensure_open();
      const auto t0 = Clock::now();
      post_json("/v1/chat/completions", body);
      http::response_parser<http::buffer_body> parser;
      parser.body_limit(64u << 20);
      http::read_header(socket_, buffer_, parser);
      s.status = parser.get().result_int();
      std::string pending, all;
      char chunk[8192];
      Clock::time_point last{};
      bool done = false;
      while (!parser.is_done()) {
        parser.get().body().data = chunk;
        parser.get().body().size = sizeof chunk;
        beast::error_code ec;
        http::read_some(socket_, buffer_, parser, ec);
        if (ec && ec != http::error::need_buffer) throw beast::system_error(ec);
        const size_t got = sizeof chunk - parser.get().body().size;
        pending.append(chunk, got);
        if (s.status != 200) {
          all.append(chunk, got);
          continue;
        }
        // Whole events: "data: ...\n\n".
        for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
          const std::string ev = pending.substr(0, end);
          pending.erase(0, end + 2);
          if (ev.rfind("data: ", 0) != 0) continue;
          const std::string data = ev.substr(6);
          const auto now = Clock::now();
          if (data == "[DONE]") {
            s.e2e_ms = std::chrono::duration<double, std::milli>(now - t0).count();
            done = true;
            continue;
          }
          rapidjson::Document d;
          d.Parse(data.c_str(), data.size());
          if (d.HasParseError() || !d.IsObject()) {
            s.error = "a chunk that is not JSON: " + data.substr(0, 100);
            continue;
          }
          if (d.HasMember("error")) {
            s.error = "error event: " + data.substr(0, 200);
            continue;
          }
          if (d.HasMember("usage") && d["usage"].IsObject())
            s.tokens = d["usage"]["completion_tokens"].GetInt();
          if (!d.HasMember("choices") || d["choices"].Empty()) continue;
          const auto& delta = d["choices"][0]["delta"];
          if (!delta.HasMember("content") || delta["content"].GetStringLength() == 0) continue;
          if (s.ttft_ms < 0)
            s.ttft_ms = std::chrono::duration<double, std::milli>(now - t0).count();
          else
            s.gaps_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
          last = now;
        }
      }
      if (!parser.keep_alive()) close();
      if (s.status != 200) {
        s.error = "status " + std::to_string(s.status) + ": " + all.substr(0, 200);
      } else if (s.error.empty() && !done) {
        s.error = "the stream ended without data: [DONE]";
      }
    } catch (const std::exception& e) {
      close();
      s.error = std::string("network: ") + e.what();
    }
    return s;
  }
};

int run_openai(const Options& o) {
  std::vector<std::unique_ptr<StreamClient>> clients;
  for (int i = 0; i < o.concurrency; ++i) clients.push_back(std::make_unique<StreamClient>(o));
  int failures = 0;
  std::string first_error;
  for (int round = 1; round <= o.rounds; ++round) {
    std::atomic<int> next{0};
    std::mutex mu;
    std::vector<StreamSample> samples;
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < o.concurrency; ++c) {
      threads.emplace_back([&, c] {
        for (int n; (n = next.fetch_add(1)) < o.requests;) {
          StreamSample s = clients[c]->chat(n);
          std::lock_guard<std::mutex> lock(mu);
          samples.push_back(std::move(s));
        }
      });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    std::vector<double> ttft, tpot, itl, e2e;
    int ok = 0, good = 0, failed = 0;
    long tokens = 0;
    for (const auto& s : samples) {
      if (!s.error.empty() || s.ttft_ms < 0) {
        ++failed;
        if (first_error.empty()) first_error = s.error.empty() ? "no text streamed" : s.error;
        continue;
      }
      ++ok;
      tokens += s.tokens;
      ttft.push_back(s.ttft_ms);
      e2e.push_back(s.e2e_ms);
      itl.insert(itl.end(), s.gaps_ms.begin(), s.gaps_ms.end());
      // TPOT as vLLM defines it: (e2e - ttft) / (output tokens - 1).
      const double per = s.tokens > 1 ? (s.e2e_ms - s.ttft_ms) / (s.tokens - 1) : 0.0;
      tpot.push_back(per);
      if (s.ttft_ms <= o.slo_ttft_ms && per <= o.slo_tpot_ms) ++good;
    }
    failures += failed;
    auto pct = [](const std::vector<double>& v) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "[%.1f,%.1f,%.1f]", percentile(v, 0.5), percentile(v, 0.9),
                    percentile(v, 0.99));
      return std::string(buf);
    };
    std::printf(
        "{\"label\":\"%s\",\"api\":\"openai-chat-stream\",\"workload\":\"%s\",\"round\":%d,"
        "\"concurrency\":%d,\"requests\":%d,\"ok\":%d,\"failed\":%d,\"wall_s\":%.3f,"
        "\"answers_per_s\":%.2f,\"output_tokens_per_s\":%.1f,\"goodput_per_s\":%.2f,"
        "\"slo_ttft_ms\":%.0f,\"slo_tpot_ms\":%.0f,\"ttft_ms_p50_p90_p99\":%s,"
        "\"tpot_ms_p50_p90_p99\":%s,\"itl_ms_p50_p90_p99\":%s,\"e2e_ms_p50_p90_p99\":%s}\n",
        o.label.c_str(), o.workload.c_str(), round, o.concurrency, o.requests, ok, failed, wall,
        ok / wall, static_cast<double>(tokens) / wall, good / wall, o.slo_ttft_ms, o.slo_tpot_ms,
        pct(ttft).c_str(), pct(tpot).c_str(), pct(itl).c_str(), pct(e2e).c_str());
    std::fflush(stdout);
  }
  if (failures > 0) {
    std::fprintf(stderr, "bench_server: %d requests failed (first: %s)\n", failures,
                 first_error.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  if (o.openai) return run_openai(o);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < o.concurrency; ++i) clients.push_back(std::make_unique<Client>(o));
  long first_rss = -1, last_rss = -1;
  int failures = 0, total_429 = 0;
  std::string first_error;
  for (int round = 1; round <= o.rounds; ++round) {
    // Every request is answered in the end: a 429 gives its slot back and the client retries
    // after --backoff-ms, so each round serves exactly --requests answers (or failures).
    std::atomic<int> remaining{o.requests};
    std::atomic<int> next{0};
    std::mutex mu;
    std::vector<Sample> samples;
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < o.concurrency; ++c) {
      threads.emplace_back([&, c] {
        for (;;) {
          if (remaining.fetch_sub(1) <= 0) {
            remaining.fetch_add(1);
            return;
          }
          Sample s = clients[c]->ask(next.fetch_add(1));
          const bool rejected = s.status == 429 && s.error.empty();
          if (rejected) remaining.fetch_add(1);
          {
            std::lock_guard<std::mutex> lock(mu);
            samples.push_back(std::move(s));
          }
          if (rejected) std::this_thread::sleep_for(std::chrono::milliseconds(o.backoff_ms));
        }
      });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    int ok = 0, r429 = 0, failed = 0;
    long tokens = 0;
    std::vector<double> lat;
    for (const auto& s : samples) {
      if (!s.error.empty()) {
        ++failed;
        if (first_error.empty()) first_error = s.error;
      } else if (s.status == 200) {
        ++ok;
        tokens += s.tokens;
        lat.push_back(s.ms);
      } else {
        ++r429;
      }
    }
    const long rss = rss_kb(o.pid);
    if (round == o.warmup_rounds + 1) first_rss = rss;
    last_rss = rss;
    failures += failed;
    total_429 += r429;
    std::printf(
        "{\"label\":\"%s\",\"round\":%d,\"concurrency\":%d,\"requests\":%d,\"ok\":%d,"
        "\"rejected_429\":%d,\"failed\":%d,\"wall_s\":%.3f,\"answers_per_s\":%.2f,"
        "\"tokens_per_s\":%.1f,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"rss_kb\":%ld,\"warmup\":%s}\n",
        o.label.c_str(), round, o.concurrency, o.requests, ok, r429, failed, wall, ok / wall,
        static_cast<double>(tokens) / wall, percentile(lat, 0.50), percentile(lat, 0.99), rss,
        round <= o.warmup_rounds ? "true" : "false");
    std::fflush(stdout);
  }
  int status = 0;
  if (failures > 0) {
    std::fprintf(stderr, "bench_server: %d requests failed (first: %s)\n", failures,
                 first_error.c_str());
    status = 1;
  }
  if (o.expect_no_429 && total_429 > 0) {
    std::fprintf(stderr, "bench_server: %d requests got 429 below the queue limit\n", total_429);
    status = 1;
  }
  // Growth is measured from the end of the first round after the warm-up ones (in those the
  // allocator's pools and arenas grow to the sizes the load needs).
  if (o.max_rss_growth_kb >= 0 && first_rss >= 0 && last_rss - first_rss > o.max_rss_growth_kb) {
    std::fprintf(stderr, "bench_server: server RSS grew by %ld kB after round %d (limit %ld kB)\n",
                 last_rss - first_rss, o.warmup_rounds + 1, o.max_rss_growth_kb);
    status = 1;
  }
  return status;
}
