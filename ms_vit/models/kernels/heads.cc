// Attention head layout changes for MindSpore CPU, as AOT custom-op kernels (ms_vit.models.kernels).
//
// MindSpore's CPU Transpose precomputes, for every transpose in the graph, a table of one 8-byte source index
// per element (built when the graph compiles, kept for the life of the graph) and gathers through it. A ViT
// has 8 transposes per block (q, k, v and the merged heads, forward and backward): ~1.9 GB of index tables
// for ViT-B/16 at batch 8, and a gather that reads 3 bytes of index and data for every byte it moves. These
// kernels move whole head rows (d contiguous floats) with memcpy instead, and fold the q scaling and the split
// of the qkv projection into the same pass.
#include <cmath>

#include "common.h"

using ms_vit::all_float32;

namespace {

inline void copy_scaled(const float *src, float *dst, int64_t count, float scale) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) dst[j] = src[j] * scale;
}
}  // namespace

// qkv (B, N, 3, H, d) -> q (B, H, N, d) scaled by d^-0.5 (the attention's scale), k (B, H, N, d), v (B, H, N, d).
extern "C" int SplitHeads(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (nparam != 4 || ndims[0] != 5 || !all_float32(nparam, dtypes)) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  float *out[3] = {static_cast<float *>(params[1]), static_cast<float *>(params[2]),
                   static_cast<float *>(params[3])};
  const int64_t b = shapes[0][0], n = shapes[0][1], h = shapes[0][3], d = shapes[0][4];
  const float scale = ms_vit::attention_scale(d);
  ms_vit::for_each_row(b * n, 3 * h * d, [=](int64_t bn) {
    const int64_t i = bn / n, t = bn % n;
    const float *src = qkv + bn * 3 * h * d;
    for (int part = 0; part < 3; ++part) {
      for (int64_t head = 0; head < h; ++head) {
        const float *row = src + (part * h + head) * d;
        float *dst = out[part] + ((i * h + head) * n + t) * d;
        if (part == 0) {
          copy_scaled(row, dst, d, scale);
        } else {
          std::memcpy(dst, row, d * sizeof(float));
        }
      }
    }
  });
  return 0;
}

// Gradient of SplitHeads: dq, dk, dv (B, H, N, d) -> dqkv (B, N, 3, H, d).
extern "C" int SplitHeadsGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                              void *, void *) {
  if (nparam != 4 || ndims[0] != 4 || !all_float32(nparam, dtypes)) return 1;
  const float *grads[3] = {static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                           static_cast<const float *>(params[2])};
  float *dqkv = static_cast<float *>(params[3]);
  const int64_t b = shapes[0][0], h = shapes[0][1], n = shapes[0][2], d = shapes[0][3];
  const float scale = ms_vit::attention_scale(d);
  ms_vit::for_each_row(b * n, 3 * h * d, [=](int64_t bn) {
    const int64_t i = bn / n, t = bn % n;
    float *dst = dqkv + bn * 3 * h * d;
    for (int part = 0; part < 3; ++part) {
      for (int64_t head = 0; head < h; ++head) {
        const float *row = grads[part] + ((i * h + head) * n + t) * d;
        float *out = dst + (part * h + head) * d;
        if (part == 0) {
          copy_scaled(row, out, d, scale);
        } else {
          std::memcpy(out, row, d * sizeof(float));
        }
      }
    }
  });
  return 0;
}

// x (A, B, C, d) -> y (A, C, B, d): swaps the two middle axes, moving rows of d floats. Its own gradient.
// Merges heads: (B, H, N, d) -> (B, N, H, d), and back.
extern "C" int SwapMiddleAxes(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  if (nparam != 2 || ndims[0] != 4 || !all_float32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t a = shapes[0][0], b = shapes[0][1], c = shapes[0][2], d = shapes[0][3];
  ms_vit::for_each_row(a * c, b * d, [=](int64_t ac) {  // output block (i, k, :, :)
    const int64_t i = ac / c, k = ac % c;
    float *dst = y + ac * b * d;
    for (int64_t j = 0; j < b; ++j) std::memcpy(dst + j * d, x + ((i * b + j) * c + k) * d, d * sizeof(float));
  });
  return 0;
}
