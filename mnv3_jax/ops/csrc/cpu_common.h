// Shared by the CPU kernels of mnv3_jax: a parallel loop on XLA's intra-op pool, 8-wide float
// vectors (GCC vector extensions: AVX or NEON code), bfloat16 <-> float32, per-channel affine
// maps with activations, and the FFI dtype dispatch (all in an anonymous namespace: each kernel
// file has its own copy).
#ifndef MNV3_JAX_CSRC_CPU_COMMON_H_
#define MNV3_JAX_CSRC_CPU_COMMON_H_

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

// The k input rows that one output row of a kxk conv reads, each loaded once into a ring of k
// slots of `width` floats (k consecutive input rows never share a slot), zero-initialised so that
// padding columns stay zero. Gather sets rows[i] to input row ho*s + i - pt of image n, or nullptr
// outside the image; load(n * H + h, slot) fills a slot whose row is not there yet.
class RowRing {
 public:
  RowRing(const Geom& g, int64_t width) : g_(g), width_(width), buf_(g.k * width, 0.f),
                                          tag_(g.k, -1) {}

  template <typename Load>
  void Gather(int64_t n, int64_t ho, const float** rows, Load&& load) {
    for (int64_t i = 0; i < g_.k; ++i) {
      const int64_t h = ho * g_.s + i - g_.pt;
      if (h < 0 || h >= g_.H) {
        rows[i] = nullptr;
        continue;
      }
      const int64_t key = n * g_.H + h;
      float* slot = buf_.data() + (h % g_.k) * width_;
      if (tag_[h % g_.k] != key) {
        load(key, slot);
        tag_[h % g_.k] = key;
      }
      rows[i] = slot;
    }
  }

 private:
  const Geom& g_;
  int64_t width_;
  std::vector<float> buf_;
  std::vector<int64_t> tag_;
};

// Copies `cols` columns of C channels from src to dst, whose columns are Cp >= C apart.
template <typename T>
inline void LoadRow(const T* src, int64_t cols, int64_t C, int64_t Cp, float* dst) {
  if (std::is_same<T, float>::value && C == Cp) {
    std::memcpy(dst, src, cols * C * sizeof(float));
    return;
  }
  for (int64_t col = 0; col < cols; ++col)
    for (int64_t c = 0; c < C; ++c) dst[col * Cp + c] = ToF(src[col * C + c]);
}

// The inverse of LoadRow: from columns Cp apart to C channels per column.
template <typename T>
inline void StoreRow(const float* src, int64_t cols, int64_t C, int64_t Cp, T* dst) {
  if (std::is_same<T, float>::value && C == Cp) {
    std::memcpy(dst, src, cols * C * sizeof(float));
    return;
  }
  for (int64_t col = 0; col < cols; ++col)
    for (int64_t c = 0; c < C; ++c) FromF(src[col * Cp + c], dst + col * C + c);
}

// Per-channel vector of length Cp (a multiple of kV): v[c] for c < C, else `fill`.
std::vector<float> Padded(const float* v, int64_t C, int64_t Cp, float fill) {
  std::vector<float> out(Cp, fill);
  if (v) std::memcpy(out.data(), v, C * sizeof(float));
  return out;
}

template <typename F>
ffi::Error Dispatch(ffi::DataType t, int64_t k, F f) {
  if (k < 1 || k > kMaxK) return ffi::Error::InvalidArgument("kernel size must be 1..7");
  if (t == ffi::DataType::F32) {
    f(float{});
  } else if (t == ffi::DataType::BF16) {
    f(uint16_t{});
  } else {
    return ffi::Error::InvalidArgument("the kernels take float32 or bfloat16");
  }
  return ffi::Error::Success();
}

}  // namespace

#endif  // MNV3_JAX_CSRC_CPU_COMMON_H_
