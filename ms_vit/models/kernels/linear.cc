// A Dense layer's matrix products for MindSpore CPU on oneDNN's sgemm (gemm.h), as AOT custom-op kernels
// (ms_vit.models.kernels): the forward product with its bias, and the whole gradient (dx, dweight, dbias) in one op.
#include <cstdint>
#include <vector>

#include "gemm.h"

using ms_vit::all_float32;
using ms_vit::gemm;

namespace {

// sums (O) = the column sums of m (R, O). Each worker sums a block of rows into its own float32 partial row with
// vectorised loops, then the partial rows are added (MindSpore's CPU BiasAddGrad ran at ~0.5 GB/s: 13.6 % of a
// ViT-Ti/16 training step).
void sum_rows(const float *m, int64_t rows, int64_t cols, float *sums) {
  std::vector<float> partial(static_cast<size_t>(ms_vit::max_workers() * cols), 0.f);
  const int workers = ms_vit::parallel_for(rows, ms_vit::min_items(cols), [&](int w, int64_t begin, int64_t end) {
    float *sum = partial.data() + w * cols;
    for (int64_t r = begin; r < end; ++r) {
      const float *row = m + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) sum[j] += row[j];
    }
  });
  for (int64_t j = 0; j < cols; ++j) {
    float total = 0.f;
    for (int w = 0; w < workers; ++w) total += partial[w * cols + j];
    sums[j] = total;
  }
}


// Fills y (R, O) with x weight^T + bias (+ residual (R, O) when given), weight (O, ...) seen as (O, I); given h (R, O),
// h = x weight^T + bias and y = GELU(h), the exact GELU. Each thread does all of it on its own block of the result,
// adding after its product (the block then in its cache). y must not be residual's memory (MindSpore gives a Custom
// op's outputs their own).
int linear(const float *x, const float *weight, const float *bias, const float *residual, int64_t rows, int64_t in,
           int64_t out, float *y, float *h = nullptr) {
  float *product = h == nullptr ? y : h;
  const ms_vit::Gemm gemm{false, true, in, 1.0f, x, in, weight, in, 0.0f, product, out};
  return ms_vit::for_each_block(rows, out, in, true, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    if (gemm.block(r0, r1, c0, c1) != 0) return 1;
    for (int64_t r = r0; r < r1; ++r) {         // the block is in this thread's cache
      float *pr = product + r * out, *yr = y + r * out;
      const float *rr = residual == nullptr ? nullptr : residual + r * out;
      if (h != nullptr) {
#pragma omp simd
        for (int64_t j = c0; j < c1; ++j) {
          pr[j] += bias[j];
          yr[j] = ms_vit::gelu_erf(pr[j]);
        }
      } else if (rr != nullptr) {
#pragma omp simd
        for (int64_t j = c0; j < c1; ++j) pr[j] += rr[j] + bias[j];
      } else {
#pragma omp simd
        for (int64_t j = c0; j < c1; ++j) pr[j] += bias[j];
      }
    }
    return 0;
  });
}

// dx = dy weight, dweight = dy^T x, dbias = dy's column sums.
int linear_backward(const float *x, const float *weight, const float *dy, int64_t rows, int64_t in, int64_t out,
                    float *dx, float *dweight, float *dbias) {
  if (gemm(false, false, rows, in, out, 1.0f, dy, out, weight, in, 0.0f, dx, in) != 0) return 1;
  if (gemm(true, false, out, in, rows, 1.0f, dy, out, x, in, 0.0f, dweight, in) != 0) return 1;
  sum_rows(dy, rows, out, dbias);
  return 0;
}

// The dims of a Dense layer's product: rows of x (..., I), I, O of weight (O, ...) (a convolution's weight
// (O, C, P, P) is read as (O, C P P)).
struct Dims {
  int64_t rows, in, out;
};
Dims dims(int *ndims, int64_t **shapes) {
  const int64_t out = shapes[1][0];
  return {ms_vit::rows_of(ndims[0], shapes[0]), ms_vit::element_count(ndims[1], shapes[1]) / out, out};
}

}  // namespace

// params: x (R, I), weight (O, I), bias (O); y (R, O) = x weight^T + bias.
extern "C" int LinearForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const Dims d = dims(ndims, shapes);
  return linear(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                static_cast<const float *>(params[2]), nullptr, d.rows, d.in, d.out,
                static_cast<float *>(params[3])) == 0 ? 0 : 1;
}

// params: x (R, I), weight (O, I), bias (O), residual (R, O); y (R, O) = x weight^T + bias + residual.
extern "C" int LinearResidualForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *, void *) {
  if (nparam != 5 || !all_float32(nparam, dtypes)) return 1;
  const Dims d = dims(ndims, shapes);
  return linear(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                static_cast<const float *>(params[2]), static_cast<const float *>(params[3]), d.rows, d.in, d.out,
                static_cast<float *>(params[4])) == 0 ? 0 : 1;
}

// params: x (R, I), weight (O, I), dy (R, O); dx (R, I), dweight (O, I), dbias (O).
extern "C" int LinearBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  if (nparam != 6 || !all_float32(nparam, dtypes)) return 1;
  const Dims d = dims(ndims, shapes);
  return linear_backward(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                         static_cast<const float *>(params[2]), d.rows, d.in, d.out, static_cast<float *>(params[3]),
                         static_cast<float *>(params[4]), static_cast<float *>(params[5]));
}

// The MLP's first layer and its activation in one op. params: x (R, I), weight (O, I), bias (O); h (R, O) =
// x weight^T + bias (kept for the gradient), y (R, O) = GELU(h), the exact (erf) one.
extern "C" int LinearGeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 5 || !all_float32(nparam, dtypes)) return 1;
  const Dims d = dims(ndims, shapes);
  return linear(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                static_cast<const float *>(params[2]), nullptr, d.rows, d.in, d.out, static_cast<float *>(params[4]),
                static_cast<float *>(params[3])) == 0 ? 0 : 1;
}

// params: x (R, I), weight (O, I), h (R, O), dy (R, O); dx (R, I), dweight (O, I), dbias (O): the gradient of
// LinearGeluForward, through dh = dy GELU'(h).
extern "C" int LinearGeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *, void *) {
  if (nparam != 7 || !all_float32(nparam, dtypes)) return 1;
  const Dims d = dims(ndims, shapes);
  const float *h = static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[3]);
  std::vector<float> dh(static_cast<size_t>(d.rows * d.out));
  float *dhp = dh.data();
  ms_vit::for_each_row(d.rows, d.out, [=](int64_t r) {
#pragma omp simd
    for (int64_t j = r * d.out; j < (r + 1) * d.out; ++j) dhp[j] = dy[j] * ms_vit::gelu_erf_slope(h[j]);
  });
  return linear_backward(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), dhp, d.rows,
                         d.in, d.out, static_cast<float *>(params[4]), static_cast<float *>(params[5]),
                         static_cast<float *>(params[6]));
}
