// The /ask request parser, the server config loader and the small pieces around them (logs,
// metrics), tested directly. The property test feeds the parser thousands of generated bodies —
// mutated valid requests, wrong types, huge numbers, deep nesting, invalid UTF-8, random bytes —
// and requires every one to end in a checked request or an ApiError with a 4xx status, never a
// crash or any other exception.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/json.h"
#include "config/server_config.h"
#include "server/access.h"
#include "server/http_date.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/sse.h"
#include "test_util.h"

namespace cepe::server {
namespace {

AskLimits test_limits() {
  AskLimits l;
  l.max_k = 10;
  l.default_k = 3;
  l.max_new_tokens = 100;
  l.default_max_new_tokens = 20;
  l.max_question_chars = 50;
  l.max_stop = 3;
  l.max_stop_chars = 8;
  l.max_json_depth = 8;
  return l;
}

// Parses `body`; returns the ApiError's status and code, or 200 and "" when it parsed.
std::pair<int, std::string> outcome(const std::string& body, std::string* message = nullptr) {
  try {
    parse_ask_request(body, test_limits());
    return {200, ""};
  } catch (const ApiError& e) {
    if (message) *message = e.what();
    return {e.status(), e.code()};
  }
}

bool valid_json(const std::string& text) {
  rapidjson::Document d;
  d.Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
  return !d.HasParseError();
}

TEST(ServerRequest, ParsesEveryFieldAndAppliesDefaults) {
  const AskRequest d = parse_ask_request(R"({"question":"who?"})", test_limits());
  EXPECT_EQ(d.question, "who?");
  EXPECT_EQ(d.k, 3);
  EXPECT_EQ(d.decoder_passages, 0);
  EXPECT_EQ(d.max_new_tokens, 20);
  EXPECT_EQ(d.stop, std::vector<std::string>{"\n"});
  EXPECT_FALSE(d.stream);
  EXPECT_FALSE(d.passages.has_value());

  const AskRequest r = parse_ask_request(
      R"({"question":"q","k":10,"decoder_passages":2,"max_new_tokens":100,"temperature":0.7,
          "top_p":0.9,"top_k":40,"seed":18446744073709551615,"stop":["a","bb"],"stream":true})",
      test_limits());
  EXPECT_EQ(r.k, 10);
  EXPECT_EQ(r.decoder_passages, 2);
  EXPECT_EQ(r.max_new_tokens, 100);
  EXPECT_FLOAT_EQ(r.temperature, 0.7f);
  EXPECT_FLOAT_EQ(r.top_p, 0.9f);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_EQ(r.seed, 18446744073709551615ull);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bb"}));
  EXPECT_TRUE(r.stream);

  const AskRequest p = parse_ask_request(
      R"({"question":"q","passages":[{"title":"T","text":"x"},{"text":"y","id":"7"}],
          "stop":"END"})",
      test_limits());
  ASSERT_TRUE(p.passages.has_value());
  ASSERT_EQ(p.passages->size(), 2u);
  EXPECT_EQ((*p.passages)[0].title, "T");
  EXPECT_EQ((*p.passages)[1].id, "7");
  EXPECT_EQ(p.k, 2);  // caller passages set k
  EXPECT_EQ(p.stop, std::vector<std::string>{"END"});
}

