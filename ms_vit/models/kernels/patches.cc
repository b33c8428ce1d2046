// Image <-> patch rows for the patch embedding on MindSpore CPU, as AOT custom-op kernels (ms_vit.models.kernels).
//
// The patch embedding runs on CPU as patches x weight matrix (MindSpore's CPU Conv2d with a stride-P P x P
// kernel runs at under 1 GFLOP/s). Cutting the image into patch rows is a 6-D transpose, which MindSpore's
// CPU Transpose does through an 8-byte index per element; here rows of P pixels are copied.
#include <cmath>

#include "common.h"

using ms_vit::all_float32;

namespace {
// Copies between image (B, C, S, S) and patches (B, g*g, C*P*P), g = S / P; to_patches picks the direction.
void copy_patches(float *image, float *patches, int64_t b, int64_t c, int64_t s, int64_t p, bool to_patches) {
  const int64_t g = s / p;
  ms_vit::for_each_row(b * g, g * c * p * p, [=](int64_t bgy) {  // one row of patches of one image
    const int64_t i = bgy / g, gy = bgy % g;
    for (int64_t gx = 0; gx < g; ++gx) {
      float *patch = patches + ((i * g + gy) * g + gx) * c * p * p;
      for (int64_t ch = 0; ch < c; ++ch) {
        for (int64_t py = 0; py < p; ++py) {
          float *pixels = image + ((i * c + ch) * s + gy * p + py) * s + gx * p;
          float *row = patch + (ch * p + py) * p;
          if (to_patches) {
            std::memcpy(row, pixels, p * sizeof(float));
          } else {
            std::memcpy(pixels, row, p * sizeof(float));
          }
        }
      }
    }
  });
}

// Checks the shapes and copies: image (B, C, S, S) <-> patches (B, N, C*P*P), N = (S / P)^2. Returns 0 or 1.
int run(float *image, const int64_t *image_shape, float *patches, const int64_t *patches_shape, bool to_patches) {
  const int64_t b = image_shape[0], c = image_shape[1], s = image_shape[2], n = patches_shape[1];
  const int64_t g = static_cast<int64_t>(std::sqrt(static_cast<double>(n)) + 0.5);
  if (g * g != n || s % g != 0) return 1;
  copy_patches(image, patches, b, c, s, s / g, to_patches);
  return 0;
}
}  // namespace

// params: image (B, C, S, S); patches (B, N, C*P*P).
extern "C" int Patchify(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  if (nparam != 2 || ndims[0] != 4 || ndims[1] != 3 || !all_float32(nparam, dtypes)) return 1;
  return run(static_cast<float *>(params[0]), shapes[0], static_cast<float *>(params[1]), shapes[1], true);
}

// The gradient of Patchify: params: dpatches (B, N, C*P*P), image (B, C, S, S) (for its shape); dimage.
extern "C" int Unpatchify(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (nparam != 3 || ndims[0] != 3 || ndims[1] != 4 || !all_float32(nparam, dtypes)) return 1;
  return run(static_cast<float *>(params[2]), shapes[1], static_cast<float *>(params[0]), shapes[0], false);
}
