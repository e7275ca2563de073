// Load test of a running `cepe serve`: N client threads, each on its own keep-alive connection,
// send POST /ask until a fixed number of requests has been answered (a 429 is retried after a short
// back-off), for a few rounds. It reports per round the answers, 429s (checked to be clean: JSON
// error "queue_full" with Retry-After) and other failures, throughput, latency percentiles and the
// server's resident memory (VmRSS from /proc/PID/status) after the round. Exit status 1 when a
// request failed in another way than a clean 429, when 429s came although --expect-no-429 was
// given, or when RSS grew across rounds by more than --max-rss-growth-kb.
//
//   bench_server --port 8080 --pid 1234 --concurrency 32 --requests 200 --rounds 3
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
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

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
};

void usage() {
  std::cout << "usage: bench_server --port P [--host H] [--pid PID] [--concurrency N] "
               "[--requests M] [--rounds R] [--max-new-tokens T] [--k K] [--backoff-ms MS] "
               "[--warmup-rounds W] [--max-rss-growth-kb KB] [--expect-no-429] [--label NAME]\n";
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "bench_server: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--host")
      o.host = value();
    else if (a == "--port")
      o.port = std::stoi(value());
    else if (a == "--pid")
      o.pid = std::stol(value());
    else if (a == "--concurrency")
      o.concurrency = std::stoi(value());
    else if (a == "--requests")
      o.requests = std::stoi(value());
    else if (a == "--rounds")
      o.rounds = std::stoi(value());
    else if (a == "--max-new-tokens")
      o.max_new_tokens = std::stoi(value());
    else if (a == "--k")
      o.k = std::stoi(value());
    else if (a == "--backoff-ms")
      o.backoff_ms = std::stoi(value());
    else if (a == "--warmup-rounds")
      o.warmup_rounds = std::stoi(value());
    else if (a == "--max-rss-growth-kb")
      o.max_rss_growth_kb = std::stol(value());
    else if (a == "--expect-no-429")
      o.expect_no_429 = true;
    else if (a == "--label")
      o.label = value();
    else if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else {
      std::cerr << "bench_server: unknown argument " << a << "\n";
      usage();
      std::exit(2);
    }
  }
  if (o.port <= 0 || o.concurrency < 1 || o.requests < 1 || o.rounds <= o.warmup_rounds ||
      o.warmup_rounds < 0) {
    usage();
    std::exit(2);
  }
  return o;
}

long rss_kb(long pid) {
  if (pid <= 0) return -1;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
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

// One client: a keep-alive connection, reconnected when the server closes it.
class Client {
 public:
  explicit Client(const Options& o) : o_(o), socket_(ioc_) {}

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
        if (!socket_.is_open()) {
          tcp::resolver resolver(ioc_);
          net::connect(socket_, resolver.resolve(o_.host, std::to_string(o_.port)));
          socket_.set_option(tcp::no_delay(true));
          buffer_.clear();
        }
        http::request<http::string_body> req{http::verb::post, "/ask", 11};
        req.set(http::field::host, o_.host);
        req.set(http::field::content_type, "application/json");
        req.body() = body;
        req.prepare_payload();
        http::write(socket_, req);
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

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
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