TEST(ServerRequest, ErrorsNameTheField) {
  struct Case {
    const char* body;
    const char* code;
    const char* names;  // must appear in the message
  };
  const Case cases[] = {
      {R"({})", "missing_field", "'question'"},
      {R"({"question":"   "})", "invalid_field", "'question'"},
      {R"({"question":1})", "invalid_field", "'question'"},
      {R"({"question":"q","k":"3"})", "invalid_field", "'k'"},
      {R"({"question":"q","k":1.5})", "invalid_field", "'k'"},
      {R"({"question":"q","k":-1})", "invalid_field", "'k'"},
      {R"({"question":"q","k":11})", "limit_exceeded", "'k'"},
      {R"({"question":"q","k":99999999999999999999})", "invalid_field", "'k'"},
      {R"({"question":"q","max_new_tokens":101})", "limit_exceeded", "'max_new_tokens'"},
      {R"({"question":"q","max_new_tokens":null})", "invalid_field", "'max_new_tokens'"},
      {R"({"question":"q","temperature":"hot"})", "invalid_field", "'temperature'"},
      {R"({"question":"q","temperature":-0.5})", "invalid_field", "'temperature'"},
      {R"({"question":"q","top_p":0})", "invalid_field", "'top_p'"},
      {R"({"question":"q","bm25_weight":-1})", "invalid_field", "'bm25_weight'"},
      {R"({"question":"q","bm25_weight":0,"dense_weight":0})", "invalid_field", "'dense_weight'"},
      {R"({"question":"q","rrf_k":-1})", "invalid_field", "'rrf_k'"},
      {R"({"question":"q","nprobe":"all"})", "invalid_field", "'nprobe'"},
      {R"({"question":"q","top_p":1.01})", "invalid_field", "'top_p'"},
      {R"({"question":"q","top_k":true})", "invalid_field", "'top_k'"},
      {R"({"question":"q","seed":-1})", "invalid_field", "'seed'"},
      {R"({"question":"q","seed":1e3})", "invalid_field", "'seed'"},
      {R"({"question":"q","stop":5})", "invalid_field", "'stop'"},
      {R"({"question":"q","stop":["a",1]})", "invalid_field", "'stop[1]'"},
      {R"({"question":"q","stop":["a","b","c","d"]})", "limit_exceeded", "'stop'"},
      {R"({"question":"q","stop":["123456789"]})", "limit_exceeded", "'stop[0]'"},
      {R"({"question":"q","stream":"yes"})", "invalid_field", "'stream'"},
      {R"({"question":"q","passages":{}})", "invalid_field", "'passages'"},
      {R"({"question":"q","passages":[{"title":"t"}]})", "missing_field", "'passages[0].text'"},
      {R"({"question":"q","passages":[{"text":"t","url":"u"}]})", "unknown_field",
       "'passages[0].url'"},
      {R"({"question":"q","passages":[{"text":5}]})", "invalid_field", "'passages[0].text'"},
      {R"({"question":"q","passages":[1]})", "invalid_field", "'passages[0]'"},
      {R"({"question":"q","decoder_passages":4})", "invalid_field", "'decoder_passages'"},
      {R"({"question":"q","model":"gpt"})", "unknown_field", "'model'"},
      {R"({"question":"q","question":"r"})", "invalid_field", "'question'"},
      {R"({"question":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"})", "limit_exceeded",
       "'question'"},
      {R"({"question":"q")", "invalid_json", "byte"},
      {R"([1,2])", "invalid_json", "object"},
      {"", "invalid_json", "byte"},
      {R"({"question":"q","max_new_tokens":1e400})", "invalid_json", "byte"},
      {R"({"question":"\ud800"})", "invalid_json", "byte"},
      {R"({"question":"a\udc00"})", "invalid_json", "byte 14: the escape \\udc00"},
      {"[[[[[[[[[[[[[[[[[", "invalid_json", "byte 8: nests deeper than 8 levels"},
      {"{\"question\":\"\xff\"}", "invalid_json", "byte"},
      {R"({"question":NaN})", "invalid_json", "byte"},
  };
  for (const auto& c : cases) {
    std::string message;
    const auto [status, code] = outcome(c.body, &message);
    EXPECT_EQ(status, 400) << c.body;
    EXPECT_EQ(code, c.code) << c.body << " -> " << message;
    EXPECT_NE(message.find(c.names), std::string::npos) << c.body << " -> " << message;
  }
}

