// Real llama.cpp timed from C: the prebuilt libllama that node-llama-cpp 3.22.1 ships, or the same
// release built from source for this CPU, driven directly, on a GGUF from make_gguf.py. It reports
// the figures of bench.mjs under the same JSON names, so bench/run_llama_cpp_bench.sh can set both
// beside bench_engine.
//
//   llama_bench --model FILE.gguf --libs DIR [--threads 2] [--prompt-tokens 512]
//               [--decode-tokens 128] [--no-pool] [--json]
//
// Why a C driver next to bench.mjs: node-llama-cpp adds a JS/N-API round trip and a libuv job to
// every decoded token, which is node's cost, not llama.cpp's. This driver runs the same library
// the way llama.cpp's own CLI tools do (a persistent ggml threadpool attached to the context), so
// it is the fairer baseline; bench.mjs stays as the "through node" figure.
//
// Build (bench/run_llama_cpp_bench.sh does this): headers from the llama.cpp source that
// node-llama-cpp bundles (llama/gitRelease.bundle: include/ and ggml/include/), libraries from
// @node-llama-cpp/linux-x64/bins/linux-x64 (libllama, libggml, libggml-base), rpath to that folder.
// --libs must be that same folder: the CPU backend (one libggml-cpu-<arch>.so per x86 level) is not
// linked but picked and loaded at run time from there, and it must come from the same build. A
// native build (LLAMA_CPP_BUILD=native in the runner: GGML_NATIVE, shared libraries) links its one
// libggml-cpu into libggml instead, and --libs then only loads nothing more.
//
// Settings match what bench.mjs gets from node-llama-cpp: CPU only, context of prompt + decode
// + 16 tokens (llama.cpp rounds it up), batch and ubatch 512, one sequence, F16 KV cache, flash
// attention "auto", weights mmapped and read up front (no lazy loading), SWA cache not full.
// Figures (as in bench.mjs and bench_engine):
//   prefill       one evaluation of the prompt (BOS + deterministic ids), nothing generated;
//   decode_short  greedy decode after a BOS-only prompt;
//   decode        greedy decode after the same prompt as prefill.
// A decode's clock starts once the first token has been taken from the prompt's logits and stops
// after --decode-tokens steps of "evaluate the previous token, take the argmax".
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"

#define ENGINE "llama.cpp (libllama of node-llama-cpp 3.22.1's release, C driver)"
#define BATCH 512        // node-llama-cpp's batchSize in bench.mjs
#define WARMUP_TOKENS 8  // bench.mjs warms up on the first 8 prompt tokens
#define FIRST_TOKENS 16  // greedy ids reported, to check that the engines agree

struct options {
  const char* model;
  const char* libs;
  int threads;
  int prompt_tokens;
  int decode_tokens;
  bool pool;
  bool json;
};

struct greedy_run {
  llama_token* ids;  // decode_tokens + 1 ids: the one from the prompt's logits, then one per step
  int n_ids;
  double seconds;    // the decode_tokens steps after the first id
  double median_ms;  // median step, which stays put when a few steps stall on a busy machine
};

struct bench {
  struct llama_model* model;
  struct llama_context* ctx;
  int vocab;
  int n_batch;  // BATCH, or less when the context is smaller (llama.cpp caps it there)
};

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("llama_bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static void usage(FILE* to) {
  fputs(
      "usage: llama_bench --model FILE.gguf --libs DIR [--threads N] [--prompt-tokens N]\n"
      "                   [--decode-tokens N] [--no-pool] [--json]\n"
      "  --model FILE.gguf   GGUF to run (bench/llama_cpp/make_gguf.py writes one)\n"
      "  --libs DIR          node-llama-cpp's bins/linux-x64 folder, the one this program was\n"
      "                      linked against (the CPU backend variants are loaded from it)\n"
      "  --threads N         compute threads for prompt and decode (default 2)\n"
      "  --prompt-tokens N   prefill length, BOS included (default 512)\n"
      "  --decode-tokens N   greedy steps timed per decode (default 128)\n"
      "  --no-pool           no persistent threadpool: ggml starts threads for every graph\n"
      "  --json              one JSON object instead of text\n",
      to);
}

