// Depthwise kxk convolution for XLA CPU, called through the XLA FFI by mnv3_jax.depthwise.
//
// x (N, H, W, C) and y (N, Ho, Wo, C) are float32 or bfloat16 (NHWC, row-major); the kernel is
// float32 (k, k, C); arithmetic is float32. Three entry points: the forward, the input gradient
// and the weight gradient of y[n,ho,wo,c] = sum_{i,j} x[n, ho*s+i-pt, wo*s+j-pl, c] * w[i,j,c]
// (zero outside the image). Rows are split over XLA's intra-op thread pool; channels are
// processed 8 at a time with GCC vector extensions, so the compiler emits AVX or NEON code.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shared {
  std::atomic<int64_t> next{0}, done{0};
  int64_t n = 0;
  std::function<void(int64_t)> fn;
  std::mutex m;
  std::condition_variable cv;
};

// Runs fn(0..n-1) on the calling thread and the intra-op pool. The caller takes items too, so
// this finishes even when no pool thread is free; late helpers find no item left and return.
void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto sh = std::make_shared<Shared>();
  sh->n = n;
  sh->fn = std::move(fn);
  auto work = [sh]() {
    for (int64_t i; (i = sh->next.fetch_add(1)) < sh->n;) {
      sh->fn(i);
      if (sh->done.fetch_add(1) + 1 == sh->n) {
        std::lock_guard<std::mutex> lock(sh->m);
        sh->cv.notify_all();
      }
    }
  };
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(sh->m);
  sh->cv.wait(lock, [&] { return sh->done.load() == sh->n; });
}

constexpr int kV = 8;        // channels per inner block
constexpr int kMaxK = 7;
typedef float v8 __attribute__((vector_size(32), aligned(4)));   // unaligned loads/stores
inline v8 Ld(const float* p) { return *reinterpret_cast<const v8*>(p); }
inline void St(float* p, v8 v) { *reinterpret_cast<v8*>(p) = v; }

