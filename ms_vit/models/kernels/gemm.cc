// A Dense layer's forward product for MindSpore CPU on the BLAS numpy ships (OpenBLAS), as an AOT custom-op kernel
// (ms_vit.models.kernels): one sgemm with the bias as its starting value (beta = 1).
//
// On a 2-core AMD Zen 4, MindSpore 2.10's CPU MatMul takes 15-25 % longer than OpenBLAS on ViT-Ti/16's products at
// batch 1 (197 rows), and its bias is one more operator; on training's products (thousands of rows) it is as fast
// or faster. ms_vit.models.kernels.Linear runs this kernel on up to BLAS_ROWS rows.
//
// The BLAS is the one numpy has already loaded into the process: its path and its sgemm's name (OpenBLAS's 64-bit
// integer build names it cblas_sgemm64_) are given at compile time (MS_VIT_SGEMM, MS_VIT_BLAS_INT), found by
// ms_vit.models.kernels in the running process.
#include <cstdint>
#include <cstring>

#include "common.h"

using ms_vit::all_float32;
using ms_vit::rows_of;

using blas_int = MS_VIT_BLAS_INT;
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
extern "C" void MS_VIT_SGEMM(int order, int trans_a, int trans_b, blas_int m, blas_int n, blas_int k, float alpha,
                             const float *a, blas_int lda, const float *b, blas_int ldb, float beta, float *c,
                             blas_int ldc);

namespace {

// c (m, n) = op(a) op(b) + beta c, row-major; op(a) is (m, k), op(b) is (k, n).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, const float *b, float beta,
          float *c) {
  MS_VIT_SGEMM(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f, a,
               trans_a ? m : k, b, trans_b ? k : n, beta, c, n);
}

}  // namespace

// params: x (..., I), weight (O, I), bias (O); y (..., O) = x weight^T + bias.
extern "C" int LinearForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t rows = rows_of(ndims[0], shapes[0]), in = shapes[1][1], out = shapes[1][0];
  for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * out, bias, out * sizeof(float));
  gemm(false, true, rows, out, in, x, weight, 1.0f, y);
  return 0;
}