static int parse_int(const char* flag, const char* text, int min) {
  char* end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || *end || end == text || v < min || v > INT_MAX / 2)
    die("%s wants an integer >= %d, got '%s'", flag, min, text);
  return (int)v;
}

static struct options parse_args(int argc, char** argv) {
  struct options o = {NULL, NULL, 2, 512, 128, true, false};
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      exit(0);
    } else if (!strcmp(a, "--no-pool")) {
      o.pool = false;
    } else if (!strcmp(a, "--json")) {
      o.json = true;
    } else if (i + 1 < argc && !strcmp(a, "--model")) {
      o.model = argv[++i];
    } else if (i + 1 < argc && !strcmp(a, "--libs")) {
      o.libs = argv[++i];
    } else if (i + 1 < argc && !strcmp(a, "--threads")) {
      o.threads = parse_int(a, argv[++i], 1);
    } else if (i + 1 < argc && !strcmp(a, "--prompt-tokens")) {
      o.prompt_tokens = parse_int(a, argv[++i], 1);
    } else if (i + 1 < argc && !strcmp(a, "--decode-tokens")) {
      o.decode_tokens = parse_int(a, argv[++i], 1);
    } else {
      fprintf(stderr, "llama_bench: unknown or incomplete argument '%s'\n", a);
      usage(stderr);
      exit(2);
    }
  }
  if (!o.model || !o.libs) {
    usage(stderr);
    exit(2);
  }
  return o;
}

// --- the process ----------------------------------------------------------------------------

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

// A "VmRSS:   1234 kB" line of /proc/self/status, in MB (MiB, as bench.mjs and bench_engine).
static double proc_status_mb(const char* field) {
  FILE* f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  size_t n = strlen(field);
  double mb = -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, field, n) && line[n] == ':') {
      mb = strtod(line + n + 1, NULL) / 1024;
      break;
    }
  fclose(f);
  return mb;
}

// Distinct names in /proc/self/maps that start with `prefix` and end in ".so", comma-separated:
// which CPU backend variant ggml picked for this machine, and which libllama is mapped.
static void mapped_libs(const char* prefix, char* out, size_t size) {
  out[0] = '\0';
  FILE* f = fopen("/proc/self/maps", "r");
  if (!f) return;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    const char* base = strrchr(line, '/');
    if (!base || strncmp(base + 1, prefix, strlen(prefix))) continue;
    char name[256];
    if (sscanf(base + 1, "%255[^\n]", name) != 1 || !strstr(name, ".so") || strstr(out, name))
      continue;
    if (strlen(out) + strlen(name) + 2 > size) break;
    if (out[0]) strcat(out, ",");
    strcat(out, name);
  }
  fclose(f);
}

// bench.mjs reports node-llama-cpp's llama.cpp release tag; its libraries carry the same tag in
// their file name (libllama.v0.5.0.so), which is the only place the C side can read it. A build
// from source carries it as the shared library's version (libllama.so.0.5.0).
static void release_from_libname(char* out, size_t size) {
  char names[1024];
  mapped_libs("libllama.", names, sizeof names);
  const char* v = strstr(names, ".v");
  const char* end = v ? strstr(v, ".so") : NULL;
  if (v && end && (size_t)(end - v - 1) < size) {
    snprintf(out, size, "%.*s", (int)(end - v - 1), v + 1);
    return;
  }
  const char* so = strstr(names, ".so.");
  if (so && strlen(so + 4) + 2 <= size && !strchr(so + 4, ',')) {
    snprintf(out, size, "v%s", so + 4);
    return;
  }
  snprintf(out, size, "unknown");
}

// Keep llama.cpp's log quiet (bench.mjs uses logLevel "error"), but let errors through: they
// are what says why a model failed to load.
static void log_errors_only(enum ggml_log_level level, const char* text, void* user) {
  bool* in_error = user;
  if (level != GGML_LOG_LEVEL_CONT) *in_error = level == GGML_LOG_LEVEL_ERROR;
  if (*in_error) fputs(text, stderr);
}

// --- llama.cpp ------------------------------------------------------------------------------

// The CPU backend lives in a run-time loaded library (libggml-cpu-<arch>.so), so its functions
// are only reachable through the backend registry, not by linking.
static void* cpu_backend_proc(const char* name) {
  ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
  if (!dev) return NULL;
  return ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), name);
}

