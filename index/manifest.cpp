#include "index/manifest.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include "common/error.h"
#include "common/fileio.h"

namespace cepe::index {

namespace {
using Writer = rapidjson::PrettyWriter<rapidjson::StringBuffer>;

void put(Writer& w, const char* key, const std::string& v) {
  w.Key(key);
  w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
}

const rapidjson::Value& member(const rapidjson::Value& obj, const char* key,
                               const std::string& origin, const std::string& path) {
  auto it = obj.FindMember(key);
  CEPE_CHECK(it != obj.MemberEnd(), origin << ": missing field \"" << path << key << "\"");
  return it->value;
}

std::string get_string(const rapidjson::Value& obj, const char* key, const std::string& origin,
                       const std::string& path) {
  const auto& v = member(obj, key, origin, path);
  CEPE_CHECK(v.IsString(), origin << ": field \"" << path << key << "\" must be a string");
  return std::string(v.GetString(), v.GetStringLength());
}

uint64_t get_u64(const rapidjson::Value& obj, const char* key, const std::string& origin,
                 const std::string& path) {
  const auto& v = member(obj, key, origin, path);
  CEPE_CHECK(v.IsUint64(),
             origin << ": field \"" << path << key << "\" must be a non-negative integer");
  return v.GetUint64();
}

const rapidjson::Value& get_object(const rapidjson::Value& obj, const char* key,
                                   const std::string& origin) {
  const auto& v = member(obj, key, origin, "");
  CEPE_CHECK(v.IsObject(), origin << ": field \"" << key << "\" must be an object");
  return v;
}
}  // namespace

std::string manifest_to_json(const IndexManifest& m) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  put(w, "format", "cepe-index");
  w.Key("version");
  w.Int(m.format_version);
  w.Key("embedder");
  w.StartObject();
  put(w, "spec", m.embedder_spec);
  put(w, "kind", m.embedder_kind);
  put(w, "fingerprint", m.embedder_fingerprint);
  w.Key("dim");
  w.Int(m.dim);
  w.Key("config");
  w.StartObject();
  for (const auto& [k, v] : m.embedder_config) put(w, k.c_str(), v);
  w.EndObject();
  w.EndObject();
  w.Key("faiss");
  w.StartObject();
  put(w, "factory", m.faiss_factory);
  put(w, "description", m.faiss_description);
  put(w, "metric", "inner_product");
  put(w, "file", kFaissFile);
  w.Key("nprobe");
  w.Int(m.default_nprobe);
  w.Key("ef_search");
  w.Int(m.default_ef_search);
  w.Key("trained_on");
  w.Uint64(m.trained_on);
  w.EndObject();
  w.Key("passages");
  w.StartObject();
  put(w, "file", kPassagesFile);
  w.Key("count");
  w.Uint64(m.passages);
  w.EndObject();
  w.Key("build");
  w.StartObject();
  w.Key("inputs");
  w.StartArray();
  for (const auto& in : m.inputs) w.String(in.c_str(), static_cast<rapidjson::SizeType>(in.size()));
  w.EndArray();
  w.Key("skipped");
  w.Uint64(m.skipped);
  w.Key("seconds");
  w.Double(m.build_seconds);
  w.Key("embed_passages_per_second");
  w.Double(m.embed_passages_per_second);
  put(w, "created", m.created);
  put(w, "cepe_version", m.cepe_version);
  w.EndObject();
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize()) + "\n";
}

IndexManifest manifest_from_json(const std::string& json, const std::string& origin) {
  rapidjson::Document d;
  d.Parse(json.data(), json.size());
  CEPE_CHECK(!d.HasParseError(), origin << ": invalid JSON at offset " << d.GetErrorOffset() << ": "
                                        << rapidjson::GetParseError_En(d.GetParseError()));
  CEPE_CHECK(d.IsObject(), origin << ": expected a JSON object");
  CEPE_CHECK(get_string(d, "format", origin, "") == "cepe-index",
             origin << ": not a CEPE index manifest (field \"format\")");
  IndexManifest m;
  m.format_version = static_cast<int>(get_u64(d, "version", origin, ""));
  CEPE_CHECK(m.format_version == kIndexFormatVersion,
             origin << ": index format version " << m.format_version
                    << " is not supported (expected " << kIndexFormatVersion
                    << "); rebuild the index");
  const auto& e = get_object(d, "embedder", origin);
  m.embedder_spec = get_string(e, "spec", origin, "embedder.");
  m.embedder_kind = get_string(e, "kind", origin, "embedder.");
  m.embedder_fingerprint = get_string(e, "fingerprint", origin, "embedder.");
  m.dim = static_cast<int>(get_u64(e, "dim", origin, "embedder."));
  if (auto c = e.FindMember("config"); c != e.MemberEnd() && c->value.IsObject()) {
    for (const auto& kv : c->value.GetObject()) {
      if (kv.value.IsString()) m.embedder_config[kv.name.GetString()] = kv.value.GetString();
    }
  }
  const auto& f = get_object(d, "faiss", origin);
  m.faiss_factory = get_string(f, "factory", origin, "faiss.");
  m.faiss_description = get_string(f, "description", origin, "faiss.");
  m.default_nprobe = static_cast<int>(get_u64(f, "nprobe", origin, "faiss."));
  m.default_ef_search = static_cast<int>(get_u64(f, "ef_search", origin, "faiss."));
  m.trained_on = get_u64(f, "trained_on", origin, "faiss.");
  const auto& p = get_object(d, "passages", origin);
  m.passages = get_u64(p, "count", origin, "passages.");
  const auto& b = get_object(d, "build", origin);
  if (auto in = b.FindMember("inputs"); in != b.MemberEnd() && in->value.IsArray()) {
    for (const auto& v : in->value.GetArray())
      if (v.IsString()) m.inputs.emplace_back(v.GetString());
  }
  m.skipped = get_u64(b, "skipped", origin, "build.");
  if (auto s = b.FindMember("seconds"); s != b.MemberEnd() && s->value.IsNumber())
    m.build_seconds = s->value.GetDouble();
  if (auto s = b.FindMember("embed_passages_per_second"); s != b.MemberEnd() && s->value.IsNumber())
    m.embed_passages_per_second = s->value.GetDouble();
  m.created = get_string(b, "created", origin, "build.");
  m.cepe_version = get_string(b, "cepe_version", origin, "build.");
  return m;
}

IndexManifest read_manifest(const std::filesystem::path& dir) {
  CEPE_CHECK(std::filesystem::is_directory(dir),
             "index directory " << dir.string() << " does not exist");
  const auto path = dir / kManifestFile;
  CEPE_CHECK(std::filesystem::exists(path),
             dir.string() << " is not a CEPE index: it has no " << kManifestFile
                          << " (an interrupted `cepe index build` leaves none)");
  return manifest_from_json(read_whole_file(path), path.string());
}

void write_manifest(const std::filesystem::path& dir, const IndexManifest& m) {
  write_file_atomic(dir / kManifestFile, manifest_to_json(m));
}

}  // namespace cepe::index
