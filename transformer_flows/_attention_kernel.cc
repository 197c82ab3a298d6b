// One-pass dense attention on CPU: an XLA FFI kernel (see _attention_kernel.py).
//
// For every query row i of every batch element, one pass over the keys in chunks of
// kChunk computes the scores s_ij = <q_i, k_j>, and either
//   normalized (SA):    out_i = sum_j e^{s_ij - m_i} v_j / sum_j e^{s_ij - m_i}
//                       with the running maximum m_i (online softmax: when a chunk raises
//                       the maximum, the running sum and weighted sum are rescaled once);
//   unnormalized (USA): out_i = sum_j e^{s_ij - shift} v_j / nk.
// Scores, weights and the weighted sums stay in chunk-sized buffers (L1); only q, k, v and
// the output touch memory. The exponential below is branch-free so that it vectorizes.
//
// Inputs (leading batch dims B..., identical for all, as jax.vmap's broadcast_all gives):
//   q (B..., nq, k), keys (B..., nk, k), values (B..., nk, d), shift (B...)
// Output: (B..., nq, d). Attribute: normalized (0 or 1).
// Built by _attention_kernel.py with g++ against jax.ffi.include_dir(); no other deps.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 128;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// One binary, the best vector width of the machine that loads it (ifunc dispatch).
#define TF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TF_CLONES
#endif

// e^x, branch-free (vectorizable), within ~1 ulp: x = n ln2 + r, |r| <= ln2/2, e^r by a
// polynomial, 2^n by the exponent bits. Below the smallest normal result it returns 0,
// above the largest finite one +inf (the same limits as std::exp up to subnormals).
inline float exp_approx(float x) {
  const float hi = 88.7228394f, lo = -87.3365479f;
  float xc = std::min(std::max(x, lo), hi);
  // Round x/ln2 to the nearest integer with the 1.5·2^23 trick (no rounding instruction).
  const float magic = 12582912.0f;
  float t = xc * 1.44269504088896341f + magic;
  float n = t - magic;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // Cephes expf minimax polynomial on [-ln2/2, ln2/2].
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n in two halves, so n = 128 (x near hi) does not overflow the exponent field.
  int32_t ni = static_cast<int32_t>(n);
  int32_t n1 = ni >> 1, n2 = ni - n1;
  int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  float y = p * s1 * s2;
  y = x < lo ? 0.0f : y;
  y = x > hi ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

inline double exp_approx(double x) {
  const double hi = 709.782712893383973, lo = -708.396418532264079;
  double xc = std::min(std::max(x, lo), hi);
  const double magic = 6755399441055744.0;  // 1.5·2^52
  double t = xc * 1.44269504088896338700 + magic;
  double n = t - magic;
  double r = xc - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  // Taylor series to degree 13 on |r| <= ln2/2: truncation < 4e-18 relative.
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r * r + r + 1.0;
  int64_t ni = static_cast<int64_t>(n);
  int64_t n1 = ni >> 1, n2 = ni - n1;
  int64_t b1 = (n1 + 1023) << 52, b2 = (n2 + 1023) << 52;
  double s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  double y = p * s1 * s2;
  y = x < lo ? 0.0 : y;
  y = x > hi ? std::numeric_limits<double>::infinity() : y;
  return x != x ? x : y;
}

// Query rows are taken kRows at a time and the innermost loops run over those rows (one
// vector lane per query row), so nothing is reduced across a vector: each lane keeps its
// own running maximum, sum and weighted sum. Keys go in chunks of kChunk; a chunk's scores
// are kept in `scores` (kChunk x kRows, L1), its maximum found, the running sums rescaled
// once by e^{old max - new max}, then the weights e^{s - max} are summed and applied.
template <typename T>
constexpr int64_t kRows = 64 / sizeof(T) * 2;  // two 512-bit vectors of rows

template <typename T>
TF_CLONES void mix_rows(const T* q, const T* keys, const T* values, T shift, T* out, int64_t nq,
                        int64_t nk, int64_t k, int64_t d, bool normalized, T* qt, T* scores,
                        T* acc) {
  constexpr int64_t R = kRows<T>;
  constexpr T kInf = std::numeric_limits<T>::infinity();
  for (int64_t i0 = 0; i0 < nq; i0 += R) {
    const int64_t rows = std::min(R, nq - i0);
    // This block's queries, transposed to (k, R) and zero-padded past the last row.
    for (int64_t c = 0; c < k; ++c) {
      for (int64_t r = 0; r < R; ++r) qt[c * R + r] = r < rows ? q[(i0 + r) * k + c] : T(0);
    }
    alignas(64) T running_max[R], total[R], offset[R];
    for (int64_t r = 0; r < R; ++r) {
      running_max[r] = -kInf;
      total[r] = 0;
      offset[r] = shift;
    }
    for (int64_t a = 0; a < d * R; ++a) acc[a] = 0;
    for (int64_t j0 = 0; j0 < nk; j0 += kChunk) {
      const int64_t len = std::min(kChunk, nk - j0);
      alignas(64) T chunk_max[R];
      for (int64_t r = 0; r < R; ++r) chunk_max[r] = -kInf;
      for (int64_t j = 0; j < len; ++j) {
        const T* kj = keys + (j0 + j) * k;
        T* sj = scores + j * R;
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) sj[r] = qt[r] * kj[0];
        for (int64_t c = 1; c < k; ++c) {
          const T kc = kj[c];
          const T* qc = qt + c * R;
#pragma omp simd
          for (int64_t r = 0; r < R; ++r) sj[r] += qc[r] * kc;
        }
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) chunk_max[r] = std::max(chunk_max[r], sj[r]);
      }
      if (normalized) {
        // A new maximum: what was summed so far is rescaled by e^{old - new} (0 at first).
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) {
          const T new_max = std::max(running_max[r], chunk_max[r]);
          const T rescale = exp_approx(running_max[r] - new_max);
          total[r] *= rescale;
          running_max[r] = new_max;
          offset[r] = new_max;
          chunk_max[r] = rescale;
        }
        for (int64_t c = 0; c < d; ++c) {
          T* ac = acc + c * R;
#pragma omp simd
          for (int64_t r = 0; r < R; ++r) ac[r] *= chunk_max[r];
        }
      }
      for (int64_t j = 0; j < len; ++j) {
        T* sj = scores + j * R;
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) {
          const T w = exp_approx(sj[r] - offset[r]);
          sj[r] = w;
          total[r] += w;
        }
        const T* vj = values + (j0 + j) * d;
        for (int64_t c = 0; c < d; ++c) {
          const T vc = vj[c];
          T* ac = acc + c * R;
#pragma omp simd
          for (int64_t r = 0; r < R; ++r) ac[r] += sj[r] * vc;
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const T divisor = normalized ? total[r] : static_cast<T>(nk);
      for (int64_t c = 0; c < d; ++c) out[(i0 + r) * d + c] = acc[c * R + r] / divisor;
    }
  }
}