static struct llama_model* load_model(const char* path) {
  struct llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.load_mode = LLAMA_LOAD_MODE_MMAP;  // node-llama-cpp's useMmap default
  mp.lazy_mode = LLAMA_LAZY_MODE_OFF;   // as node-llama-cpp sets it
  FILE* f = fopen(path, "rb");
  if (!f) die("cannot open the model %s: %s", path, strerror(errno));
  fclose(f);
  struct llama_model* m = llama_model_load_from_file(path, mp);
  if (!m)
    die("llama.cpp could not load %s (its error is above); is it a GGUF that this llama.cpp "
        "release reads (bench/llama_cpp/make_gguf.py writes one)?",
        path);
  return m;
}

static struct llama_context* make_context(struct llama_model* m, const struct options* o) {
  struct llama_context_params cp = llama_context_default_params();
  const uint32_t n_ctx = (uint32_t)(o->prompt_tokens + o->decode_tokens + 16);
  cp.n_ctx = n_ctx;
  cp.n_batch = cp.n_ubatch = BATCH;
  cp.n_seq_max = 1;
  cp.n_threads = cp.n_threads_batch = o->threads;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
  cp.type_k = cp.type_v = GGML_TYPE_F16;
  cp.no_perf = true;
  cp.swa_full = false;  // node-llama-cpp's settings, for the same memory figure
  cp.kv_unified = false;
  struct llama_context* c = llama_init_from_model(m, cp);
  if (!c) die("llama.cpp could not create a context of %u tokens (its error is above)", n_ctx);
  // The parameter structs are passed by value, so headers from another llama.cpp release than
  // the libraries' would scramble them silently; read a few back to catch that.
  const uint32_t n_batch = n_ctx < BATCH ? n_ctx : BATCH;
  if (llama_n_ctx(c) < n_ctx || llama_n_batch(c) != n_batch || llama_n_threads(c) != o->threads)
    die("the context came back with n_ctx %u, n_batch %u, %d threads instead of %u, %u, %d: "
        "the headers llama_bench was compiled with do not match the libraries in use",
        llama_n_ctx(c), llama_n_batch(c), llama_n_threads(c), n_ctx, n_batch, o->threads);
  return c;
}

// Without an attached pool, every graph computation starts and joins its own threads; llama.cpp's
// CLI tools attach one persistent pool per context, whose threads wait for the next graph.
typedef struct ggml_threadpool* (*threadpool_new_fn)(struct ggml_threadpool_params*);
typedef void (*threadpool_free_fn)(struct ggml_threadpool*);

static struct ggml_threadpool* attach_threadpool(struct llama_context* c, int threads) {
  threadpool_new_fn tp_new = (threadpool_new_fn)cpu_backend_proc("ggml_threadpool_new");
  if (!tp_new) die("the CPU backend has no ggml_threadpool_new (run with --no-pool)");
  struct ggml_threadpool_params p = ggml_threadpool_params_default(threads);
  struct ggml_threadpool* tp = tp_new(&p);
  if (!tp) die("could not start a threadpool of %d threads", threads);
  llama_attach_threadpool(c, tp, NULL);  // NULL: the same pool for batches, as the CLI does
  return tp;
}

static void free_threadpool(struct ggml_threadpool* tp) {
  threadpool_free_fn tp_free = (threadpool_free_fn)cpu_backend_proc("ggml_threadpool_free");
  if (tp && tp_free) tp_free(tp);
}

// "general.file_type" (llama_ftype) as the name bench.mjs and bench_engine use for the kind.
static void file_type_name(const struct llama_model* m, char* out, size_t size) {
  char buf[32];
  if (llama_model_meta_val_str(m, "general.file_type", buf, sizeof buf) < 0) {
    snprintf(out, size, "unknown");
    return;
  }
  static const struct {
    const char *id, *name;
  } names[] = {
      {"0", "f32"}, {"1", "f16"}, {"2", "q4_0"}, {"7", "q8_0"}, {"32", "bf16"},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(buf, names[i].id)) {
      snprintf(out, size, "%s", names[i].name);
      return;
    }
  snprintf(out, size, "%s", buf);
}

