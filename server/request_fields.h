// The field checks behind parse_ask_request(), shared with the OpenAI-compatible bodies
// (server/openai.h) so both name the offending field the same way. Internal to server/.
#pragma once

#include <rapidjson/document.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "qa/passage.h"
#include "server/request.h"

namespace cepe::server::fields {

/// Throws a 400 invalid_field: "'field' what" (the field quoted by quoted_input).
[[noreturn]] void bad(const std::string& field, const std::string& what);
/// Throws a 400 unknown_field: "unknown field 'field'" (quoted the same way).
[[noreturn]] void unknown(const std::string& field);
/// The string value of `v` (which must be a string).
std::string str(const rapidjson::Value& v);
/// An integer in [lo, hi]; below lo is invalid_field, above hi limit_exceeded.
int get_int(const rapidjson::Value& v, const std::string& field, long long lo, long long hi,
            const std::string& limit_note = "");
/// A number in [lo, hi] (or (lo, hi]) that float represents without rounding to 0.
float get_float(const rapidjson::Value& v, const std::string& field, double lo, double hi,
                bool lo_open);
/// A string.
std::string get_string(const rapidjson::Value& v, const std::string& field);
/// Parses `body` into `doc` under the depth limit; it must be an object (400 invalid_json).
void parse_object(std::string_view body, int max_depth, rapidjson::Document& doc);
/// Calls `field(name, value)` for each member of the object `doc`, in order; a name that appears
/// twice is a 400 invalid_field ("appears twice") before its second value is seen.
void for_each_field(const rapidjson::Document& doc,
                    const std::function<void(const std::string&, const rapidjson::Value&)>& field);
/// A stop string or array of them, within the limits.
std::vector<std::string> get_stop(const rapidjson::Value& v, const std::string& name,
                                  const AskLimits& limits);
/// Caller passages ({title, text, id} objects), at most limits.max_k.
std::vector<qa::Passage> get_passages(const rapidjson::Value& v, const std::string& name,
                                      const AskLimits& limits);
/// Reads the retrieval settings (nprobe, ef_search, bm25_weight, dense_weight, rrf_k) into `r`;
/// false when `name` is none of them.
bool get_retrieval_field(const std::string& name, const rapidjson::Value& v, AskRequest& r);
/// Checks the question (named `name`) and settles k and decoder_passages against each other.
void check_question(AskRequest& r, bool has_k, const std::string& name, const AskLimits& limits);

}  // namespace cepe::server::fields
