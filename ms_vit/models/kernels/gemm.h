// The float32 matrix product of ms_vit's CPU kernels: oneDNN's sgemm, on the kernels' thread pool (common.h).
//
// oneDNN is the libdnnl.so.3 in MindSpore's wheel (MindSpore loads it; no new dependency), built with the
// threadpool runtime: its sgemm runs on the threads it is given. On a 2-core AMD Zen 4 it reaches 180-220 GFLOP/s on
// ViT's products (197 to 6,304 rows), where MindSpore 2.10's CPU MatMul reaches ~100 and numpy's OpenBLAS 150-185
// (whose worker thread, spinning between calls, also took a core from the operators in between).
#pragma once
#include <cstdint>
#include <functional>

#include "common.h"

namespace dnnl {
namespace threadpool_interop {
// oneDNN v3's dnnl_threadpool_iface.hpp: the virtual functions in its order.
struct threadpool_iface {
  virtual int get_num_threads() const = 0;
  virtual bool get_in_parallel() const = 0;
  virtual void parallel_for(int n, const std::function<void(int, int)> &fn) = 0;
  virtual uint64_t get_flags() const = 0;
  virtual ~threadpool_iface() {}
};
}  // namespace threadpool_interop
}  // namespace dnnl

extern "C" int dnnl_threadpool_interop_sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha,
                                             const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                                             float *c, int64_t ldc, void *threadpool);

namespace ms_vit {

// The kernels' pool as oneDNN sees it (synchronous: parallel_for returns when the work is done).
class DnnlPool final : public dnnl::threadpool_interop::threadpool_iface {
 public:
  int get_num_threads() const override { return ThreadPool::instance().threads(); }
  bool get_in_parallel() const override { return ThreadPool::in_task(); }
  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    ThreadPool::instance().run(n, [&](int i) { fn(i, n); });
  }
  uint64_t get_flags() const override { return 0; }
};

// c (m, n) = alpha op(a) op(b) + beta c, row-major with leading dimensions lda, ldb, ldc; op(a) is (m, k), op(b)
// is (k, n). On the pool's threads, or on the calling thread alone when `parallel` is false (inside a pool task).
// Returns oneDNN's status (0: done).
inline int gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc, bool parallel = true) {
  static DnnlPool pool;
  return dnnl_threadpool_interop_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb,
                                       beta, c, ldc, parallel ? &pool : nullptr);
}

}  // namespace ms_vit
