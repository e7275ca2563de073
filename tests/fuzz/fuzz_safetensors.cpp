// A .safetensors file as a user's checkpoint brings it: the header is JSON naming dtypes, shapes
// and byte ranges, all of which must be checked before a byte of tensor data is read. Every
// tensor the file accepts is read whole, so a range that runs off the mapping faults here.
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

using namespace cepe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_input(fuzz::as_text(data, size), "model.safetensors");
  fuzz::expect_clean([&] {
    const SafeTensorsFile file(path);
    for (const auto& [name, entry] : file.entries()) {
      const Tensor t = file.view(name);
      if (t.nbytes() != entry.end - entry.begin) fuzz::fail("tensor '" + name + "' size mismatch");
      const auto* bytes = static_cast<const volatile uint8_t*>(t.raw());
      uint8_t sum = 0;
      for (size_t i = 0; i < t.nbytes(); ++i) sum += bytes[i];
      (void)sum;
    }
    WeightStore::open(path).names();
  });
  return 0;
}
