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
  ms_vit::for_each_row(rows, cols, [=](int64_t r) { ms_vit::softmax_row(x + r * cols, y + r * cols, cols); });
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
    ms_vit::softmax_row_grad(y + r * cols, dy + r * cols, dx + r * cols, cols);
  });
  return 0;
}
