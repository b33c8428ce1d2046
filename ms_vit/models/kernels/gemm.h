// The float32 matrix product of ms_vit's CPU kernels: oneDNN's sgemm, on the kernels' thread pool (common.h).
//
// oneDNN is the libdnnl.so.3 in MindSpore's wheel (MindSpore loads it; no new dependency), built with the
// threadpool runtime; each of the pool's threads runs oneDNN's sgemm on a block of the result. On a 2-core AMD Zen 4
// it reaches 180-220 GFLOP/s on ViT's products (197 to 6,304 rows), where MindSpore 2.10's CPU MatMul reaches ~100
// and numpy's OpenBLAS 150-185 (whose worker thread, spinning between calls, also took a core from the operators in
// between).
#pragma once
#include <cstdint>

#include "common.h"

extern "C" int dnnl_threadpool_interop_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha,
                                             const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                                             float *c, int64_t ldc, void *threadpool);

namespace ms_vit {

// Below this many multiply-adds a product runs on the calling thread alone: handing half of it to a worker
// costs more than it saves.
constexpr int64_t kMinParallelMacs = int64_t{1} << 20;

// c (m, n) = alpha op(a) op(b) + beta c, row-major with leading dimensions lda, ldb, ldc; op(a) is (m, k), op(b)
// is (k, n). block(m0, m1, n0, n1) computes rows [m0, m1) and columns [n0, n1) of c with oneDNN's sgemm on the
// calling thread.
struct Gemm {
  bool trans_a, trans_b;
  int64_t k;
  float alpha;
  const float *a;
  int64_t lda;
  const float *b;
  int64_t ldb;
  float beta;
  float *c;
  int64_t ldc;

  int block(int64_t m0, int64_t m1, int64_t n0, int64_t n1) const {
    return dnnl_threadpool_interop_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m1 - m0, n1 - n0, k, alpha,
                                         a + (trans_a ? m0 : m0 * lda), lda, b + (trans_b ? n0 * ldb : n0), ldb,
                                         beta, c + m0 * ldc + n0, ldc, nullptr);
  }
};

// Runs body(m0, m1, n0, n1) over the blocks of an (m, n) result with inner dimension k, one block per thread of the
// pool: blocks of columns (whole multiples of 16, one AVX-512 vector) when the result has more columns than rows, else
// blocks of rows, so that the operand every thread reads whole is the smaller one. At least kMinParallelMacs / 2
// multiply-adds per block (fewer threads for smaller products); on the calling thread alone when `parallel` is false,
// inside a pool task, or below kMinParallelMacs. body returns a status (0: done); so does this (0 if every block's
// was 0).
//
// Each thread's sgemm runs on its own block, and the caller's work on that block (bias, residual, GELU) right after,
// on the same thread, while the block is in its cache: faster than oneDNN dividing each product over the same
// threads itself (docs/performance.md, ViT-Ti/16 and B/16 at batch 1).
template <typename Body>
int for_each_block(int64_t m, int64_t n, int64_t k, bool parallel, Body body) {
  const int64_t macs = m * n * k;
  const int threads = static_cast<int>(
      std::min<int64_t>(ThreadPool::instance().threads(), std::max<int64_t>(1, macs / (kMinParallelMacs / 2))));
  if (!parallel || threads == 1 || ThreadPool::in_task() || macs < kMinParallelMacs) return body(0, m, 0, n);
  const bool by_columns = n > m;
  const int64_t extent = by_columns ? n : m, grain = by_columns ? 16 : 1;
  const int64_t block = ((extent + threads - 1) / threads + grain - 1) / grain * grain;
  const int parts = static_cast<int>((extent + block - 1) / block);
  std::atomic<int> failed{0};
  ThreadPool::instance().run(parts, [&](int i) {
    const int64_t begin = i * block, end = std::min(extent, begin + block);
    if ((by_columns ? body(0, m, begin, end) : body(begin, end, 0, n)) != 0) failed = 1;
  });
  return failed;
}

// The product above over the pool's threads (see for_each_block), or on the calling thread when `parallel` is false.
// Returns oneDNN's status (0: done).
inline int gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc, bool parallel = true) {
  const Gemm product{trans_a, trans_b, k, alpha, a, lda, b, ldb, beta, c, ldc};
  return for_each_block(m, n, k, parallel,
                        [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) { return product.block(m0, m1, n0, n1); });
}

}  // namespace ms_vit