inline float ToF(float v) { return v; }
inline float ToF(uint16_t v) { uint32_t u = uint32_t(v) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline void FromF(float v, float* p) { *p = v; }
inline void FromF(float v, uint16_t* p) {
  uint32_t u; std::memcpy(&u, &v, 4); u += 0x7fffu + ((u >> 16) & 1u); *p = uint16_t(u >> 16);
}

// Row n of an (rows, len) array as float32: the array itself for float, else converted into buf.
inline const float* RowF(const float* a, int64_t n, int64_t len, float*) { return a + n * len; }
inline const float* RowF(const uint16_t* a, int64_t n, int64_t len, float* buf) {
  const uint16_t* p = a + n * len;
  for (int64_t q = 0; q < len; ++q) buf[q] = ToF(p[q]);
  return buf;
}
inline void StoreRow(const float* src, float* dst, int64_t len) { std::memcpy(dst, src, len * 4); }
inline void StoreRow(const float* src, uint16_t* dst, int64_t len) {
  for (int64_t q = 0; q < len; ++q) FromF(src[q], dst + q);
}

inline int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

struct Geom {
  int64_t N, H, W, C, Ho, Wo, k, s, pt, pl;
};

// Output columns [lo, hi) of a row correlation out[t] = sum_j in[t*s + j - p] whose taps are all
// inside [0, n_in).
inline void Interior(int64_t n_out, int64_t n_in, int64_t k, int64_t s, int64_t p, int64_t* lo,
                     int64_t* hi) {
  *lo = std::min(n_out, FloorDiv(p + s - 1, s));
  *hi = std::max(*lo, std::min(n_out, FloorDiv(n_in - k + p, s) + 1));
}

// G consecutive interior output columns of CorrRow; x0 is the input column of the first tap.
template <int G>
inline void InteriorBlock(const float* const* rows, int64_t k, const float* w, int64_t ws_i,
                     int64_t ws_j, int64_t C, int64_t cv, int64_t s, int64_t x0, float* out) {
  for (int64_t c = 0; c < cv; c += kV) {
    v8 a[G];
    for (int g = 0; g < G; ++g) a[g] = v8{};
    for (int64_t i = 0; i < k; ++i) {
      if (!rows[i]) continue;
      const float* xr = rows[i] + x0 * C + c;
      for (int64_t j = 0; j < k; ++j) {
        const v8 wv = Ld(w + (i * ws_i + j * ws_j) * C + c);
        const float* xj = xr + j * C;
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) a[g] += Ld(xj + g * s * C) * wv;
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) St(out + g * C + c, a[g]);
  }
}

// out[t, c] = sum_{i < k, rows[i]} sum_{j < k} rows[i][(t*s + j - p), c] * w[i, j, c], t < n_out.
// rows[i] are input rows of n_in columns (nullptr: outside the image); w is (k, k, C) with the
// given row stride (ws_i) and column stride (ws_j) in units of C, so a flipped kernel is a view.
void CorrRow(const float* const* rows, int64_t k, const float* w, int64_t ws_i, int64_t ws_j,
             int64_t n_in, int64_t n_out, int64_t C, int64_t s, int64_t p, float* out) {
  int64_t lo, hi;
  Interior(n_out, n_in, k, s, p, &lo, &hi);
  const int64_t cv = C / kV * kV;   // channels in full vector blocks
  auto edge = [&](int64_t t, int64_t c) {
    float acc[kV] = {};
    for (int64_t i = 0; i < k; ++i) {
      if (!rows[i]) continue;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t col = t * s + j - p;
        if (col < 0 || col >= n_in) continue;
        const float* xv = rows[i] + col * C + c;
        const float* wv = w + (i * ws_i + j * ws_j) * C + c;
        for (int v = 0; v < kV; ++v) acc[v] += xv[v] * wv[v];
      }
    }
    std::memcpy(out + t * C + c, acc, sizeof(acc));
  };
  for (int64_t t = 0; t < lo; ++t)
    for (int64_t c = 0; c < cv; c += kV) edge(t, c);
  // Interior: G output columns at a time (8, then 4), channel blocks innermost, so the reads
  // of each input row stay sequential.
  int64_t t = lo;
  for (; t + 8 <= hi; t += 8) InteriorBlock<8>(rows, k, w, ws_i, ws_j, C, cv, s, t * s - p, out + t * C);
  for (; t + 4 <= hi; t += 4) InteriorBlock<4>(rows, k, w, ws_i, ws_j, C, cv, s, t * s - p, out + t * C);
  for (; t < n_out; ++t)
    for (int64_t c = 0; c < cv; c += kV) edge(t, c);
  for (int64_t c = cv; c < C; ++c) {   // channel tail
    for (int64_t t = 0; t < n_out; ++t) {
      float acc = 0.f;
      for (int64_t i = 0; i < k; ++i) {
        if (!rows[i]) continue;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t col = t * s + j - p;
          if (col >= 0 && col < n_in) acc += rows[i][col * C + c] * w[(i * ws_i + j * ws_j) * C + c];
        }
      }
      out[t * C + c] = acc;
    }
  }
}

// A per-channel affine map and activation, v -> act(v * a[c] + b[c]): BatchNorm with running
// statistics folded in, then the layer's activation. kNone leaves values untouched.
enum Act : int64_t { kNone = -1, kLinear = 0, kRelu = 1, kHardSwish = 2 };
struct Affine {
  const float* a = nullptr;
  const float* b = nullptr;
  int64_t act = kNone;
};

inline v8 Activate(v8 v, int64_t act) {
  const v8 zero{};
  if (act == kRelu) return v > zero ? v : zero;
  if (act == kHardSwish) {
    const v8 three = zero + 3.f, six = zero + 6.f;
    v8 t = v + three;
    t = t > zero ? t : zero;
    t = t < six ? t : six;
    return v * (t * (1.f / 6.f));
  }
  return v;
}

inline float Activate(float v, int64_t act) {
  if (act == kRelu) return v > 0.f ? v : 0.f;
  if (act == kHardSwish) return v * (std::min(std::max(v + 3.f, 0.f), 6.f) * (1.f / 6.f));
  return v;
}

// Applies f in place to `pixels` consecutive rows of C channels.
void ApplyAffine(const Affine& f, int64_t pixels, int64_t C, float* v) {
  if (f.act == kNone) return;
  for (int64_t p = 0; p < pixels; ++p, v += C) {
    int64_t c = 0;
    for (; c + kV <= C; c += kV) St(v + c, Activate(Ld(v + c) * Ld(f.a + c) + Ld(f.b + c), f.act));
    for (; c < C; ++c) v[c] = Activate(v[c] * f.a[c] + f.b[c], f.act);
  }
}