TEST(ServerRequest, RetrievalFieldsReachTheRequest) {
  const AskRequest r = parse_ask_request(
      R"({"question":"q","nprobe":4,"ef_search":64,"bm25_weight":0.5,"dense_weight":0,"rrf_k":10})",
      test_limits());
  EXPECT_EQ(r.nprobe, 4);
  EXPECT_EQ(r.ef_search, 64);
  EXPECT_DOUBLE_EQ(r.bm25_weight, 0.5);
  EXPECT_DOUBLE_EQ(r.dense_weight, 0.0);
  EXPECT_EQ(r.rrf_k, 10);
  const AskRequest d = parse_ask_request(R"({"question":"q"})", test_limits());
  EXPECT_EQ(d.nprobe, -1);
  EXPECT_DOUBLE_EQ(d.bm25_weight, 1.0);
  EXPECT_DOUBLE_EQ(d.dense_weight, 1.0);
  EXPECT_EQ(d.rrf_k, 60);
}

// Log-probabilities: /ask's and completions' "logprobs" is the number of alternatives; chat's is
// a flag with "top_logprobs" beside it (which alone is an error, as OpenAI has it).
TEST(ServerRequest, LogprobsFieldsOfEachApi) {
  const AskLimits limits = test_limits();
  const auto chat = [&](const std::string& extra) {
    return parse_openai_request(
               Api::Chat, R"({"messages":[{"role":"user","content":"q"}])" + extra + "}", limits)
        .ask.logprobs;
  };
  const auto completion = [&](const std::string& extra) {
    return parse_openai_request(Api::Completion, R"({"prompt":"q")" + extra + "}", limits)
        .ask.logprobs;
  };
  EXPECT_EQ(parse_ask_request(R"({"question":"q"})", limits).logprobs, -1);
  EXPECT_EQ(parse_ask_request(R"({"question":"q","logprobs":0})", limits).logprobs, 0);
  EXPECT_EQ(parse_ask_request(R"({"question":"q","logprobs":20})", limits).logprobs, 20);
  EXPECT_EQ(chat(""), -1);
  EXPECT_EQ(chat(R"(,"logprobs":false)"), -1);
  EXPECT_EQ(chat(R"(,"logprobs":true)"), 0);
  EXPECT_EQ(chat(R"(,"logprobs":true,"top_logprobs":4)"), 4);
  EXPECT_EQ(chat(R"(,"top_logprobs":4,"logprobs":true)"), 4);
  EXPECT_EQ(chat(R"(,"logprobs":null,"top_logprobs":null)"), -1);
  EXPECT_EQ(completion(""), -1);
  EXPECT_EQ(completion(R"(,"logprobs":null)"), -1);
  EXPECT_EQ(completion(R"(,"logprobs":false)"), -1);
  EXPECT_EQ(completion(R"(,"logprobs":0)"), 0);
  EXPECT_EQ(completion(R"(,"logprobs":5)"), 5);
  const auto param_of = [](const std::function<void()>& parse) {
    try {
      parse();
    } catch (const ApiError& e) {
      return e.code() + " " + e.param();
    }
    return std::string("parsed");
  };
  EXPECT_EQ(param_of([&] { chat(R"(,"top_logprobs":2)"); }), "invalid_field top_logprobs");
  EXPECT_EQ(param_of([&] { chat(R"(,"logprobs":false,"top_logprobs":2)"); }),
            "invalid_field top_logprobs");
  EXPECT_EQ(param_of([&] { chat(R"(,"logprobs":true,"top_logprobs":21)"); }),
            "limit_exceeded top_logprobs");
  EXPECT_EQ(param_of([&] { chat(R"(,"logprobs":3)"); }), "invalid_field logprobs");
  EXPECT_EQ(param_of([&] { completion(R"(,"logprobs":true)"); }), "invalid_field logprobs");
  EXPECT_EQ(param_of([&] { completion(R"(,"logprobs":-1)"); }), "invalid_field logprobs");
  EXPECT_EQ(param_of([&] { completion(R"(,"top_logprobs":1)"); }), "unknown_field top_logprobs");
  EXPECT_EQ(param_of([&] { parse_ask_request(R"({"question":"q","logprobs":true})", limits); }),
            "invalid_field logprobs");
}

