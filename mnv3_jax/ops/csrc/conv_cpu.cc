// Dense kxk convolution with few input channels (the stem: 3 -> 16) for XLA CPU inference,
// called through the XLA FFI by mnv3_jax.conv, with the layer's BatchNorm and activation applied
// to the output: y[n, ho, wo, o] = post(sum_{i, j, c} x[n, ho*s+i-pt, wo*s+j-pl, c] * w[i, j, c, o])
// (zero outside the image). XLA's own convolution is slow for 3 input channels (~28 ms for the
// 224x224 stem at batch 32 on 2 cores). x and y are float32 or bfloat16 NHWC; w (k, k, Ci, Co)
// and the arithmetic are float32.
#include "cpu_common.h"

namespace {

// G output columns (s apart in the padded input row) by V vectors of output channels from o0.
// rows[i]: zero-padded input rows (column 0 is input column -pl), nullptr outside the image.
template <int G, int V>
inline void ConvBlock(const float* const* rows, int64_t k, int64_t Ci, const float* w,
                      int64_t Cop, int64_t s, int64_t t0, int64_t o0, float* out) {
  v8 a[G][V];
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v) a[g][v] = v8{};
  for (int64_t i = 0; i < k; ++i) {
    if (!rows[i]) continue;
    for (int64_t j = 0; j < k; ++j) {
      const float* xr = rows[i] + (t0 * s + j) * Ci;
      const float* wr = w + (i * k + j) * Ci * Cop + o0;
      for (int64_t c = 0; c < Ci; ++c) {
        v8 wv[V];
        for (int v = 0; v < V; ++v) wv[v] = Ld(wr + c * Cop + v * kV);
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) {
          const v8 xb = v8{} + xr[g * s * Ci + c];
          for (int v = 0; v < V; ++v) a[g][v] += xb * wv[v];
        }
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v) St(out + (t0 + g) * Cop + o0 + v * kV, a[g][v]);
}

template <int G>
inline void ConvColumns(const float* const* rows, int64_t k, int64_t Ci, const float* w,
                        int64_t Cop, int64_t s, int64_t t0, float* out) {
  int64_t o = 0;
  for (; o + 2 * kV <= Cop; o += 2 * kV) ConvBlock<G, 2>(rows, k, Ci, w, Cop, s, t0, o, out);
  if (o < Cop) ConvBlock<G, 1>(rows, k, Ci, w, Cop, s, t0, o, out);
}

template <typename T>
void ConvForward(ffi::ThreadPool& pool, const Geom& g, int64_t Co, const T* x, const float* w,
                 const Affine& post, T* y) {
  const int64_t rows = g.N * g.Ho;
  const int64_t chunks = std::min<int64_t>(rows, 4 * std::max<int64_t>(1, pool.num_threads()));
  const int64_t Cop = (Co + kV - 1) / kV * kV;
  const int64_t pr = std::max<int64_t>(0, (g.Wo - 1) * g.s + g.k - g.pl - g.W);
  const int64_t Wp = g.pl + g.W + pr;
  std::vector<float> wp(g.k * g.k * g.C * Cop, 0.f);   // (k, k, Ci, Cop)
  for (int64_t q = 0; q < g.k * g.k * g.C; ++q) std::memcpy(&wp[q * Cop], w + q * Co, Co * 4);
  const std::vector<float> post_a = Padded(post.a, Co, Cop, 1.f), post_b = Padded(post.b, Co, Cop, 0.f);
  const Affine post_p{post_a.data(), post_b.data(), post.act};
  ParallelFor(pool, chunks, [&](int64_t ch) {
    std::vector<float> out(g.Wo * Cop);
    RowRing ring(g, Wp * g.C);
    for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
      const float* xr[kMaxK];
      ring.Gather(r / g.Ho, r % g.Ho, xr, [&](int64_t key, float* slot) {
        LoadRow(x + key * g.W * g.C, g.W, g.C, g.C, slot + g.pl * g.C);
      });
      int64_t t = 0;
      for (; t + 4 <= g.Wo; t += 4) ConvColumns<4>(xr, g.k, g.C, wp.data(), Cop, g.s, t, out.data());
      for (; t < g.Wo; ++t) ConvColumns<1>(xr, g.k, g.C, wp.data(), Cop, g.s, t, out.data());
      ApplyAffine(post_p, g.Wo, Cop, out.data());
      StoreRow(out.data(), g.Wo, Co, Cop, y + r * g.Wo * Co);
    }
  });
}

ffi::Error ConvFusedForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> w,
                            ffi::Buffer<ffi::F32> post_a, ffi::Buffer<ffi::F32> post_b,
                            ffi::Result<ffi::AnyBuffer> y, int64_t s, int64_t pt, int64_t pl,
                            int64_t post_act) {
  auto xd = x.dimensions(), yd = y->dimensions(), wd = w.dimensions();
  if (wd.size() != 4 || wd[0] != wd[1] || wd[2] != xd[3] || wd[3] != yd[3]) {
    return ffi::Error::InvalidArgument("conv kernel must be (k, k, Ci, Co)");
  }
  if (post_act < kNone || post_act > kHardSwish) {
    return ffi::Error::InvalidArgument("conv activation code must be -1..2");
  }
  const Geom g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], wd[0], s, pt, pl};
  const Affine post{post_a.typed_data(), post_b.typed_data(), post_act};
  return Dispatch(x.element_type(), g.k, [&](auto t) {
    using T = decltype(t);
    ConvForward(pool, g, wd[3], static_cast<const T*>(x.untyped_data()), w.typed_data(), post,
                static_cast<T*>(y->untyped_data()));
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Mnv3ConvFusedForward, ConvFusedForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("s")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("post_act"));
