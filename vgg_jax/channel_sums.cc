// Batch norm's per-channel sums as XLA FFI handlers (float32 in, float32 out),
// built into the same library as oneDNN's convolutions (vgg_jax/onednn.py).
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

// s[c] += sum of x(r, c), q[c] += sum of x(r, c)^2 over rows [begin, end).
VGG_JAX_CLONES void MomentRows(const float* x, int64_t begin, int64_t end, int64_t channels,
                               double* __restrict s, double* __restrict q) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double v = row[c];
      s[c] += v;
      q[c] += v * v;
    }
  }
}

// s[c] += sum of g(r, c), q[c] += sum of g(r, c) * (x(r, c) - mean[c]).
VGG_JAX_CLONES void GradientRows(const float* g, const float* x, const float* mean,
                                 int64_t begin, int64_t end, int64_t channels,
                                 double* __restrict s, double* __restrict q) {
  for (int64_t r = begin; r < end; ++r) {
    const float* grow = g + r * channels;
    const float* xrow = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double gv = grow[c];
      s[c] += gv;
      q[c] += gv * (static_cast<double>(xrow[c]) - mean[c]);
    }
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

int64_t Channels(const ffi::Buffer<ffi::F32>& x) { return x.dimensions().back(); }

ffi::Error MomentsImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> sum,
                       ffi::ResultBuffer<ffi::F32> sum_squares, int64_t threads) {
  const int64_t channels = Channels(x), rows = x.element_count() / channels;
  const float* data = x.typed_data();
  ChannelSums(rows, channels, threads, sum->typed_data(), sum_squares->typed_data(),
              [&](int64_t begin, int64_t end, double* s, double* q) {
                MomentRows(data, begin, end, channels, s, q);
              });
  return ffi::Error::Success();
}

ffi::Error GradientSumsImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sum_g,
                            ffi::ResultBuffer<ffi::F32> sum_g_centred, int64_t threads) {
  const int64_t channels = Channels(x), rows = x.element_count() / channels;
  ChannelSums(rows, channels, threads, sum_g->typed_data(), sum_g_centred->typed_data(),
              [&](int64_t begin, int64_t end, double* s, double* q) {
                GradientRows(g.typed_data(), x.typed_data(), mean.typed_data(), begin, end,
                             channels, s, q);
              });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxChannelMoments, MomentsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxChannelGradientSums, GradientSumsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));
