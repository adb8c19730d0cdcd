// Batch norm's per-channel sums as XLA FFI handlers (float32 or bfloat16 in,
// float32 out), built into the same library as oneDNN's convolutions
// (vgg_jax/onednn.py); and, in bfloat16, the backward pass of batch norm
// followed by a ReLU in two reads of the activations where XLA's takes more
// (vgg_jax/batch_norm.py, `train_normalize_relu`).
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
#include <initializer_list>
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

inline float ToFloat(BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline double Widen(float v) { return v; }

inline double Widen(BFloat16 v) { return ToFloat(v); }

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

// The backward passes of batch norm followed by a ReLU, bfloat16 only (in
// float32 XLA's own passes are as fast). They compute in float32 and round to
// bfloat16 after every operation XLA rounds after, so that each value equals
// what XLA computes from the same jax code (vgg_jax/batch_norm.py), bit for bit.

// Round to nearest even, as XLA converts float32 to bfloat16; NaNs stay NaNs.
inline BFloat16 ToBFloat16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return {static_cast<uint16_t>(v != v ? (bits >> 16) | 0x40u : rounded)};
}

inline float Rounded(float v) { return ToFloat(ToBFloat16(v)); }

// g where out > 0, else 0, as a select of bits: GCC vectorises that, where it
// leaves a conditional scalar.
inline float ReluGradient(BFloat16 g, BFloat16 out) {
  const uint16_t mask = ToFloat(out) > 0.0f ? 0xFFFFu : 0u;
  return ToFloat(BFloat16{static_cast<uint16_t>(g.bits & mask)});
}

// Clones as above, but with AVX-512 BW (in x86-64-v4): without its 16-bit
// vector operations GCC leaves the roundings scalar (a pass 3-6 times as slow).
#define VGG_JAX_CLONES_BW __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))

// GradientRows of the ReLU's gradient.
VGG_JAX_CLONES_BW void ReluGradientRows(const BFloat16* g, const BFloat16* out,
                                        const BFloat16* x, const float* mean, int64_t begin,
                                        int64_t end, int64_t channels, double* __restrict s,
                                        double* __restrict q) {
  for (int64_t r = begin; r < end; ++r) {
    const BFloat16* grow = g + r * channels;
    const BFloat16* orow = out + r * channels;
    const BFloat16* xrow = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double gv = ReluGradient(grow[c], orow[c]);
      s[c] += gv;
      q[c] += gv * (Widen(xrow[c]) - mean[c]);
    }
  }
}

// dx = round(round(gm * mul) + round(sum_grad + 2 * x * square_grad)), gm the
// ReLU's gradient: the normalisation's gradient plus that through the two sums.
VGG_JAX_CLONES_BW void NormalizeReluGradientRows(const BFloat16* g, const BFloat16* out,
                                                 const BFloat16* x, const float* mul,
                                                 const float* sum_grad,
                                                 const float* square_grad, int64_t begin,
                                                 int64_t end, int64_t channels,
                                                 BFloat16* __restrict dx) {
  for (int64_t r = begin; r < end; ++r) {
    const BFloat16* grow = g + r * channels;
    const BFloat16* orow = out + r * channels;
    const BFloat16* xrow = x + r * channels;
    BFloat16* drow = dx + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float through_sums = sum_grad[c] + 2.0f * ToFloat(xrow[c]) * square_grad[c];
      drow[c] = ToBFloat16(Rounded(ReluGradient(grow[c], orow[c]) * mul[c]) +
                           Rounded(through_sums));
    }
  }
}

// rows_fn(begin, end) over the rows in blocks of kBlockRows, on `threads`
// OpenMP threads.
template <typename Rows>
void ForRowBlocks(int64_t rows, int64_t threads, Rows rows_fn) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  UseThreads(threads);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    rows_fn(b * kBlockRows, std::min(rows, (b + 1) * kBlockRows));
  }
}

// first[c] and second[c]: the two sums `rows(begin, end, s, q)` accumulates,
// in double over fixed blocks of rows whose partial sums are added in block
// order, so that the result is the same whatever the number of threads.
template <typename Rows>
void ChannelSums(int64_t rows, int64_t channels, int64_t threads, float* first,
                 float* second, Rows rows_fn) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(static_cast<size_t>(blocks * 2 * channels), 0.0);
  ForRowBlocks(rows, threads, [&](int64_t begin, int64_t end) {
    double* s = &partial[static_cast<size_t>(begin / kBlockRows * 2 * channels)];
    rows_fn(begin, end, s, s + channels);
  });
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

ffi::Error BFloat16Only() {
  return ffi::Error::InvalidArgument("batch norm's backward passes: bfloat16 arrays only");
}

bool AllBFloat16(std::initializer_list<ffi::DataType> types) {
  for (ffi::DataType t : types) {
    if (t != ffi::DataType::BF16) return false;
  }
  return true;
}

ffi::Error ReluGradientSumsImpl(ffi::AnyBuffer g, ffi::AnyBuffer out, ffi::AnyBuffer x,
                                ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sum_g,
                                ffi::ResultBuffer<ffi::F32> sum_g_centred, int64_t threads) {
  if (!AllBFloat16({g.element_type(), out.element_type(), x.element_type()})) {
    return BFloat16Only();
  }
  const int64_t channels = Channels(x), rows = x.element_count() / channels;
  const auto* gd = static_cast<const BFloat16*>(g.untyped_data());
  const auto* od = static_cast<const BFloat16*>(out.untyped_data());
  const auto* xd = static_cast<const BFloat16*>(x.untyped_data());
  ChannelSums(rows, channels, threads, sum_g->typed_data(), sum_g_centred->typed_data(),
              [&](int64_t begin, int64_t end, double* s, double* q) {
                ReluGradientRows(gd, od, xd, mean.typed_data(), begin, end, channels, s, q);
              });
  return ffi::Error::Success();
}

ffi::Error NormalizeReluGradientImpl(ffi::AnyBuffer g, ffi::AnyBuffer out, ffi::AnyBuffer x,
                                     ffi::Buffer<ffi::F32> mul,
                                     ffi::Buffer<ffi::F32> sum_grad,
                                     ffi::Buffer<ffi::F32> square_grad,
                                     ffi::Result<ffi::AnyBuffer> dx, int64_t threads) {
  if (!AllBFloat16({g.element_type(), out.element_type(), x.element_type(),
                    dx->element_type()})) {
    return BFloat16Only();
  }
  const int64_t channels = Channels(x), rows = x.element_count() / channels;
  const auto* gd = static_cast<const BFloat16*>(g.untyped_data());
  const auto* od = static_cast<const BFloat16*>(out.untyped_data());
  const auto* xd = static_cast<const BFloat16*>(x.untyped_data());
  auto* dd = static_cast<BFloat16*>(dx->untyped_data());
  ForRowBlocks(rows, threads, [&](int64_t begin, int64_t end) {
    NormalizeReluGradientRows(gd, od, xd, mul.typed_data(), sum_grad.typed_data(),
                              square_grad.typed_data(), begin, end, channels, dd);
  });
  return ffi::Error::Success();
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxReluGradientSums, ReluGradientSumsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxNormalizeReluGradient, NormalizeReluGradientImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("threads"));