template <ffi::DataType DT>
ffi::Error Mix(ffi::ThreadPool pool, ffi::Buffer<DT> q, ffi::Buffer<DT> keys,
               ffi::Buffer<DT> values, ffi::Buffer<DT> shift, ffi::ResultBuffer<DT> out,
               int64_t normalized) {
  using T = ffi::NativeType<DT>;
  auto qd = q.dimensions(), kd = keys.dimensions(), vd = values.dimensions();
  const size_t rank = qd.size();
  if (rank < 2 || kd.size() != rank || vd.size() != rank) {
    return ffi::Error::InvalidArgument("tf_attention_mix: q, keys, values need equal rank >= 2");
  }
  const int64_t nq = qd[rank - 2], k = qd[rank - 1];
  const int64_t nk = kd[rank - 2], d = vd[rank - 1];
  if (kd[rank - 1] != k || vd[rank - 2] != nk) {
    return ffi::Error::InvalidArgument("tf_attention_mix: inconsistent q/keys/values shapes");
  }
  int64_t batch = 1;
  for (size_t a = 0; a + 2 < rank; ++a) {
    if (kd[a] != qd[a] || vd[a] != qd[a]) {
      return ffi::Error::InvalidArgument("tf_attention_mix: batch dims differ");
    }
    batch *= qd[a];
  }
  if (static_cast<int64_t>(shift.element_count()) != batch) {
    return ffi::Error::InvalidArgument("tf_attention_mix: one shift per batch element");
  }
  if (nk < 1 || k < 1) {
    return ffi::Error::InvalidArgument("tf_attention_mix: needs nk >= 1 and k >= 1");
  }
  constexpr int64_t R = kRows<T>;
  const T* qp = q.typed_data();
  const T* kp = keys.typed_data();
  const T* vp = values.typed_data();
  const T* sp = shift.typed_data();
  T* op = out->typed_data();
  const bool norm = normalized != 0;
  // Batch elements are claimed from a shared counter by the calling thread and by helpers
  // on XLA's intra-op thread pool. The caller waits only for elements already claimed (by
  // running threads), so a helper that starts late, or never, cannot stall it; each element
  // is computed by the same code whichever thread runs it, so results do not depend on
  // threading. Small batches stay on the calling thread.
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto run = [=](Shared& state) {
    std::vector<T> qt(static_cast<size_t>(k * R)), scores(static_cast<size_t>(kChunk * R));
    std::vector<T> acc(static_cast<size_t>(std::max<int64_t>(d, 1) * R));
    for (int64_t b; (b = state.next.fetch_add(1)) < batch;) {
      mix_rows<T>(qp + b * nq * k, kp + b * nk * k, vp + b * nk * d, sp[b], op + b * nq * d,
                  nq, nk, k, d, norm, qt.data(), scores.data(), acc.data());
      state.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t work = batch * nq * nk * (k + d + 1);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), batch) - 1;
  if (work >= (int64_t{1} << 20)) {
    for (int64_t h = 0; h < helpers; ++h) {
      pool.Schedule([shared, run, batch]() mutable {
        if (shared->next.load() < batch) run(*shared);
      });
    }
  }
  run(*shared);
  while (shared->done.load(std::memory_order_acquire) < batch) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TfAttentionMixF32, Mix<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("normalized"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(TfAttentionMixF64, Mix<ffi::F64>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::F64>>()
                                  .Attr<int64_t>("normalized"));
