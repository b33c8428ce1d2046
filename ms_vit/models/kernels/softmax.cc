// Softmax over the last axis and its gradient for MindSpore CPU, as AOT custom-op kernels (ms_vit.models.kernels).
//
// MindSpore's CPU graph expands the softmax gradient into Mul, ReduceSum, Sub, Mul over the (B, H, N, N)
// attention weights: 11 % of a ViT-Ti/16 training step at batch 32, and broadcast index tables at run time.
// Here each row is one pass: dx = y (dy - sum(dy y)).
#include <cmath>

#include "common.h"

using ms_vit::all_float32;
using ms_vit::rows_of;

// params: x (..., N); y (..., N).
extern "C" int SoftmaxLastAxis(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t cols = shapes[0][ndims[0] - 1], rows = rows_of(ndims[0], shapes[0]);
  ms_vit::for_each_row(rows, cols, [=](int64_t r) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float top = -INFINITY;
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < cols; ++j) top = std::max(top, xr[j]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      yr[j] = ms_vit::exp_approx(xr[j] - top);
      sum += yr[j];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) yr[j] *= inv;
  });
  return 0;
}

// params: y (..., N), dy (..., N); dx (..., N).
extern "C" int SoftmaxLastAxisGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *, void *) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t cols = shapes[0][ndims[0] - 1], rows = rows_of(ndims[0], shapes[0]);
  ms_vit::for_each_row(rows, cols, [=](int64_t r) {
    const float *yr = y + r * cols, *dyr = dy + r * cols;
    float *dxr = dx + r * cols;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < cols; ++j) dot += dyr[j] * yr[j];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - dot);
  });
  return 0;
}