// y[n, ho, wo, c] = post(sum_{i, j} pre(x)[n, ho*s+i-pt, wo*s+j-pl, c] * w[i, j, c]), where
// pre(x) is zero outside the image. Input rows that need converting (bfloat16) or a prologue
// are transformed once into a ring of k float rows: k consecutive rows never share a slot.
template <typename T>
void Forward(ffi::ThreadPool& pool, const Geom& g, const T* x, const float* w, T* y,
             const Affine& pre = {}, const Affine& post = {}) {
  const int64_t rows = g.N * g.Ho;
  const int64_t chunks = std::min<int64_t>(rows, 4 * std::max<int64_t>(1, pool.num_threads()));
  const bool transform = pre.act != kNone || !std::is_same<T, float>::value;
  const int64_t row_len = g.W * g.C;
  ParallelFor(pool, chunks, [&](int64_t ch) {
    std::vector<float> out(g.Wo * g.C), ring(transform ? g.k * row_len : 0);
    std::vector<int64_t> tag(g.k, -1);
    for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
      const int64_t n = r / g.Ho, ho = r % g.Ho;
      const float* xr[kMaxK];
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t h = ho * g.s + i - g.pt;
        if (h < 0 || h >= g.H) {
          xr[i] = nullptr;
          continue;
        }
        const int64_t key = n * g.H + h;
        if (!transform) {
          xr[i] = reinterpret_cast<const float*>(x) + key * row_len;
          continue;
        }
        float* slot = ring.data() + (h % g.k) * row_len;
        if (tag[h % g.k] != key) {
          const float* src = RowF(x, key, row_len, slot);
          if (src != slot) std::memcpy(slot, src, row_len * sizeof(float));
          ApplyAffine(pre, g.W, g.C, slot);
          tag[h % g.k] = key;
        }
        xr[i] = slot;
      }
      if (!transform) {   // the input rows the next output row adds: fetch them while computing
        for (int64_t h = (ho + 1) * g.s + g.k - g.s - g.pt; h < (ho + 1) * g.s + g.k - g.pt; ++h) {
          if (ho + 1 >= g.Ho || h < 0 || h >= g.H) continue;
          const char* row = reinterpret_cast<const char*>(x + (n * g.H + h) * row_len);
          for (int64_t b = 0; b < row_len * 4; b += 64) __builtin_prefetch(row + b);
        }
      }
      CorrRow(xr, g.k, w, g.k, 1, g.W, g.Wo, g.C, g.s, g.pl, out.data());
      ApplyAffine(post, g.Wo, g.C, out.data());
      StoreRow(out.data(), y + r * g.Wo * g.C, g.Wo * g.C);
    }
  });
}

// dx[n, h, w, c] = sum over taps (i, j) that read (h, w) of dy[n, ho, wo, c] * w[i, j, c]
template <typename T>
void InputGrad(ffi::ThreadPool& pool, const Geom& g, const T* dy, const float* w, T* dx) {
  const int64_t rows = g.N * g.H;
  const int64_t chunks = std::min<int64_t>(rows, 4 * std::max<int64_t>(1, pool.num_threads()));
  ParallelFor(pool, chunks, [&](int64_t ch) {
    std::vector<float> out(g.W * g.C), scratch(std::is_same<T, float>::value ? 0 : g.k * g.Wo * g.C);
    for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
      const int64_t n = r / g.H, h = r % g.H;
      if (g.s == 1) {
        // Correlation of dy (padded k-1-pl on the left) with the flipped kernel.
        const float* dr[kMaxK];
        for (int64_t i = 0; i < g.k; ++i) {
          const int64_t ho = h + g.pt - (g.k - 1 - i);
          dr[i] = (ho < 0 || ho >= g.Ho) ? nullptr : RowF(dy, n * g.Ho + ho, g.Wo * g.C, scratch.data() + i * g.Wo * g.C);
        }
        const float* wf = w + ((g.k - 1) * g.k + (g.k - 1)) * g.C;   // w[k-1-i, k-1-j]
        CorrRow(dr, g.k, wf, -g.k, -1, g.Wo, g.W, g.C, 1, g.k - 1 - g.pl, out.data());
      } else {
        std::fill(out.begin(), out.end(), 0.f);
        for (int64_t i = 0; i < g.k; ++i) {
          const int64_t t = h + g.pt - i;
          if (t < 0 || t % g.s || t / g.s >= g.Ho) continue;
          const float* d = RowF(dy, n * g.Ho + t / g.s, g.Wo * g.C, scratch.data());
          for (int64_t j = 0; j < g.k; ++j) {
            const float* wr = w + (i * g.k + j) * g.C;
            // Output columns wo whose input column wo*s + j - pl lies in [0, W).
            const int64_t lo = std::max<int64_t>(0, FloorDiv(g.pl - j + g.s - 1, g.s));
            const int64_t hi = std::min<int64_t>(g.Wo, FloorDiv(g.W - 1 + g.pl - j, g.s) + 1);
            for (int64_t wo = lo; wo < hi; ++wo) {
              float* o = out.data() + (wo * g.s + j - g.pl) * g.C;
              const float* dv = d + wo * g.C;
              for (int64_t c = 0; c < g.C; ++c) o[c] += dv[c] * wr[c];
            }
          }
        }
      }
      StoreRow(out.data(), dx + r * g.W * g.C, g.W * g.C);
    }
  });
}

