#include "server/metrics.h"

#include <charconv>

#include "common/system.h"

namespace cepe::server {
namespace {

// The shortest text that reads back as `v` exactly: counters past 1e9 and epoch times keep every
// digit (printf's %.9g rounded them to 10 s), bucket bounds stay short ("0.0025").
std::string num(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

const std::vector<double>& latency_bounds() {
  static const std::vector<double> b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,   1,      2.5,   5,    10,    30,   60};
  return b;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void scalar(std::string& out, const char* name, const char* type, const char* help, double v) {
  header(out, name, type, help);
  out += name;
  out += ' ';
  out += num(v);
  out += '\n';
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? num(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) +
           "\n";
  }
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + num(sum_) + "\n";
  out += name + "_count" + braces + " " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : retrieval_(latency_bounds()),
      step_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      queue_wait_(latency_bounds()) {}

void Metrics::request_done(const std::string& route, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
  auto it = latency_.find(route);
  if (it == latency_.end()) it = latency_.try_emplace(route, latency_bounds()).first;
  it->second.observe(seconds);
}

void Metrics::engine_step(int batch, double seconds) {
  step_.observe(seconds);
  steps_.fetch_add(1);
  stepped_sequences_.fetch_add(static_cast<uint64_t>(batch));
}

std::string Metrics::render() const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    header(out, "cepe_http_requests_total", "counter", "HTTP requests by route and status.");
    for (const auto& [key, n] : requests_) {
      out += "cepe_http_requests_total{route=\"" + key.first + "\",status=\"" +
             std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
    }
    header(out, "cepe_http_request_duration_seconds", "histogram",
           "Time from the request header to the last response byte, by route.");
    for (const auto& [route, h] : latency_)
      h.render(out, "cepe_http_request_duration_seconds", "route=\"" + route + "\"");
  }
  header(out, "cepe_retrieval_duration_seconds", "histogram", "Retrieval time per request.");
  retrieval_.render(out, "cepe_retrieval_duration_seconds", "");
  header(out, "cepe_queue_wait_seconds", "histogram",
         "Time admitted requests waited for a batch slot.");
  queue_wait_.render(out, "cepe_queue_wait_seconds", "");
  header(out, "cepe_engine_step_duration_seconds", "histogram",
         "Time of one batched forward step (prefill and decode rows together).");
  step_.render(out, "cepe_engine_step_duration_seconds", "");
  scalar(out, "cepe_engine_steps_total", "counter", "Batched forward steps run.",
         static_cast<double>(steps_.load()));
  scalar(out, "cepe_engine_stepped_sequences_total", "counter",
         "Sum of batch sizes over all steps (divide by steps for the mean batch).",
         static_cast<double>(stepped_sequences_.load()));
  scalar(out, "cepe_queue_depth", "gauge", "Admitted requests waiting for a batch slot.",
         static_cast<double>(queue_depth.load()));
  scalar(out, "cepe_batch_size", "gauge", "Sequences in the running batch.",
         static_cast<double>(batch_size.load()));
  scalar(out, "cepe_sequence_cache_bytes", "gauge",
         "Bytes held by the running sequences between steps: self-attention K/V plus the "
         "cross-attention K/V (cached) or encoder states (absorbed).",
         static_cast<double>(cache_bytes.load()));
  scalar(out, "cepe_sequence_encoder_state_bytes", "gauge",
         "Of cepe_sequence_cache_bytes, the encoder states the running sequences hold (absorbed "
         "cross-attention); the rest is the decoder's self-attention cache.",
         static_cast<double>(sequence_encoder_state_bytes.load()));
  scalar(out, "cepe_sequence_self_attention_bytes", "gauge",
         "Of cepe_sequence_cache_bytes, the decoder self-attention K/V (absorbed mode; in cached "
         "mode it also counts the projected cross K/V).",
         static_cast<double>(cache_bytes.load() - sequence_encoder_state_bytes.load()));
  scalar(out, "cepe_encoder_store_hits_total", "counter",
         "Passages whose encoder states were read from the index's state store.",
         static_cast<double>(encoder_store_hits.load()));
  scalar(out, "cepe_encoder_cache_hits_total", "counter",
         "Passages whose encoder states came from the server's LRU cache.",
         static_cast<double>(encoder_cache_hits.load()));
  scalar(out, "cepe_encoder_cache_misses_total", "counter",
         "Cache lookups that found nothing (the passage was encoded).",
         static_cast<double>(encoder_cache_misses.load()));
  scalar(out, "cepe_encoder_cache_evictions_total", "counter",
         "Cache entries evicted to stay under encoder_cache_mb.",
         static_cast<double>(encoder_cache_evictions.load()));
  scalar(out, "cepe_encoder_cache_bytes", "gauge", "Bytes of encoder states in the LRU cache.",
         static_cast<double>(encoder_cache_bytes.load()));
  scalar(out, "cepe_encoder_live_passages_total", "counter",
         "Passages encoded at request time (not found in a store or cache).",
         static_cast<double>(encoder_live_passages.load()));
  scalar(out, "cepe_in_flight_requests", "gauge", "Requests being handled.",
         static_cast<double>(in_flight.load()));
  scalar(out, "cepe_open_connections", "gauge", "Open HTTP connections.",
         static_cast<double>(connections.load()));
  scalar(out, "cepe_generated_tokens_total", "counter", "Tokens generated.",
         static_cast<double>(generated_tokens.load()));
  scalar(out, "cepe_prompt_tokens_total", "counter", "Decoder prompt tokens prefilled.",
         static_cast<double>(prompt_tokens.load()));
  scalar(out, "cepe_encoder_tokens_total", "counter", "Passage tokens run through the encoder.",
         static_cast<double>(encoder_tokens.load()));
  scalar(out, "cepe_cancelled_total", "counter", "Generations cancelled because the client left.",
         static_cast<double>(cancelled.load()));
  scalar(out, "cepe_deadline_exceeded_total", "counter",
         "Generations stopped by the request deadline.", static_cast<double>(deadlines.load()));
  scalar(out, "cepe_rejected_total", "counter", "Requests refused because the queue was full.",
         static_cast<double>(rejected.load()));
  scalar(out, "cepe_connections_refused_total", "counter",
         "Connections closed as they were accepted (max_connections, max_connections_per_client).",
         static_cast<double>(connections_refused.load()));
  scalar(out, "cepe_ready", "gauge", "1 while the server is ready.",
         static_cast<double>(ready.load()));
  scalar(out, "cepe_index_passages", "gauge", "Passages of the index being served (0: none).",
         static_cast<double>(index_passages.load()));
  scalar(out, "cepe_index_reloads_total", "counter",
         "Indexes reopened and swapped in on SIGHUP (a grown or rebuilt index).",
         static_cast<double>(index_reloads.load()));
  // The process, under the names Prometheus client libraries give these figures.
  const ProcessStats p = process_stats();
  scalar(out, "process_cpu_seconds_total", "counter", "User and system CPU time, in seconds.",
         p.cpu_seconds);
  scalar(out, "process_resident_memory_bytes", "gauge", "Resident memory (VmRSS).",
         static_cast<double>(p.resident_bytes));
  scalar(out, "process_virtual_memory_bytes", "gauge", "Mapped address space (VmSize).",
         static_cast<double>(p.virtual_bytes));
  scalar(out, "process_start_time_seconds", "gauge", "Start time, in seconds since the epoch.",
         p.start_time_unix);
  scalar(out, "process_open_fds", "gauge", "Open file descriptors.",
         static_cast<double>(p.open_fds));
  scalar(out, "process_max_fds", "gauge", "Limit on open file descriptors.",
         static_cast<double>(p.max_fds));
  scalar(out, "cepe_peak_resident_memory_bytes", "gauge",
         "The most the process has been resident (VmHWM).",
         static_cast<double>(p.peak_resident_bytes));
  return out;
}

}  // namespace cepe::server
