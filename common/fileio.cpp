#include "common/fileio.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace cepe {

namespace {
std::atomic<uint64_t> g_tmp_counter{0};

std::string errno_text() {
  return std::strerror(errno);
}
}  // namespace

AtomicFileWriter::AtomicFileWriter(const std::filesystem::path& path) : path_(path) {
  tmp_ = path;
  tmp_ += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(g_tmp_counter++);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CEPE_CHECK(fd_ >= 0, "cannot create " << tmp_.string() << ": " << errno_text());
  buffer_.reserve(1 << 20);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void AtomicFileWriter::flush() {
  size_t done = 0;
  while (done < buffer_.size()) {
    ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    CEPE_CHECK(n > 0, "cannot write " << tmp_.string() << ": " << errno_text());
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
}

void AtomicFileWriter::write(const void* data, size_t n) {
  CEPE_CHECK(fd_ >= 0 && !committed_, "internal: write after commit to " << path_.string());
  if (buffer_.size() + n > buffer_.capacity()) flush();
  if (n >= buffer_.capacity()) {
    buffer_.assign(static_cast<const char*>(data), n);
    flush();
  } else {
    buffer_.append(static_cast<const char*>(data), n);
  }
  size_ += n;
}

void AtomicFileWriter::write_at(uint64_t offset, const void* data, size_t n) {
  CEPE_CHECK(offset + n <= size_, "internal: write_at past the end of " << path_.string());
  flush();
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::pwrite(fd_, static_cast<const char*>(data) + done, n - done,
                         static_cast<off_t>(offset + done));
    if (w < 0 && errno == EINTR) continue;
    CEPE_CHECK(w > 0, "cannot write " << tmp_.string() << ": " << errno_text());
    done += static_cast<size_t>(w);
  }
}

void AtomicFileWriter::commit() {
  CEPE_CHECK(!committed_, "internal: double commit of " << path_.string());
  flush();
  CEPE_CHECK(::fsync(fd_) == 0, "cannot fsync " << tmp_.string() << ": " << errno_text());
  ::close(fd_);
  fd_ = -1;
  CEPE_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0,
             "cannot rename " << tmp_.string() << " to " << path_.string() << ": " << errno_text());
  committed_ = true;
  fsync_directory(path_.parent_path().empty() ? "." : path_.parent_path());
}

void write_file_atomic(const std::filesystem::path& path, std::string_view content) {
  AtomicFileWriter w(path);
  w.write(content);
  w.commit();
}

std::string read_whole_file(const std::filesystem::path& path, std::string_view what) {
  const std::string named = what.empty() ? path.string() : std::string(what) + " " + path.string();
  std::error_code ec;
  CEPE_CHECK(!std::filesystem::is_directory(path, ec),
             "cannot read " << named << ": it is a directory");
  std::ifstream in(path, std::ios::binary);
  CEPE_CHECK(in, "cannot open " << named << ": " << errno_text());
  std::ostringstream ss;
  ss << in.rdbuf();
  CEPE_CHECK(!in.bad(), "cannot read " << named << ": " << errno_text());
  return ss.str();
}

void fsync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some filesystems do not allow opening directories
  ::fsync(fd);
  ::close(fd);
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CEPE_CHECK(fd >= 0, "cannot open " << path.string() << ": " << errno_text());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    CEPE_THROW("cannot stat " << path.string() << ": " << errno_text());
  }
  size_ = static_cast<size_t>(st.st_size);
  identity_ = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      CEPE_THROW("cannot mmap " << path.string() << ": " << errno_text());
    }
    data_ = static_cast<const char*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<char*>(data_), size_);
}

int remove_stale_temps(const std::filesystem::path& path) {
  const std::string prefix = path.filename().string() + ".tmp-";
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  std::error_code ec;
  int removed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    std::error_code rm;
    if (std::filesystem::remove(entry.path(), rm)) ++removed;
  }
  return removed;
}

}  // namespace cepe