// dw[n, i, j, c] = sum_{ho, wo} x[n, ho*s+i-pt, wo*s+j-pl, c] * dy[n, ho, wo, c]: one partial
// sum per image, so the op splits along the batch like the others (XLA sums the images).
template <typename T>
void WeightGrad(ffi::ThreadPool& pool, const Geom& g, const T* x, const T* dy, float* dw) {
  const int64_t kkc = g.k * g.k * g.C;
  const int64_t per_image = std::max<int64_t>(
      1, std::min<int64_t>(g.Ho, 4 * std::max<int64_t>(1, pool.num_threads()) / g.N));
  const int64_t items = g.N * per_image;
  int64_t lo, hi;
  Interior(g.Wo, g.W, g.k, g.s, g.pl, &lo, &hi);
  std::vector<float> part(items * kkc, 0.f);
  ParallelFor(pool, items, [&](int64_t item) {
    float* acc_all = part.data() + item * kkc;
    const int64_t n = item / per_image, q = item % per_image;
    std::vector<float> cx(std::is_same<T, float>::value ? 0 : g.W * g.C),
        cd(std::is_same<T, float>::value ? 0 : g.Wo * g.C);
    for (int64_t ho = q * g.Ho / per_image; ho < (q + 1) * g.Ho / per_image; ++ho) {
      const float* d = RowF(dy, n * g.Ho + ho, g.Wo * g.C, cd.data());
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t h = ho * g.s + i - g.pt;
        if (h < 0 || h >= g.H) continue;
        const float* xr = RowF(x, n * g.H + h, g.W * g.C, cx.data());
        float* ai = acc_all + i * g.k * g.C;
        int64_t c = 0;
        for (; c + kV <= g.C; c += kV) {
          float acc[kMaxK][kV] = {};
          for (int64_t j = 0; j < g.k; ++j) std::memcpy(acc[j], ai + j * g.C + c, sizeof(acc[j]));
          auto edge = [&](int64_t wo) {
            for (int64_t j = 0; j < g.k; ++j) {
              const int64_t col = wo * g.s + j - g.pl;
              if (col < 0 || col >= g.W) continue;
              for (int v = 0; v < kV; ++v) acc[j][v] += xr[col * g.C + c + v] * d[wo * g.C + c + v];
            }
          };
          for (int64_t wo = 0; wo < lo; ++wo) edge(wo);
          if (g.k == 3 || g.k == 5) {
            v8 b0 = Ld(acc[0]), b1 = Ld(acc[1]), b2 = Ld(acc[2]), b3 = Ld(acc[3]), b4 = Ld(acc[4]);
            for (int64_t wo = lo; wo < hi; ++wo) {
              const v8 dv = Ld(d + wo * g.C + c);
              const float* xv = xr + (wo * g.s - g.pl) * g.C + c;
              b0 += Ld(xv) * dv; b1 += Ld(xv + g.C) * dv; b2 += Ld(xv + 2 * g.C) * dv;
              if (g.k == 5) { b3 += Ld(xv + 3 * g.C) * dv; b4 += Ld(xv + 4 * g.C) * dv; }
            }
            St(acc[0], b0); St(acc[1], b1); St(acc[2], b2); St(acc[3], b3); St(acc[4], b4);
          } else {
            for (int64_t wo = lo; wo < hi; ++wo) edge(wo);
          }
          for (int64_t wo = std::max(lo, hi); wo < g.Wo; ++wo) edge(wo);
          for (int64_t j = 0; j < g.k; ++j) std::memcpy(ai + j * g.C + c, acc[j], sizeof(acc[j]));
        }
        for (; c < g.C; ++c)
          for (int64_t wo = 0; wo < g.Wo; ++wo)
            for (int64_t j = 0; j < g.k; ++j) {
              const int64_t col = wo * g.s + j - g.pl;
              if (col >= 0 && col < g.W) ai[j * g.C + c] += xr[col * g.C + c] * d[wo * g.C + c];
            }
      }
    }
  });
  std::fill(dw, dw + g.N * kkc, 0.f);
  for (int64_t item = 0; item < items; ++item) {
    float* out = dw + (item / per_image) * kkc;
    for (int64_t q = 0; q < kkc; ++q) out[q] += part[item * kkc + q];
  }
}

