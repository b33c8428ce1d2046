// Bias addition, the bias gradient and a 2-D transpose for MindSpore CPU, as AOT custom-op kernels (ms_vit.models.kernels).
//
// MindSpore's CPU BiasAddGrad sums a (rows, C) gradient at ~0.5 GB/s (44 ms for the (6304, 768) MLP gradient of
// ViT-Ti/16 at batch 32; 13.6 % of its training step). Here each thread sums a block of rows into its own
// float32 partial row with vectorised loops, then the partial rows are added.
#include <vector>

#include "common.h"

using ms_vit::all_float32;
using ms_vit::min_items;
using ms_vit::rows_of;

// params: x (..., C), bias (C); y (..., C) = x + bias.
extern "C" int AddBias(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                       void *) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t cols = shapes[0][ndims[0] - 1], rows = rows_of(ndims[0], shapes[0]);
  ms_vit::for_each_row(rows, cols, [=](int64_t r) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] + bias[j];
  });
  return 0;
}

// params: dy (..., C); dbias (C) = dy summed over all but the last axis.
extern "C" int SumToLastAxis(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  float *dbias = static_cast<float *>(params[1]);
  const int64_t cols = shapes[0][ndims[0] - 1], rows = rows_of(ndims[0], shapes[0]);
  std::vector<float> partial(static_cast<size_t>(ms_vit::max_workers() * cols), 0.f);
  const int workers = ms_vit::parallel_for(rows, min_items(cols), [&](int w, int64_t begin, int64_t end) {
    float *sum = partial.data() + w * cols;
    for (int64_t r = begin; r < end; ++r) {
      const float *dyr = dy + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) sum[j] += dyr[j];
    }
  });
  for (int64_t j = 0; j < cols; ++j) {
    float total = 0.f;
    for (int w = 0; w < workers; ++w) total += partial[w * cols + j];
    dbias[j] = total;
  }
  return 0;
}

// params: x (R, C); y (C, R) = x transposed, in 32 x 32 tiles (weight gradients computed as (x^T dy)^T).
extern "C" int Transpose2D(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                           void *) {
  if (nparam != 2 || ndims[0] != 2 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t rows = shapes[0][0], cols = shapes[0][1];
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile;
  ms_vit::for_each_row(row_tiles, kTile * cols, [=](int64_t rt) {
    const int64_t r0 = rt * kTile, r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) y[c * rows + r] = x[r * cols + c];
    }
  });
  return 0;
}