TEST(ServerAccess, KeysAndOrigins) {
  EXPECT_TRUE(same_key("secret", "secret"));
  EXPECT_FALSE(same_key("secreT", "secret"));
  EXPECT_FALSE(same_key("secret-and-more", "secret"));
  EXPECT_FALSE(same_key("", ""));  // an empty key never matches
  EXPECT_EQ(request_key("Bearer abc", "xyz"), "abc");
  EXPECT_EQ(request_key("bEaReR abc", ""), "abc");
  EXPECT_EQ(request_key("Basic abc", "xyz"), "xyz");
  EXPECT_EQ(request_key("Bearer ", "xyz"), "xyz");
  EXPECT_TRUE(key_allowed("anything", {}));
  EXPECT_TRUE(key_allowed("k2", {"k1", "k2"}));
  EXPECT_FALSE(key_allowed("", {"k1"}));
  EXPECT_FALSE(key_allowed("k3", {"k1", "k2"}));
  EXPECT_TRUE(origin_allowed("https://a.example", {"https://a.example"}));
  EXPECT_TRUE(origin_allowed("https://b.example", {"*"}));
  EXPECT_FALSE(origin_allowed("", {"*"}));
  EXPECT_FALSE(origin_allowed("https://b.example", {"https://a.example"}));
}

TEST(ServerRoutes, KnownPathsOnly) {
  EXPECT_EQ(route_of("/ask"), "/ask");
  EXPECT_EQ(route_of("/ask/"), "other");
  EXPECT_EQ(route_of("/v1/chat/completions"), kChatRoute);
  EXPECT_EQ(generate_api("/ask"), Api::Ask);
  EXPECT_EQ(generate_api(kCompletionsRoute), Api::Completion);
  EXPECT_FALSE(generate_api("/v1/info").has_value());
  EXPECT_TRUE(openai_route(kModelsRoute));
  EXPECT_FALSE(openai_route("/ask"));
  EXPECT_TRUE(probe_route("/metrics"));
  EXPECT_FALSE(probe_route("/v1/info"));
  // Request targets: origin form, and the absolute form servers must accept (RFC 9112 3.2.2).
  EXPECT_EQ(request_path("/ask?x=1&y=/z"), "/ask");
  EXPECT_EQ(request_path("/v1/info"), "/v1/info");
  EXPECT_EQ(request_path("http://h:8080/v1/info?q=1"), "/v1/info");
  EXPECT_EQ(request_path("HTTPS://h/ask"), "/ask");
  EXPECT_EQ(request_path("http://h"), "/");
  EXPECT_EQ(request_path("http://h?q=/ask"), "/");
  EXPECT_EQ(request_path("*"), "*");
  EXPECT_EQ(request_path("httpx://h/ask"), "httpx://h/ask");
}

TEST(ServerSse, EventFraming) {
  EXPECT_EQ(sse_event("token", "{\"text\":\"a\"}"), "event: token\ndata: {\"text\":\"a\"}\n\n");
  EXPECT_EQ(sse_event(nullptr, "[DONE]"), "data: [DONE]\n\n");
}

