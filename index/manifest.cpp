#include "index/manifest.h"

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common/error.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "common/json.h"

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

double get_number(const rapidjson::Value& obj, const char* key, const std::string& origin,
                  const std::string& path) {
  const auto& v = member(obj, key, origin, path);
  CEPE_CHECK(v.IsNumber(), origin << ": field \"" << path << key << "\" must be a number");
  return v.GetDouble();
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

constexpr uint64_t kFileHashSeed = 0x46494c45;      // "FILE"
constexpr uint64_t kManifestHashSeed = 0x4d414e49;  // "MANI"
constexpr const char* kZeroChecksum = "0000000000000000";

// The manifest's own checksum covers its text with the checksum's digits zeroed: a flipped digit
// in k1 or a file hash must not pass as a valid (different) index description.
void check_manifest_checksum(const std::string& json, const rapidjson::Value& d,
                             const std::string& origin) {
  const auto it = d.FindMember("checksum");
  CEPE_CHECK(it != d.MemberEnd() && it->value.IsString() && it->value.GetStringLength() == 16,
             origin << ": field \"checksum\" must be 16 hex digits");
  const std::string want(it->value.GetString(), 16);
  const std::string needle = "\"checksum\": \"" + want + "\"";
  const size_t at = json.find(needle);
  CEPE_CHECK(at != std::string::npos, origin << ": checksum mismatch (the file is corrupt)");
  std::string zeroed = json;
  zeroed.replace(at + needle.size() - 17, 16, kZeroChecksum);
  CEPE_CHECK(
      hex(hash64(zeroed, kManifestHashSeed)) == want,
      origin << ": checksum mismatch (the file is corrupt or was edited); rebuild the index");
}

// A file name recorded in a manifest must name a file directly inside the index directory, as
// our builder writes them: one path component of UTF-8 without control characters (so the
// messages that name it stay one line).
bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         utf8_valid(name) && std::none_of(name.begin(), name.end(), [](char c) {
           return static_cast<unsigned char>(c) < 0x20 || c == 0x7F;
         });
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
  // Placeholder, replaced below by the checksum of the text with these 16 zeros in it.
  put(w, "checksum", kZeroChecksum);
  put(w, "format", "cepe-index");
  w.Key("version");
  w.Int(m.format_version);
  put(w, "retriever", m.retriever);
  if (has_bm25(m)) {
    w.Key("bm25");
    w.StartObject();
    put(w, "file", kBm25File);
    w.Key("k1");
    w.Double(m.bm25.k1);
    w.Key("b");
    w.Double(m.bm25.b);
    put(w, "stemmer", m.bm25.stemmer);
    put(w, "stopwords", m.bm25.stopwords);
    w.EndObject();
  }
  w.Key("files");
  w.StartObject();
  for (const auto& [name, d] : m.files) {
    w.Key(name.c_str(), static_cast<rapidjson::SizeType>(name.size()));
    w.StartObject();
    w.Key("bytes");
    w.Uint64(d.bytes);
    put(w, "hash", hex(d.hash));
    w.EndObject();
  }
  w.EndObject();
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
  if (m.removed > 0) {  // absent until a removal, so the manifests of built indexes are unchanged
    w.Key("removed");
    w.Uint64(m.removed);
  }
  w.Key("seconds");
  w.Double(m.build_seconds);
  w.Key("embed_passages_per_second");
  w.Double(m.embed_passages_per_second);
  put(w, "created", m.created);
  put(w, "cepe_version", m.cepe_version);
  w.EndObject();
  w.EndObject();
  std::string text = std::string(sb.GetString(), sb.GetSize()) + "\n";
  const size_t at = text.find(kZeroChecksum);
  text.replace(at, 16, hex(hash64(text, kManifestHashSeed)));
  return text;
}

