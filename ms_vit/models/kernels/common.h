// Helpers shared by ms_vit's CPU kernels (MindSpore AOT custom ops).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace ms_vit {

// e^x in float32 for vectorised loops, inlined (no call per vector to glibc's libmvec, no scalar expf per row
// tail): Cody-Waite reduction to r = x - n ln 2, |r| <= ln 2 / 2, Cephes' degree-6 polynomial for e^r (relative
// error ~1e-7), times 2^n built in the exponent bits. x is clamped to [-87.3, 88.3]: below, it returns ~1e-38
// instead of 0 or a denormal (nothing a softmax or an erf can see).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

inline int64_t element_count(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// Rows of a tensor seen as (rows, last axis).
inline int64_t rows_of(int ndim, const int64_t *shape) { return element_count(ndim - 1, shape); }

// Work below this many floats per thread runs on fewer threads: starting a std::thread costs ~30-60 us, about
// what 128 K floats of memory traffic take (ViT-Ti/16 at batch 1 ran 124 kernels per image at ~70 us each).
constexpr int64_t kMinFloatsPerThread = 1 << 17;

// Items per thread block when each item holds `floats` floats (rows of a matrix, tiles, ...).
inline int64_t min_items(int64_t floats) {
  return std::max<int64_t>(1, kMinFloatsPerThread / std::max<int64_t>(floats, 1));
}

inline int max_workers() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// Runs body(worker, begin, end) over [0, n) in blocks of at least min_block items, on up to
// hardware_concurrency std::threads (the caller's thread is worker 0). Returns the number of workers.
// Not OpenMP: MindSpore initialises libgomp with spinning waits, and idle OpenMP workers spinning after each
// call slowed the next MindSpore kernels by up to 2x on a 2-core machine.
template <typename Body>
int parallel_for(int64_t n, int64_t min_block, Body body) {
  const int workers = static_cast<int>(std::min<int64_t>(max_workers(), std::max<int64_t>(1, n / min_block)));
  const int64_t block = (n + workers - 1) / workers;
  std::vector<std::thread> threads;
  for (int w = 1; w < workers; ++w)
    threads.emplace_back(body, w, std::min(n, w * block), std::min(n, (w + 1) * block));
  body(0, int64_t{0}, std::min(n, block));
  for (auto &t : threads) t.join();
  return workers;
}

// Runs body(r) for r in [0, rows) over threads, each r a unit of floats_per_row floats of work.
template <typename Body>
void for_each_row(int64_t rows, int64_t floats_per_row, Body body) {
  parallel_for(rows, min_items(floats_per_row), [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r);
  });
}

}  // namespace ms_vit
