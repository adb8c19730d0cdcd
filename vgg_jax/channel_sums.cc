// Batch norm's per-channel sums as XLA FFI handlers (float32 or bfloat16 in,
// float32 out), built into the same library as oneDNN's convolutions
// (vgg_jax/onednn.py).
//
// Why: XLA's CPU reductions add N*H*W values one after the other (see
// vgg_jax/batch_norm.py), and the staged sums that fix their accuracy pass over
// the activations once per sum. Here both sums of a pass come from one read,
// accumulated in double: the forward's sum(x) and sum(x*x), the backward's
// sum(g) and sum(g * (x - mean)).
//
// The rows (everything but the last, channel axis) are summed in fixed blocks
// whose partial sums are added in block order, so the result is the same
// whatever the number of threads.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 256;

// `threads` as in onednn_conv.cc: 0 for OpenMP's default, else that many.
void UseThreads(int64_t threads) {
  static const int by_default = omp_get_max_threads();
  omp_set_num_threads(threads > 0 ? static_cast<int>(threads) : by_default);
}

// The inner loops, one per sum kind, compiled for AVX-512, AVX2 and plain
// x86-64 and chosen when the library loads: float-to-double conversions and
// adds over the channels vectorise, so one pass runs at memory speed.
#define VGG_JAX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// bfloat16 as stored: a float32's upper half.
struct BFloat16 {
  uint16_t bits;
};

inline double Widen(float v) { return v; }

inline double Widen(BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// One definition per element type (target_clones does not take templates).
#define VGG_JAX_ROWS(T)                                                                   \
  /* s[c] += sum of x(r, c), q[c] += sum of x(r, c)^2 over rows [begin, end). */          \
  VGG_JAX_CLONES void MomentRows(const T* x, int64_t begin, int64_t end, int64_t channels, \
                                 double* __restrict s, double* __restrict q) {            \
    for (int64_t r = begin; r < end; ++r) {                                               \
      const T* row = x + r * channels;                                                    \
      for (int64_t c = 0; c < channels; ++c) {                                            \
        const double v = Widen(row[c]);                                                   \
        s[c] += v;                                                                        \
        q[c] += v * v;                                                                    \
      }                                                                                   \
    }                                                                                     \
  }                                                                                       \
  /* s[c] += sum of g(r, c), q[c] += sum of g(r, c) * (x(r, c) - mean[c]). */             \
  VGG_JAX_CLONES void GradientRows(const T* g, const T* x, const float* mean,             \
                                   int64_t begin, int64_t end, int64_t channels,          \
                                   double* __restrict s, double* __restrict q) {          \
    for (int64_t r = begin; r < end; ++r) {                                               \
      const T* grow = g + r * channels;                                                   \
      const T* xrow = x + r * channels;                                                   \
      for (int64_t c = 0; c < channels; ++c) {                                            \
        const double gv = Widen(grow[c]);                                                 \
        s[c] += gv;                                                                       \
        q[c] += gv * (Widen(xrow[c]) - mean[c]);                                          \
      }                                                                                   \
    }                                                                                     \
  }

VGG_JAX_ROWS(float)
VGG_JAX_ROWS(BFloat16)

// first[c] and second[c]: the two sums `rows(begin, end, s, q)` accumulates,
// in double over fixed blocks of rows whose partial sums are added in block
// order, so that the result is the same whatever the number of threads.
template <typename Rows>
void ChannelSums(int64_t rows, int64_t channels, int64_t threads, float* first,
                 float* second, Rows rows_fn) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(static_cast<size_t>(blocks * 2 * channels), 0.0);
  UseThreads(threads);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    double* s = &partial[static_cast<size_t>(b * 2 * channels)];
    rows_fn(b * kBlockRows, std::min(rows, (b + 1) * kBlockRows), s, s + channels);
  }
  for (int64_t c = 0; c < channels; ++c) {
    double a = 0, q = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      a += partial[static_cast<size_t>(b * 2 * channels + c)];
      q += partial[static_cast<size_t>(b * 2 * channels + channels + c)];
    }
    first[c] = static_cast<float>(a);
    second[c] = static_cast<float>(q);
  }
}

int64_t Channels(const ffi::AnyBuffer& x) { return x.dimensions().back(); }

ffi::Error TypeError() {
  return ffi::Error::InvalidArgument(
      "channel sums: the arrays must be float32 or bfloat16, both of one type");
}

// `sums(element)` with a null pointer of x's element type, float or BFloat16;
// an error for any other type.
template <typename Sums>
ffi::Error ForElementType(const ffi::AnyBuffer& x, Sums sums) {
  switch (x.element_type()) {
    case ffi::DataType::F32:
      sums(static_cast<const float*>(nullptr));
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      sums(static_cast<const BFloat16*>(nullptr));
      return ffi::Error::Success();
    default:
      return TypeError();
  }
}

ffi::Error MomentsImpl(ffi::AnyBuffer x, ffi::ResultBuffer<ffi::F32> sum,
                       ffi::ResultBuffer<ffi::F32> sum_squares, int64_t threads) {
  const int64_t channels = Channels(x), rows = x.element_count() / channels;
  return ForElementType(x, [&](auto element) {
    const auto* data = static_cast<decltype(element)>(x.untyped_data());
    ChannelSums(rows, channels, threads, sum->typed_data(), sum_squares->typed_data(),
                [&](int64_t begin, int64_t end, double* s, double* q) {
                  MomentRows(data, begin, end, channels, s, q);
                });
  });
}

ffi::Error GradientSumsImpl(ffi::AnyBuffer g, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> mean,
                            ffi::ResultBuffer<ffi::F32> sum_g,
                            ffi::ResultBuffer<ffi::F32> sum_g_centred, int64_t threads) {
  const int64_t channels = Channels(x), rows = x.element_count() / channels;
  if (g.element_type() != x.element_type()) return TypeError();
  return ForElementType(x, [&](auto element) {
    const auto* gd = static_cast<decltype(element)>(g.untyped_data());
    const auto* xd = static_cast<decltype(element)>(x.untyped_data());
    ChannelSums(rows, channels, threads, sum_g->typed_data(), sum_g_centred->typed_data(),
                [&](int64_t begin, int64_t end, double* s, double* q) {
                  GradientRows(gd, xd, mean.typed_data(), begin, end, channels, s, q);
                });
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxChannelMoments, MomentsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxChannelGradientSums, GradientSumsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));
