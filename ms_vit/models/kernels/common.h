// Helpers shared by ms_vit's CPU kernels (MindSpore AOT custom ops).
#pragma once
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace ms_vit {

// e^x in float32 for vectorised loops, inlined (no call per vector to glibc's libmvec, no scalar expf per row
// tail): Cody-Waite reduction to r = x - n ln 2, |r| <= ln 2 / 2, Cephes' degree-6 polynomial for e^r (relative
// error ~1e-7), times 2^n built in the exponent bits. x is clamped to [-87.3, 88.3]: below, it returns ~1e-38
// instead of 0 or a denormal (nothing a softmax or an erf can see).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// d^-0.5 rounded to float32, as the model's Python float scale is when it multiplies a float32 tensor.
inline float attention_scale(int64_t d) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))); }

// erf(z) by Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7), as PyTorch's vectorised CPU erf.
inline float erf_as(float z) {
  const float a = std::fabs(z);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                     t * 1.061405429f))));
  const float r = 1.0f - poly * exp_approx(-a * a);
  return std::copysign(r, z);
}

// The exact GELU, 0.5 x (1 + erf(x / sqrt 2)).
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erf_as(x * 0.70710678118654752f)); }

// Its derivative, Phi(x) + x phi(x) (Phi the normal CDF, phi its density).
inline float gelu_erf_slope(float x) {
  const float cdf = 0.5f * (1.0f + erf_as(x * 0.70710678118654752f));
  return cdf + x * 0.39894228040143268f * exp_approx(-0.5f * x * x);
}

// y = softmax(x) over n floats (y may be x).
inline void softmax_row(const float *x, float *y, int64_t n) {
  float top = -INFINITY;
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < n; ++j) top = std::max(top, x[j]);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    y[j] = exp_approx(x[j] - top);
    sum += y[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] *= inv;
}

// The gradient of y = softmax(x) over n floats, in one pass: dx = y (dy - sum(dy y)) (dx may be dy).
inline void softmax_row_grad(const float *y, const float *dy, float *dx, int64_t n) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; ++j) dot += dy[j] * y[j];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dx[j] = y[j] * (dy[j] - dot);
}

inline bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