// BOS, then ids from a fixed LCG over [3, vocab) (no control tokens): bench.mjs's prompt.
static llama_token* prompt_ids(llama_token bos, int vocab, int n) {
  llama_token* ids = malloc(sizeof *ids * (size_t)n);
  if (!ids) die("out of memory");
  ids[0] = bos;
  uint32_t x = 12345;
  for (int i = 1; i < n; i++) {
    x = x * 1664525u + 1013904223u;
    ids[i] = (llama_token)(3 + (x >> 8) % (uint32_t)(vocab - 3));
  }
  return ids;
}

static void clear(struct bench* b) {
  llama_memory_clear(llama_get_memory(b->ctx), true);
}

// Appends tokens to the sequence, at most a batch at a time (node-llama-cpp splits the same way).
static void evaluate(struct bench* b, llama_token* tokens, int n) {
  for (int at = 0; at < n; at += b->n_batch) {
    int len = n - at < b->n_batch ? n - at : b->n_batch;
    int rc = llama_decode(b->ctx, llama_batch_get_one(tokens + at, len));
    if (rc) die("llama_decode failed (%d) on %d tokens", rc, len);
  }
}

static llama_token argmax_last(struct bench* b) {
  const float* logits = llama_get_logits_ith(b->ctx, -1);
  if (!logits) die("no logits after llama_decode");
  int best = 0;
  for (int i = 1; i < b->vocab; i++)
    if (logits[i] > logits[best]) best = i;
  return best;
}

static int cmp_double(const void* pa, const void* pb) {
  double a = *(const double*)pa, b = *(const double*)pb;
  return (a > b) - (a < b);
}

// Greedy ids after `tokens` on an empty sequence: the first from the prompt's logits, then `steps`
// timed steps; the sequence is cleared afterwards.
static struct greedy_run greedy(struct bench* b, llama_token* tokens, int n_tokens, int steps) {
  struct greedy_run r = {malloc(sizeof(llama_token) * (size_t)(steps + 1)), steps + 1, 0, 0};
  double* step_s = malloc(sizeof(double) * (size_t)steps);
  if (!r.ids || !step_s) die("out of memory");
  evaluate(b, tokens, n_tokens);
  r.ids[0] = argmax_last(b);
  double start = now_s(), t = start;
  for (int s = 1; s <= steps; s++) {
    evaluate(b, &r.ids[s - 1], 1);
    r.ids[s] = argmax_last(b);
    double u = now_s();
    step_s[s - 1] = u - t;
    t = u;
  }
  r.seconds = t - start;
  qsort(step_s, (size_t)steps, sizeof *step_s, cmp_double);
  r.median_ms = step_s[steps / 2] * 1e3;  // the upper median, as bench.mjs takes it
  free(step_s);
  clear(b);
  return r;
}

// --- output ---------------------------------------------------------------------------------

static void json_string(const char* s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      printf("\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      printf("\\u%04x", *s);
    else
      putchar(*s);
  }
  putchar('"');
}

static void json_decode(const char* name, const struct greedy_run* r, int steps, int prompt_len) {
  printf(
      "\"%s\": {\"tokens\": %d, \"seconds\": %.4f, \"tokens_per_s\": %.2f, "
      "\"median_step_ms\": %.3f, \"prompt_tokens\": %d}",
      name, steps, r->seconds, steps / r->seconds, r->median_ms, prompt_len);
}