template <typename F>
ffi::Error Dispatch(ffi::DataType t, int64_t k, F f) {
  if (k < 1 || k > kMaxK) return ffi::Error::InvalidArgument("depthwise kernel size must be 1..7");
  if (t == ffi::DataType::F32) {
    f(float{});
  } else if (t == ffi::DataType::BF16) {
    f(uint16_t{});
  } else {
    return ffi::Error::InvalidArgument("depthwise kernels take float32 or bfloat16");
  }
  return ffi::Error::Success();
}

ffi::Error DwForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> w,
                     ffi::Result<ffi::AnyBuffer> y, int64_t k, int64_t s, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), yd = y->dimensions();
  const Geom g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], k, s, pt, pl};
  return Dispatch(x.element_type(), k, [&](auto t) {
    using T = decltype(t);
    Forward(pool, g, static_cast<const T*>(x.untyped_data()), w.typed_data(),
            static_cast<T*>(y->untyped_data()));
  });
}

ffi::Error DwFusedForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> pre_a,
                          ffi::Buffer<ffi::F32> pre_b, ffi::Buffer<ffi::F32> w,
                          ffi::Buffer<ffi::F32> post_a, ffi::Buffer<ffi::F32> post_b,
                          ffi::Result<ffi::AnyBuffer> y, int64_t k, int64_t s, int64_t pt,
                          int64_t pl, int64_t pre_act, int64_t post_act) {
  auto xd = x.dimensions(), yd = y->dimensions();
  const Geom g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], k, s, pt, pl};
  for (int64_t act : {pre_act, post_act}) {
    if (act < kNone || act > kHardSwish) {
      return ffi::Error::InvalidArgument("depthwise activation code must be -1..2");
    }
  }
  const Affine pre{pre_a.typed_data(), pre_b.typed_data(), pre_act};
  const Affine post{post_a.typed_data(), post_b.typed_data(), post_act};
  return Dispatch(x.element_type(), k, [&](auto t) {
    using T = decltype(t);
    Forward(pool, g, static_cast<const T*>(x.untyped_data()), w.typed_data(),
            static_cast<T*>(y->untyped_data()), pre, post);
  });
}

ffi::Error DwInputGrad(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::Buffer<ffi::F32> w,
                       ffi::Result<ffi::AnyBuffer> dx, int64_t k, int64_t s, int64_t pt,
                       int64_t pl) {
  auto xd = dx->dimensions(), yd = dy.dimensions();
  const Geom g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], k, s, pt, pl};
  return Dispatch(dy.element_type(), k, [&](auto t) {
    using T = decltype(t);
    InputGrad(pool, g, static_cast<const T*>(dy.untyped_data()), w.typed_data(),
              static_cast<T*>(dx->untyped_data()));
  });
}

ffi::Error DwWeightGrad(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                        ffi::Result<ffi::Buffer<ffi::F32>> dw, int64_t k, int64_t s, int64_t pt,
                        int64_t pl) {
  auto xd = x.dimensions(), yd = dy.dimensions();
  const Geom g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], k, s, pt, pl};
  return Dispatch(x.element_type(), k, [&](auto t) {
    using T = decltype(t);
    WeightGrad(pool, g, static_cast<const T*>(x.untyped_data()),
               static_cast<const T*>(dy.untyped_data()), dw->typed_data());
  });
}

}  // namespace

#define MNV3_DW_ATTRS \
  .Attr<int64_t>("k").Attr<int64_t>("s").Attr<int64_t>("pt").Attr<int64_t>("pl")

XLA_FFI_DEFINE_HANDLER_SYMBOL(Mnv3DepthwiseForward, DwForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>() MNV3_DW_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(Mnv3DepthwiseFusedForward, DwFusedForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>() MNV3_DW_ATTRS
                                  .Attr<int64_t>("pre_act")
                                  .Attr<int64_t>("post_act"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Mnv3DepthwiseInputGrad, DwInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>() MNV3_DW_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(Mnv3DepthwiseWeightGrad, DwWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() MNV3_DW_ATTRS);