TEST(ServerRequest, LimitsAreInclusive) {
  EXPECT_EQ(outcome(R"({"question":"q","k":10,"max_new_tokens":100})").first, 200);
  EXPECT_EQ(outcome(R"({"question":"q","stop":["12345678","a","b"]})").first, 200);
  // 50 code points of 2 bytes each: the limit counts characters, not bytes.
  std::string q;
  for (int i = 0; i < 50; ++i) q += "\xc3\xa9";
  EXPECT_EQ(outcome("{\"question\":\"" + q + "\"}").first, 200);
  EXPECT_EQ(outcome("{\"question\":\"" + q + "x\"}").second, "limit_exceeded");
  // Depth 8 is allowed, 9 is not; brackets inside strings do not count.
  EXPECT_EQ(outcome(R"({"question":"[[[[[[[[[[{{{{{{{{{{","passages":[{"text":"]]]]"}]})").first,
            200);
  std::string deep = R"({"question":"q","stop":)";
  for (int i = 0; i < 7; ++i) deep += "[";
  deep += "\"a\"";
  for (int i = 0; i < 7; ++i) deep += "]";
  deep += "}";
  EXPECT_EQ(outcome(deep).second, "invalid_field");  // depth 8: parsed, then a type error
  EXPECT_EQ(outcome(R"({"a":[[[[[[[[1]]]]]]]]})").second, "invalid_json");  // depth 9
}

TEST(ServerRequest, HttpDateIsImfFixdate) {
  EXPECT_EQ(http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");  // RFC 9110's example
  EXPECT_EQ(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
  EXPECT_EQ(http_date(951782400), "Tue, 29 Feb 2000 00:00:00 GMT");
  EXPECT_EQ(http_date(4102444799), "Thu, 31 Dec 2099 23:59:59 GMT");
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  const std::string& text = http_date_now();
  EXPECT_TRUE(text == http_date(now) || text == http_date(now + 1)) << text;
}

TEST(ServerRequest, NestingDepthAndUtf8Helpers) {
  EXPECT_EQ(json_nesting_depth("{}", 10), 1);
  EXPECT_EQ(json_nesting_depth(R"({"a":[{"b":"[[[\"]]"}]})", 10), 3);
  EXPECT_EQ(json_nesting_depth(std::string(1000000, '['), 16), 17);  // stops early
  // Brackets in comments are not nesting (config files allow comments).
  EXPECT_EQ(json_nesting_depth("{\"a\": 1 /* [[[[ */, // {{{{\n \"b\": [2]}", 10), 2);
  EXPECT_EQ(json_nesting_depth("[1] /* [[[ unterminated", 10), 1);
  rapidjson::Document doc;
  std::string error;
  EXPECT_TRUE(parse_json("{\"a\": [1] // [[[[[[\n}", &doc, &error, 2, JsonComments::Allowed))
      << error;
  EXPECT_EQ(utf8_length("h\xc3\xa9llo \xe2\x82\xac\xf0\x9f\x98\x80"), 8u);
  EXPECT_TRUE(valid_json(error_json("c", "bad \"quote\" \\ \n")));
  EXPECT_TRUE(valid_json(json_quote(sanitize_utf8("a\xff\xc0\x80\xed\xa0\x80z"))));
  EXPECT_EQ(sanitize_utf8("ok \xe2\x82\xac"), "ok \xe2\x82\xac");
}

// ---- property test ----

// Random JSON-ish values of every type, sometimes deep, sometimes huge.
std::string random_value(std::mt19937_64& rng, int depth) {
  std::uniform_int_distribution<int> pick(0, 13);
  switch (depth > 12 ? pick(rng) % 9 : pick(rng)) {
    case 0:
      return "null";
    case 1:
      return rng() % 2 ? "true" : "false";
    case 2:
      return std::to_string(static_cast<int64_t>(rng()) % 200);
    case 3: {
      static const char* huge[] = {"1e400",
                                   "-1e400",
                                   "99999999999999999999999",
                                   "1e-400",
                                   "-0",
                                   "0.5",
                                   "18446744073709551616",
                                   "2147483648",
                                   "-2147483649",
                                   "1E+2",
                                   "9223372036854775807",
                                   "-9223372036854775808",
                                   "1.7976931348623157e308",
                                   "4.9e-324",
                                   "00",
                                   "01",
                                   "1.",
                                   ".5",
                                   "+1"};
      return huge[rng() % (sizeof huge / sizeof *huge)];
    }
    case 4:
    case 5: {
      static const char* strs[] = {"\"\"",
                                   "\"what is the capital of France?\"",
                                   "\"\\n\"",
                                   "\"\\ud800\"",
                                   "\"\\udc00\\ud800\"",
                                   "\"\\ud83d\\ude00\"",
                                   "\"\xff\xfe\"",
                                   "\"\xc0\x80\"",
                                   "\"\xed\xa0\x80\"",
                                   "\"\xe2\x82\"",
                                   "\"\xf4\x90\x80\x80\"",
                                   "\"tab\there\"",
                                   "\"\\u0000\"",
                                   "\"\\x41\"",
                                   "\"unterminated"};
      return strs[rng() % (sizeof strs / sizeof *strs)];
    }
    case 6:
      return "\"" + std::string(rng() % 200, 'a') + "\"";
    case 7:
    case 8: {
      std::string s = "[";
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i) s += (i ? "," : "") + random_value(rng, depth + 1);
      return s + "]";
    }
    case 9:
    case 10: {
      static const char* keys[] = {"question", "text", "title", "id", "k", "x", "stop", "passages"};
      std::string s = "{";
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i)
        s += std::string(i ? "," : "") + "\"" + keys[rng() % 8] +
             "\":" + random_value(rng, depth + 1);
      return s + "}";
    }
    default: {
      // A run of brackets far deeper than any limit.
      const size_t n = 1 + rng() % 5000;
      return std::string(n, rng() % 2 ? '[' : '{') + std::string(rng() % 2 ? n : 0, ']');
    }
  }
}

std::string random_request(std::mt19937_64& rng) {
  static const char* fields[] = {
      "question", "k",    "decoder_passages", "max_new_tokens", "temperature", "top_p", "top_k",
      "seed",     "stop", "stream",           "passages",       "unknown"};
  std::string s = "{";
  const int n = static_cast<int>(rng() % 6);
  bool first = true;
  if (rng() % 4) {
    s += "\"question\":\"who wrote it?\"";
    first = false;
  }
  for (int i = 0; i < n; ++i) {
    s += first ? "" : ",";
    first = false;
    s += std::string("\"") + fields[rng() % 12] + "\":" + random_value(rng, 1);
  }
  return s + "}";
}

std::string mutate(std::string s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    const size_t at = rng() % s.size();
    switch (rng() % 5) {
      case 0:
        s[at] = static_cast<char>(rng());
        break;
      case 1:
        s.erase(at, 1 + rng() % 4);
        break;
      case 2:
        s.insert(at, 1, "{}[]\",:\\\x80\xff"[rng() % 12]);
        break;
      case 3:
        s.resize(at);
        break;
      default:
        s.insert(at, s.substr(at, rng() % 16));
        break;
    }
  }
  return s;
}

void check_property(const std::string& body, int* parsed, int* rejected) {
  try {
    const AskRequest r = parse_ask_request(body, test_limits());
    // Whatever parsed satisfies every limit.
    ASSERT_FALSE(r.question.empty());
    ASSERT_LE(utf8_length(r.question), 50u);
    ASSERT_GE(r.k, 0);
    ASSERT_LE(r.k, 10);
    ASSERT_LE(r.max_new_tokens, 100);
    ASSERT_LE(r.stop.size(), 3u);
    ASSERT_TRUE(valid_json(json_quote(r.question)));
    ++*parsed;
  } catch (const ApiError& e) {
    ASSERT_GE(e.status(), 400) << body;
    ASSERT_LT(e.status(), 500) << body;
    ASSERT_FALSE(e.code().empty());
    ASSERT_TRUE(valid_json(error_json(e.code(), sanitize_utf8(e.what())))) << e.what();
    ++*rejected;
  } catch (const std::exception& e) {
    FAIL() << "unexpected exception " << e.what() << " for body: " << body;
  }
}

TEST(ServerRequest, PropertyNeverCrashesAlways4xx) {
  std::mt19937_64 rng(20240611);
  int parsed = 0, rejected = 0;
  const std::string valid =
      R"({"question":"who?","k":3,"max_new_tokens":5,"stop":["x"],"passages":[{"title":"a","text":"b"}],"temperature":0.5})";
  for (int i = 0; i < 4000; ++i) check_property(random_request(rng), &parsed, &rejected);
  for (int i = 0; i < 4000; ++i) check_property(mutate(valid, rng), &parsed, &rejected);
  for (int i = 0; i < 1000; ++i) {
    std::string bytes(rng() % 64, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    check_property(bytes, &parsed, &rejected);
  }
  // Depths far past the limit, objects and arrays, closed and not.
  for (size_t n : {100u, 10000u, 1000000u}) {
    check_property("{\"question\":\"q\",\"x\":" + std::string(n, '[') + std::string(n, ']') + "}",
                   &parsed, &rejected);
    std::string objs;
    for (size_t i = 0; i < n; ++i) objs += "{\"a\":";
    check_property(objs, &parsed, &rejected);
  }
  EXPECT_GT(parsed, 100) << "the generator should produce some valid requests";
  EXPECT_GT(rejected, 5000);
}

// ---- config ----

TEST(ServerConfig, DocumentedFileHoldsEveryFieldWithItsDefault) {
  const auto file = test::source_dir() / "config" / "server.json";
  config::ServerConfig loaded = config::load_server_config(file);
  EXPECT_EQ(config::server_config_to_json(loaded),
            config::server_config_to_json(config::ServerConfig{}));
  const std::string text = test::read_file(file);
  for (const auto& f : config::server_config_fields()) {
    std::string name = f.name;
    if (name.rfind("prompt.", 0) == 0) name = name.substr(7);
    EXPECT_NE(text.find("\"" + name + "\":"), std::string::npos) << name << " is not documented";
  }
}

TEST(ServerConfig, ErrorsNameTheField) {
  auto error_of = [](const std::string& json) {
    config::ServerConfig c;
    try {
      config::apply_config_json(c, json, "test.json");
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  EXPECT_NE(error_of(R"({"max_batchh":2})").find("'max_batchh'"), std::string::npos);
  EXPECT_NE(error_of(R"({"max_batch":"2"})").find("'max_batch'"), std::string::npos);
  EXPECT_NE(error_of(R"({"max_batch":0})").find("out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"prompt":{"nope":""}})").find("'prompt.nope'"), std::string::npos);
  EXPECT_NE(error_of(R"({"port":1,"port":2})").find("twice"), std::string::npos);
  EXPECT_NE(error_of("{").find("test.json"), std::string::npos);

  config::ServerConfig c;
  config::set_config_field(c, "batching", "off", "--batching");
  EXPECT_FALSE(c.batching);
  EXPECT_THROW(config::set_config_field(c, "port", "80x", "--port"), Error);
  c.model = "m";
  c.default_k = 30;
  EXPECT_THROW(config::validate_server_config(c), Error);
  c.default_k = 5;
  c.prompt.question_template = "{nope}";
  EXPECT_THROW(config::validate_server_config(c), Error);
}

// ---- logs and metrics ----

TEST(ServerLog, LinesAreValidJsonWhateverTheInput) {
  std::vector<std::string> lines;
  Logger logger([&](const std::string& l) { lines.push_back(l); });
  LogLine("info", "request")
      .str("path", "/a\"b\\c\n\xff\xfe")
      .num("status", 200)
      .ms("duration_ms", 1.23456)
      .flag("stream", true)
      .write(&logger);
  ASSERT_EQ(lines.size(), 1u);
  rapidjson::Document d;
  d.Parse(lines[0].c_str());
  ASSERT_FALSE(d.HasParseError()) << lines[0];
  EXPECT_STREQ(d["event"].GetString(), "request");
  EXPECT_EQ(d["status"].GetInt(), 200);
  EXPECT_TRUE(d["stream"].GetBool());
  EXPECT_TRUE(d.HasMember("ts"));
}

TEST(ServerMetrics, RendersPrometheusText) {
  Metrics m;
  m.request_done("/ask", 200, 0.2);
  m.request_done("/ask", 429, 0.001);
  m.engine_step(4, 0.01);
  m.generated_tokens += 7;
  const std::string text = m.render();
  EXPECT_NE(text.find("cepe_http_requests_total{route=\"/ask\",status=\"429\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("cepe_http_request_duration_seconds_bucket{route=\"/ask\",le=\"0.25\"} 2"),
            std::string::npos);
  EXPECT_NE(text.find("cepe_http_request_duration_seconds_bucket{route=\"/ask\",le=\"+Inf\"} 2"),
            std::string::npos);
  EXPECT_NE(text.find("cepe_engine_stepped_sequences_total 4"), std::string::npos);
  EXPECT_NE(text.find("cepe_generated_tokens_total 7"), std::string::npos);
  // Every line is a comment or `name{labels} value`.
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.rfind("# ", 0) == 0) continue;
    EXPECT_NE(line.find(' '), std::string::npos) << line;
  }
}

}  // namespace
}  // namespace cepe::server