int main(int argc, char** argv) {
  const struct options o = parse_args(argc, argv);

  bool in_error = false;
  llama_log_set(log_errors_only, &in_error);
  ggml_backend_load_all_from_path(o.libs);
  if (!ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU))
    die("no CPU backend (libggml-cpu-*.so) could be loaded from %s", o.libs);
  llama_backend_init();
  const double baseline_rss = proc_status_mb("VmRSS");  // the libraries, no model yet

  struct bench b = {load_model(o.model), NULL, 0, 0};
  b.ctx = make_context(b.model, &o);
  b.n_batch = (int)llama_n_batch(b.ctx);
  struct ggml_threadpool* pool = o.pool ? attach_threadpool(b.ctx, o.threads) : NULL;
  const struct llama_vocab* vocab = llama_model_get_vocab(b.model);
  b.vocab = llama_vocab_n_tokens(vocab);
  if (b.vocab <= 3)
    die("the model's vocabulary has %d tokens; the prompt needs more than 3", b.vocab);
  llama_token bos = llama_vocab_bos(vocab);
  if (bos < 0) bos = 1;  // bench.mjs's fallback
  llama_token* prompt = prompt_ids(bos, b.vocab, o.prompt_tokens);

  // Warm-up on the same paths at small sizes (as bench.mjs and bench_engine do), so that first
  // touches of the mmapped weights and first-use allocations fall outside the timed runs.
  const int warm = o.prompt_tokens < WARMUP_TOKENS ? o.prompt_tokens : WARMUP_TOKENS;
  evaluate(&b, prompt, warm);
  clear(&b);
  free(greedy(&b, prompt, warm, 2).ids);

  const struct greedy_run short_run = greedy(&b, prompt, 1, o.decode_tokens);

  double t0 = now_s();
  evaluate(&b, prompt, o.prompt_tokens);
  const double prefill_s = now_s() - t0;
  clear(&b);

  const struct greedy_run long_run = greedy(&b, prompt, o.prompt_tokens, o.decode_tokens);

  const double peak_rss = proc_status_mb("VmHWM");
  char type[32], cpu_variant[512], release[64];
  file_type_name(b.model, type, sizeof type);
  mapped_libs("libggml-cpu", cpu_variant, sizeof cpu_variant);
  release_from_libname(release, sizeof release);
  const int threads = llama_n_threads(b.ctx);
  const unsigned context_size = llama_n_ctx(b.ctx);
  const int n_first = short_run.n_ids < FIRST_TOKENS ? short_run.n_ids : FIRST_TOKENS;

  if (o.json) {
    printf("{\"engine\": \"%s\", \"llama_cpp_release\": ", ENGINE);
    json_string(release);
    printf(", \"model\": ");
    json_string(o.model);
    printf(", \"threads\": %d, \"type\": \"%s\", ", threads, type);
    printf("\"prefill\": {\"tokens\": %d, \"seconds\": %.4f, \"tokens_per_s\": %.2f}, ",
           o.prompt_tokens, prefill_s, o.prompt_tokens / prefill_s);
    json_decode("decode_short", &short_run, o.decode_tokens, 1);
    printf(", ");
    json_decode("decode", &long_run, o.decode_tokens, o.prompt_tokens);
    printf(
        ", \"peak_rss_mb\": %.1f, \"baseline_rss_mb\": %.1f, \"cpu_variant\": \"%s\", "
        "\"context_size\": %u, \"flash_attention\": \"auto\", \"kv_cache\": \"f16\", "
        "\"mmap\": true, \"threadpool\": %s, \"first_tokens\": [",
        peak_rss, baseline_rss, cpu_variant[0] ? cpu_variant : "unknown", context_size,
        o.pool ? "true" : "false");
    for (int i = 0; i < n_first; i++) printf(i ? ", %d" : "%d", short_run.ids[i]);
    printf("]}\n");
  } else {
    printf("%s %s, %s, %d threads, cpu backend %s, %s threadpool\n", ENGINE, release, type, threads,
           cpu_variant[0] ? cpu_variant : "unknown", o.pool ? "persistent" : "no");
    printf("  prefill       %d tokens in %.4f s: %.2f tokens/s\n", o.prompt_tokens, prefill_s,
           o.prompt_tokens / prefill_s);
    const struct greedy_run* runs[] = {&short_run, &long_run};
    const char* names[] = {"decode_short", "decode"};
    for (int i = 0; i < 2; i++)
      printf("  %-13s %d tokens in %.4f s: %.2f tokens/s (median step %.3f ms)\n", names[i],
             o.decode_tokens, runs[i]->seconds, o.decode_tokens / runs[i]->seconds,
             runs[i]->median_ms);
    printf("  peak RSS %.1f MB (baseline before the model %.1f MB)\n", peak_rss, baseline_rss);
    printf("  first greedy tokens after the short prompt:");
    for (int i = 0; i < n_first; i++) printf(" %d", short_run.ids[i]);
    printf("\n");
  }

  free(prompt);
  free(short_run.ids);
  free(long_run.ids);
  llama_free(b.ctx);  // before the pool: the context may still hold it
  free_threadpool(pool);
  llama_model_free(b.model);
  llama_backend_free();
  return 0;
}
