// Exact (erf) GELU and its gradient for MindSpore CPU, as AOT custom-op kernels (ms_vit.models.kernels).
//
// erf(z) follows Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7), as PyTorch's vectorised CPU erf does
// (ms_vit::gelu_erf in common.h); the loops vectorise and large tensors are split over threads.
// Signature: MindSpore's AOT interface, int f(int nparam, void **params, int *ndims, int64_t **shapes,
// const char **dtypes, void *stream, void *extra); inputs then outputs in params, float32 only.
#include <cmath>

#include "common.h"

using ms_vit::all_float32;
using ms_vit::element_count;


// y = 0.5 x (1 + erf(x / sqrt 2)).  params: x, y.
extern "C" int GeluErf(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                       void *) {
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = element_count(ndims[0], shapes[0]);
  ms_vit::parallel_for(n, ms_vit::kMinFloatsPerThread, [=](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = ms_vit::gelu_erf(x[i]);
  });
  return 0;
}

// dx = dy (Phi(x) + x phi(x)), Phi the normal CDF, phi its density.  params: x, dy, dx.
extern "C" int GeluErfGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                           void *) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = element_count(ndims[0], shapes[0]);
  ms_vit::parallel_for(n, ms_vit::kMinFloatsPerThread, [=](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) dx[i] = dy[i] * ms_vit::gelu_erf_slope(x[i]);
  });
  return 0;
}
