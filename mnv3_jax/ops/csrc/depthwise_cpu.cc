// Depthwise kxk convolution for XLA CPU, called through the XLA FFI by mnv3_jax.depthwise.
//
// x (N, H, W, C) and y (N, Ho, Wo, C) are float32 or bfloat16 (NHWC, row-major); the kernel is
// float32 (k, k, C); arithmetic is float32. Three entry points: the forward, the input gradient
// and the weight gradient of y[n,ho,wo,c] = sum_{i,j} x[n, ho*s+i-pt, wo*s+j-pl, c] * w[i,j,c]
// (zero outside the image). Rows are split over XLA's intra-op thread pool; channels are
// processed 8 at a time with GCC vector extensions, so the compiler emits AVX or NEON code.
#include "cpu_common.h"

namespace {

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

// One output row of the forward pass, G output columns at a time: out[t, c] = sum_{i, j}
// rows[i][t*S + j, c] * w[i, j, c]. rows[i] are zero-padded input rows (column 0 is input column
// -pl; nullptr: a row outside the image) with Cp (a multiple of kV) channels; w is (K, K, Cp).
// With K and S known at compile time the taps unroll, each input vector is loaded once per row
// and used by every output column that reads it, and the K weights of a row stay in registers.
template <int K, int S, int G>
inline void OutBlock(const float* const* rows, const float* w, int64_t Cp, int64_t t0,
                     float* out) {
  constexpr int kSpan = (G - 1) * S + K;
  for (int64_t c = 0; c < Cp; c += kV) {
    v8 a[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) a[g] = v8{};
#pragma GCC unroll 7
    for (int i = 0; i < K; ++i) {
      if (!rows[i]) continue;
      v8 wv[K];
#pragma GCC unroll 7
      for (int j = 0; j < K; ++j) wv[j] = Ld(w + (i * K + j) * Cp + c);
      const float* xr = rows[i] + t0 * S * Cp + c;
#pragma GCC unroll 32
      for (int u = 0; u < kSpan; ++u) {
        const v8 xv = Ld(xr + u * Cp);
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) {
          const int j = u - g * S;
          if (j >= 0 && j < K) a[g] += xv * wv[j];
        }
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) St(out + (t0 + g) * Cp + c, a[g]);
  }
}

// Strides other than 1 and 2: one output column at a time.
template <int K>
inline void OutColumn(const float* const* rows, const float* w, int64_t Cp, int64_t s, int64_t t,
                      float* out) {
  for (int64_t c = 0; c < Cp; c += kV) {
    v8 a = v8{};
    for (int i = 0; i < K; ++i) {
      if (!rows[i]) continue;
      const float* xr = rows[i] + t * s * Cp + c;
#pragma GCC unroll 7
      for (int j = 0; j < K; ++j) a += Ld(xr + j * Cp) * Ld(w + (i * K + j) * Cp + c);
    }
    St(out + t * Cp + c, a);
  }
}

template <int K, int S>
void OutRowT(const float* const* rows, const float* w, int64_t Cp, int64_t s, int64_t n_out,
             float* out) {
  if (S == 0) {
    for (int64_t t = 0; t < n_out; ++t) OutColumn<K>(rows, w, Cp, s, t, out);
    return;
  }
  constexpr int G = (K <= 5 && S == 1) ? 8 : 4;   // G accumulators + K weights + 1 input in 16 registers
  constexpr int S1 = S > 0 ? S : 1;
  int64_t t = 0;
  for (; t + G <= n_out; t += G) OutBlock<K, S1, G>(rows, w, Cp, t, out);
  if (t + 4 <= n_out) { OutBlock<K, S1, 4>(rows, w, Cp, t, out); t += 4; }
  if (t + 2 <= n_out) { OutBlock<K, S1, 2>(rows, w, Cp, t, out); t += 2; }
  if (t < n_out) OutBlock<K, S1, 1>(rows, w, Cp, t, out);
}

using OutRowFn = void (*)(const float* const*, const float*, int64_t, int64_t, int64_t, float*);

template <int K>
OutRowFn PickStride(int64_t s) {
  return s == 1 ? OutRowT<K, 1> : s == 2 ? OutRowT<K, 2> : OutRowT<K, 0>;
}

OutRowFn PickOutRow(int64_t k, int64_t s) {
  switch (k) {
    case 1: return PickStride<1>(s);
    case 2: return PickStride<2>(s);
    case 3: return PickStride<3>(s);
    case 4: return PickStride<4>(s);
    case 5: return PickStride<5>(s);
    case 6: return PickStride<6>(s);
    default: return PickStride<7>(s);
  }
}

// y[n, ho, wo, c] = post(sum_{i, j} pre(x)[n, ho*s+i-pt, wo*s+j-pl, c] * w[i, j, c]), where
// pre(x) is zero outside the image. Each input row is read once: converted to float32, mapped by
// `pre` and stored zero-padded (columns and channels, to a multiple of kV) in a ring of k rows
// (k consecutive rows never share a slot), where the k output rows that read it find it in cache.
// With `sums` (N, C), also sums[n, c] = sum_{ho, wo} y[n, ho, wo, c] (before any rounding to T).
template <typename T>
void Forward(ffi::ThreadPool& pool, const Geom& g, const T* x, const float* w, T* y,
             const Affine& pre = {}, const Affine& post = {}, float* sums = nullptr) {
  const int64_t rows = g.N * g.Ho;
  const int64_t chunks = std::min<int64_t>(rows, 4 * std::max<int64_t>(1, pool.num_threads()));
  const int64_t Cp = (g.C + kV - 1) / kV * kV;
  const int64_t pr = std::max<int64_t>(0, (g.Wo - 1) * g.s + g.k - g.pl - g.W);
  const int64_t Wp = g.pl + g.W + pr;
  std::vector<float> wp(g.k * g.k * Cp, 0.f);
  for (int64_t q = 0; q < g.k * g.k; ++q) std::memcpy(&wp[q * Cp], w + q * g.C, g.C * 4);
  const std::vector<float> pre_a = Padded(pre.a, g.C, Cp, 1.f), pre_b = Padded(pre.b, g.C, Cp, 0.f);
  const std::vector<float> post_a = Padded(post.a, g.C, Cp, 1.f), post_b = Padded(post.b, g.C, Cp, 0.f);
  const Affine pre_p{pre_a.data(), pre_b.data(), pre.act}, post_p{post_a.data(), post_b.data(), post.act};
  const OutRowFn out_row = PickOutRow(g.k, g.s);
  std::mutex sums_mutex;
  if (sums) std::fill(sums, sums + g.N * g.C, 0.f);
  ParallelFor(pool, chunks, [&](int64_t ch) {
    std::vector<float> out(g.Wo * Cp), acc(sums ? Cp : 0, 0.f);
    RowRing ring(g, Wp * Cp);
    int64_t acc_n = -1;
    auto flush = [&]() {
      if (acc_n < 0) return;
      std::lock_guard<std::mutex> lock(sums_mutex);
      for (int64_t c = 0; c < g.C; ++c) sums[acc_n * g.C + c] += acc[c];
      std::fill(acc.begin(), acc.end(), 0.f);
    };
    for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
      const int64_t n = r / g.Ho, ho = r % g.Ho;
      const float* xr[kMaxK];
      ring.Gather(n, ho, xr, [&](int64_t key, float* slot) {
        float* dst = slot + g.pl * Cp;
        LoadRow(x + key * g.W * g.C, g.W, g.C, Cp, dst);
        ApplyAffine(pre_p, g.W, Cp, dst);
      });
      out_row(xr, wp.data(), Cp, g.s, g.Wo, out.data());
      ApplyAffine(post_p, g.Wo, Cp, out.data());
      if (sums) {
        if (n != acc_n) {
          flush();
          acc_n = n;
        }
        for (int64_t col = 0; col < g.Wo; ++col)
          for (int64_t c = 0; c < Cp; c += kV) St(&acc[c], Ld(&acc[c]) + Ld(&out[col * Cp + c]));
      }
      StoreRow(out.data(), g.Wo, g.C, Cp, y + r * g.Wo * g.C);
    }
    if (sums) flush();
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
                          ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::Buffer<ffi::F32>> sums,
                          int64_t k, int64_t s, int64_t pt,
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
            static_cast<T*>(y->untyped_data()), pre, post, sums->typed_data());
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
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() MNV3_DW_ATTRS
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
