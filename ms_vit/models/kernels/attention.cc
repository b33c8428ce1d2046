// The attention's core, softmax(q k^T / sqrt d) v for every head, as AOT custom-op kernels (ms_vit.models.kernels):
// one op forward and one backward in place of five each (split the heads, q k^T, softmax, times v, merge the
// heads). The heads are read from the qkv projection and written to the merged (B, N, H d) layout through the GEMM's
// leading dimensions: nothing is copied. Each pool task runs one head (or a block of its queries) with oneDNN's sgemm
// on its own thread (gemm.h).
#include <algorithm>
#include <vector>

#include "gemm.h"

using ms_vit::all_float32;
using ms_vit::gemm;

namespace {

// Queries per forward task: enough tasks for every thread at batch 1 (3 heads of ViT-Ti/16 on 2 threads would
// leave one idle half the time), rows long enough for the GEMM's kernels.
constexpr int64_t kQueryBlock = 64;
}  // namespace

// params: qkv (B, N, 3, H, d); out (B, N, H, d) = softmax(q k^T d^-0.5) v per (image, head), probs (B, H, N, N) =
// the softmax (kept for the gradient).
extern "C" int AttentionForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                                void *) {
  if (nparam != 3 || ndims[0] != 5 || !all_float32(nparam, dtypes)) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  float *out = static_cast<float *>(params[1]);
  float *probs = static_cast<float *>(params[2]);
  const int64_t b = shapes[0][0], n = shapes[0][1], h = shapes[0][3], d = shapes[0][4];
  const int64_t qkv_row = 3 * h * d, out_row = h * d, blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const float scale = ms_vit::attention_scale(d);
  std::atomic<int> failed{0};
  ms_vit::ThreadPool::instance().run(static_cast<int>(b * h * blocks), [&](int task) {
    const int64_t bh = task / blocks, i = bh / h, head = bh % h, q0 = (task % blocks) * kQueryBlock;
    const int64_t rows = std::min(kQueryBlock, n - q0);
    const float *q = qkv + (i * n + q0) * qkv_row + head * d, *k = qkv + i * n * qkv_row + (h + head) * d,
                *v = qkv + i * n * qkv_row + (2 * h + head) * d;
    float *p = probs + (bh * n + q0) * n;
    int status = gemm(false, true, rows, n, d, scale, q, qkv_row, k, qkv_row, 0.0f, p, n, false);  // (rows, N)
    for (int64_t r = 0; r < rows; ++r) ms_vit::softmax_row(p + r * n, p + r * n, n);
    status |= gemm(false, false, rows, d, n, 1.0f, p, n, v, qkv_row, 0.0f, out + (i * n + q0) * out_row + head * d,
                   out_row, false);                                                                 // (rows, d)
    if (status != 0) failed = 1;
  });
  return failed;
}

// params: qkv (B, N, 3, H, d), probs (B, H, N, N), dout (B, N, H, d); dqkv (B, N, 3, H, d). With P the softmax,
// S = q k^T d^-0.5: dv = P^T dout, dP = dout v^T, dS = P (dP - rowsum(dP P)), dq = dS k d^-0.5, dk = dS^T q d^-0.5.
extern "C" int AttentionBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 4 || ndims[0] != 5 || !all_float32(nparam, dtypes)) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *probs = static_cast<const float *>(params[1]);
  const float *dout = static_cast<const float *>(params[2]);
  float *dqkv = static_cast<float *>(params[3]);
  const int64_t b = shapes[0][0], n = shapes[0][1], h = shapes[0][3], d = shapes[0][4];
  const int64_t qkv_row = 3 * h * d, out_row = h * d;
  const float scale = ms_vit::attention_scale(d);
  std::atomic<int> failed{0};
  ms_vit::ThreadPool::instance().run(static_cast<int>(b * h), [&](int bh) {
    const int64_t i = bh / h, head = bh % h;
    const int64_t at_q = i * n * qkv_row + head * d, at_k = at_q + h * d, at_v = at_q + 2 * h * d;
    const float *p = probs + bh * n * n, *dy = dout + i * n * out_row + head * d;
    std::vector<float> ds(static_cast<size_t>(n * n));
    int status = gemm(true, false, n, d, n, 1.0f, p, n, dy, out_row, 0.0f, dqkv + at_v, qkv_row, false);  // dv
    status |= gemm(false, true, n, n, d, 1.0f, dy, out_row, qkv + at_v, qkv_row, 0.0f, ds.data(), n, false);  // dP
    for (int64_t r = 0; r < n; ++r) ms_vit::softmax_row_grad(p + r * n, ds.data() + r * n, ds.data() + r * n, n);
    status |= gemm(false, false, n, d, n, scale, ds.data(), n, qkv + at_k, qkv_row, 0.0f, dqkv + at_q, qkv_row,
                   false);                                                                              // dq
    status |= gemm(true, false, n, d, n, scale, ds.data(), n, qkv + at_q, qkv_row, 0.0f, dqkv + at_k, qkv_row,
                   false);                                                                              // dk
    if (status != 0) failed = 1;
  });
  return failed;
}