IndexManifest manifest_from_json(const std::string& json, const std::string& origin) {
  rapidjson::Document d;
  parse_json_or_throw(json, &d, origin);
  CEPE_CHECK(d.IsObject(), origin << ": expected a JSON object");
  CEPE_CHECK(get_string(d, "format", origin, "") == "cepe-index",
             origin << ": not a CEPE index manifest (field \"format\")");
  IndexManifest m;
  m.format_version = static_cast<int>(get_u64(d, "version", origin, ""));
  CEPE_CHECK(m.format_version == kIndexFormatVersion,
             origin << ": index format version " << m.format_version
                    << " is not supported (expected " << kIndexFormatVersion
                    << "); rebuild the index");
  m.retriever = get_string(d, "retriever", origin, "");
  CEPE_CHECK(m.retriever == "bm25" || m.retriever == "dense" || m.retriever == "hybrid",
             origin << ": field \"retriever\" must be bm25, dense or hybrid (got "
                    << quoted_input(m.retriever) << ")");
  if (has_bm25(m)) {
    const auto& b = get_object(d, "bm25", origin);
    CEPE_CHECK(get_string(b, "file", origin, "bm25.") == kBm25File,
               origin << ": field \"bm25.file\" must be " << kBm25File);
    m.bm25.k1 = get_number(b, "k1", origin, "bm25.");
    m.bm25.b = get_number(b, "b", origin, "bm25.");
    m.bm25.stemmer = get_string(b, "stemmer", origin, "bm25.");
    m.bm25.stopwords = get_string(b, "stopwords", origin, "bm25.");
  }
  const auto& files = get_object(d, "files", origin);
  for (const auto& kv : files.GetObject()) {
    const std::string name(kv.name.GetString(), kv.name.GetStringLength());
    CEPE_CHECK(plain_file_name(name) && name != kManifestFile,
               origin << ": field \"files\" names " << quoted_input(name)
                      << ", which is not a file of the index directory");
    CEPE_CHECK(kv.value.IsObject(), origin << ": field \"files." << name << "\" must be an object");
    FileDigest fd;
    fd.bytes = get_u64(kv.value, "bytes", origin, "files." + name + ".");
    const std::string h = get_string(kv.value, "hash", origin, "files." + name + ".");
    char* end = nullptr;
    errno = 0;
    fd.hash = std::strtoull(h.c_str(), &end, 16);
    CEPE_CHECK(h.size() == 16 && *end == '\0' && errno == 0,
               origin << ": field \"files." << name << ".hash\" must be 16 hex digits");
    m.files[name] = fd;
  }
  CEPE_CHECK(m.files.count(kPassagesFile),
             origin << ": field \"files\" does not list " << kPassagesFile);
  if (has_bm25(m))
    CEPE_CHECK(m.files.count(kBm25File), origin << ": field \"files\" does not list " << kBm25File);
  if (has_dense(m))
    CEPE_CHECK(m.files.count(kFaissFile),
               origin << ": field \"files\" does not list " << kFaissFile);
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
  if (b.HasMember("removed")) m.removed = get_u64(b, "removed", origin, "build.");
  if (auto s = b.FindMember("seconds"); s != b.MemberEnd() && s->value.IsNumber())
    m.build_seconds = s->value.GetDouble();
  if (auto s = b.FindMember("embed_passages_per_second"); s != b.MemberEnd() && s->value.IsNumber())
    m.embed_passages_per_second = s->value.GetDouble();
  m.created = get_string(b, "created", origin, "build.");
  m.cepe_version = get_string(b, "cepe_version", origin, "build.");
  check_manifest_checksum(json, d, origin);
  return m;
}

FileDigest digest_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  CEPE_CHECK(in, file.string() << ": cannot open: " << std::strerror(errno));
  Hasher h(kFileHashSeed);
  // A multiple of 8: Hasher gives the same digest however the bytes are split on 8-byte bounds.
  std::vector<char> buf(1 << 20);
  FileDigest d;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<size_t>(in.gcount());
    if (got == 0) break;
    h.update(buf.data(), got);
    d.bytes += got;
  }
  CEPE_CHECK(in.eof(), file.string() << ": read error");
  d.hash = h.digest();
  return d;
}

std::map<std::string, FileDigest> digest_directory(const std::filesystem::path& dir) {
  std::map<std::string, FileDigest> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name == kManifestFile) continue;
    CEPE_CHECK(e.is_regular_file(),
               "internal: " << e.path().string() << " is not a regular file; an index holds files");
    out[name] = digest_file(e.path());
  }
  return out;
}

void verify_files(const std::filesystem::path& dir, const IndexManifest& m) {
  namespace fs = std::filesystem;
  for (const auto& [name, want] : m.files) {
    const fs::path f = dir / name;
    std::error_code ec;
    CEPE_CHECK(fs::is_regular_file(f, ec),
               f.string() << ": missing (the index manifest lists it); rebuild the index");
    const uint64_t size = fs::file_size(f, ec);
    CEPE_CHECK(!ec, f.string() << ": cannot stat: " << ec.message());
    CEPE_CHECK(size == want.bytes, f.string() << ": truncated or resized (" << size
                                              << " bytes, the manifest records " << want.bytes
                                              << "); rebuild the index");
    const FileDigest got = digest_file(f);
    CEPE_CHECK(got.bytes == want.bytes && got.hash == want.hash,
               f.string() << ": checksum mismatch (the file is corrupt); rebuild the index");
  }
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