inline int64_t element_count(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// Rows of a tensor seen as (rows, last axis).
inline int64_t rows_of(int ndim, const int64_t *shape) { return element_count(ndim - 1, shape); }

// Work below this many floats per thread runs on fewer threads: handing a block to the pool's worker costs ~1 us
// while it waits spinning, ~10-50 us once it sleeps (see ThreadPool), about what 16 K floats of memory traffic take.
constexpr int64_t kMinFloatsPerThread = 1 << 14;

// Items per thread block when each item holds `floats` floats (rows of a matrix, tiles, ...).
inline int64_t min_items(int64_t floats) {
  return std::max<int64_t>(1, kMinFloatsPerThread / std::max<int64_t>(floats, 1));
}

// The threads of one process's kernels: the caller and (CPUs this process may run on - 1) workers, started once
// and kept; the matrix products run on them too, a block of the result per thread (gemm.h).
//
// Not OpenMP, not a thread per call: MindSpore initialises libgomp with spinning waits, and idle OpenMP workers
// spinning after each call slowed the next MindSpore kernels by up to 2x on a 2-core machine; starting a
// std::thread costs 30-60 us, as long as a whole kernel at ViT-Ti/16's batch 1. A worker waits for work spinning
// for kSpinMicroseconds (the time between two kernels of a graph is 10-30 us), then sleeps on a condition variable,
// so that it does not take a core from MindSpore's own operators for long.
//
// run(n, task) runs task(i) for i in [0, n), each i on one thread, and returns when all are done. A call made while
// the pool is busy (from another thread, or from inside a task) runs its tasks on the calling thread, one by one.
class ThreadPool {
 public:
  static constexpr int kSpinMicroseconds = 100;

  // The process's pool, created on first use (again in a forked child: a child has none of its parent's threads).
  static ThreadPool &instance() {
    static std::atomic<ThreadPool *> pool{nullptr};
    static std::mutex creating;
    ThreadPool *p = pool.load(std::memory_order_acquire);
    if (p != nullptr && p->pid_ == getpid()) return *p;
    std::lock_guard<std::mutex> lock(creating);
    p = pool.load(std::memory_order_acquire);
    if (p == nullptr || p->pid_ != getpid()) {
      p = new ThreadPool();          // never deleted: workers are detached and run until the process ends
      pool.store(p, std::memory_order_release);
    }
    return *p;
  }

  int threads() const { return threads_; }

  template <typename Task>
  void run(int n, Task &&task) {
    if (n <= 1 || threads_ == 1 || in_task_ || !submitting_.try_lock()) {
      for (int i = 0; i < n; ++i) task(i);
      return;
    }
    using Callable = std::remove_reference_t<Task>;
    job_.store([](void *context, int i) { (*static_cast<Callable *>(context))(i); }, std::memory_order_relaxed);
    context_.store(const_cast<void *>(static_cast<const void *>(&task)), std::memory_order_relaxed);
    count_.store(n, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    state_.store((state_.load(std::memory_order_relaxed) & ~kIndexMask) + kEpoch, std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    in_task_ = true;
    work();
    in_task_ = false;
    while (done_.load(std::memory_order_acquire) < n) pause();
    submitting_.unlock();
  }

  // Whether the calling thread is running one of the pool's tasks.
  static bool in_task() { return in_task_; }

 private:
  static constexpr uint64_t kEpoch = uint64_t{1} << 32, kIndexMask = kEpoch - 1;

  ThreadPool() : pid_(getpid()), threads_(cpus()) {
    for (int w = 1; w < threads_; ++w) std::thread([this] { serve(); }).detach();
  }

  static int cpus() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  // Claims and runs the current job's tasks until none is left. state_ holds (epoch << 32 | next task): a task is
  // claimed by a compare-and-swap, so a worker that reads a job just as the next one is published claims nothing.
  void work() {
    uint64_t state = state_.load(std::memory_order_acquire);
    for (;;) {
      if ((state & kIndexMask) >= static_cast<uint64_t>(count_.load(std::memory_order_relaxed))) return;
      void (*job)(void *, int) = job_.load(std::memory_order_relaxed);
      void *context = context_.load(std::memory_order_relaxed);
      if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) continue;
      job(context, static_cast<int>(state & kIndexMask));
      done_.fetch_add(1, std::memory_order_release);
      state = state_.load(std::memory_order_acquire);
    }
  }

  void serve() {
    in_task_ = true;           // tasks of this thread never wait for the pool
    uint64_t epoch = state_.load() >> 32;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 0; (state_.load(std::memory_order_acquire) >> 32) == epoch; ++spins) {
        pause();
        if ((spins & 255) == 255 &&
            std::chrono::steady_clock::now() - start > std::chrono::microseconds(kSpinMicroseconds)) {
          std::unique_lock<std::mutex> lock(mutex_);
          sleeping_.fetch_add(1, std::memory_order_seq_cst);
          wake_.wait(lock, [&] { return (state_.load(std::memory_order_seq_cst) >> 32) != epoch; });
          sleeping_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      epoch = state_.load(std::memory_order_acquire) >> 32;
      work();
    }
  }

  const pid_t pid_;
  const int threads_;
  std::mutex submitting_, mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleeping_{0}, done_{0};
  std::atomic<uint64_t> state_{0};
  // the job: job_(context_, i) for i < count_ (atomics: a worker may read them while the next job is published)
  std::atomic<void (*)(void *, int)> job_{nullptr};
  std::atomic<void *> context_{nullptr};
  std::atomic<int> count_{0};
  static inline thread_local bool in_task_ = false;
};

inline int max_workers() { return ThreadPool::instance().threads(); }

// Runs body(worker, begin, end) over [0, n) in blocks of at least min_block items on the pool's threads (worker
// numbers 0 .. workers-1). Returns the number of workers (blocks).
template <typename Body>
int parallel_for(int64_t n, int64_t min_block, Body body) {
  const int workers = static_cast<int>(std::min<int64_t>(max_workers(), std::max<int64_t>(1, n / min_block)));
  const int64_t block = (n + workers - 1) / workers;
  ThreadPool::instance().run(workers, [&](int w) { body(w, std::min(n, w * block), std::min(n, (w + 1) * block)); });
  return workers;
}

// Runs body(r) for r in [0, rows) over threads, each r a unit of floats_per_row floats of work.
template <typename Body>
void for_each_row(int64_t rows, int64_t floats_per_row, Body body) {
  parallel_for(rows, min_items(floats_per_row), [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r);
  });
}

}  // namespace ms_vit
