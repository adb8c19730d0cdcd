// oneDNN's convolutions as XLA FFI handlers: NHWC activations, HWIO kernels,
// float32, stride 1, any non-negative padding. vgg_jax/onednn.py builds this
// file on first use and calls it from jitted code (cpu_ops.conv_general_dilated).
//
// Three handlers, one per pass, so that XLA drops the input gradient where no
// one uses it (the first layer's) and schedules the passes like its own ops.
// Activations stay in the caller's layout (oneDNN's kernels read NHWC as it
// is); kernels are reordered to the layout oneDNN picks, as PyTorch does.

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Type = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// n, h, w, in, out, kh, kw, pad_top, pad_bottom, pad_left, pad_right
using Geometry = std::array<int64_t, 11>;

// The three passes of one convolution geometry. Made once (oneDNN generates
// their code when they are made) and kept for the process's life.
struct Convolution {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data::primitive_desc backward_data_pd;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights::primitive_desc backward_weights_pd;
  dnnl::convolution_backward_weights backward_weights;
  memory::desc hwio;  // the kernel as the caller holds it
};

std::unique_ptr<Convolution> Make(const Geometry& g) {
  auto [n, h, w, in, out, kh, kw, top, bottom, left, right] = g;
  const int64_t oh = h + top + bottom - kh + 1, ow = w + left + right - kw + 1;
  const memory::desc src({n, in, h, w}, Type::f32, Tag::nhwc);
  const memory::desc dst({n, out, oh, ow}, Type::f32, Tag::nhwc);
  const memory::desc kernel({out, in, kh, kw}, Type::f32, Tag::any);
  const memory::dims strides{1, 1}, pad_l{top, left}, pad_r{bottom, right};
  const auto direct = dnnl::algorithm::convolution_direct;
  // Each call brings its own scratchpad: XLA runs one program's shards (one
  // per device) on several threads at once, through the same primitives.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto c = std::make_unique<Convolution>();
  c->hwio = memory::desc({out, in, kh, kw}, Type::f32, Tag::hwio);
  c->forward_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, direct, src, kernel, dst, strides, pad_l,
      pad_r, attr);
  c->forward = dnnl::convolution_forward(c->forward_pd);
  c->backward_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), direct, src, kernel, dst, strides, pad_l, pad_r, c->forward_pd, attr);
  c->backward_data = dnnl::convolution_backward_data(c->backward_data_pd);
  c->backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), direct, src, kernel, dst, strides, pad_l, pad_r, c->forward_pd, attr);
  c->backward_weights = dnnl::convolution_backward_weights(c->backward_weights_pd);
  return c;
}

Convolution& Get(const Geometry& g) {
  static std::mutex mu;
  static std::map<Geometry, std::unique_ptr<Convolution>> made;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = made[g];
  if (!slot) slot = Make(g);
  return *slot;
}

Geometry GeometryOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> hwio, int64_t top,
                    int64_t bottom, int64_t left, int64_t right) {
  return {x[0], x[1], x[2], x[3], hwio[3], hwio[0], hwio[1], top, bottom, left, right};
}

// oneDNN's threads per call: `threads`, or OpenMP's default where it is 0.
// Several XLA CPU devices in one process (the tests' eight) each run their
// shard on their own thread: teams of all cores each would oversubscribe the
// cores and spin past the devices' collective rendezvous. OpenMP keeps the
// count per calling thread, so it is set on every call.
void UseThreads(int64_t threads) {
  static const int by_default = omp_get_max_threads();
  omp_set_num_threads(threads > 0 ? static_cast<int>(threads) : by_default);
}

// oneDNN reports failures by exceptions, which must not cross into XLA.
template <typename Pass>
ffi::Error Run(int64_t threads, Pass pass) {
  try {
    UseThreads(threads);
    pass();
    Stream().wait();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
}

// The kernel in the layout `wanted`: a reorder into `scratch` unless it is HWIO already.
memory KernelAs(const memory::desc& wanted, const Convolution& c, void* hwio,
                memory* scratch) {
  memory given(c.hwio, Engine(), hwio);
  if (wanted == c.hwio) return given;
  *scratch = memory(wanted, Engine());
  dnnl::reorder(given, *scratch).execute(Stream(), given, *scratch);
  return *scratch;
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                       ffi::ResultBuffer<ffi::F32> y, int64_t pad_top, int64_t pad_bottom,
                       int64_t pad_left, int64_t pad_right, int64_t threads) {
  return Run(threads, [&] {
    Convolution& c = Get(GeometryOf(x.dimensions(), kernel.dimensions(), pad_top, pad_bottom,
                                    pad_left, pad_right));
    memory src(c.forward_pd.src_desc(), Engine(), x.typed_data());
    memory dst(c.forward_pd.dst_desc(), Engine(), y->typed_data());
    memory scratch;
    memory weights = KernelAs(c.forward_pd.weights_desc(), c, kernel.typed_data(), &scratch);
    memory scratchpad(c.forward_pd.scratchpad_desc(), Engine());
    c.forward.execute(Stream(), {{DNNL_ARG_SRC, src},
                                 {DNNL_ARG_WEIGHTS, weights},
                                 {DNNL_ARG_DST, dst},
                                 {DNNL_ARG_SCRATCHPAD, scratchpad}});
  });
}

ffi::Error BackwardDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                            ffi::ResultBuffer<ffi::F32> dx, int64_t pad_top,
                            int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                            int64_t threads) {
  return Run(threads, [&] {
    Convolution& c = Get(GeometryOf(dx->dimensions(), kernel.dimensions(), pad_top, pad_bottom,
                                    pad_left, pad_right));
    memory diff_dst(c.backward_data_pd.diff_dst_desc(), Engine(), dy.typed_data());
    memory diff_src(c.backward_data_pd.diff_src_desc(), Engine(), dx->typed_data());
    memory scratch;
    memory weights =
        KernelAs(c.backward_data_pd.weights_desc(), c, kernel.typed_data(), &scratch);
    memory scratchpad(c.backward_data_pd.scratchpad_desc(), Engine());
    c.backward_data.execute(Stream(), {{DNNL_ARG_DIFF_DST, diff_dst},
                                       {DNNL_ARG_WEIGHTS, weights},
                                       {DNNL_ARG_DIFF_SRC, diff_src},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
  });
}

ffi::Error BackwardWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dkernel, int64_t pad_top,
                               int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                               int64_t threads) {
  return Run(threads, [&] {
    Convolution& c = Get(GeometryOf(x.dimensions(), dkernel->dimensions(), pad_top, pad_bottom,
                                    pad_left, pad_right));
    memory src(c.backward_weights_pd.src_desc(), Engine(), x.typed_data());
    memory diff_dst(c.backward_weights_pd.diff_dst_desc(), Engine(), dy.typed_data());
    memory hwio(c.hwio, Engine(), dkernel->typed_data());
    const memory::desc wanted = c.backward_weights_pd.diff_weights_desc();
    const bool direct = wanted == c.hwio;
    memory diff_weights = direct ? hwio : memory(wanted, Engine());
    memory scratchpad(c.backward_weights_pd.scratchpad_desc(), Engine());
    c.backward_weights.execute(Stream(), {{DNNL_ARG_SRC, src},
                                          {DNNL_ARG_DIFF_DST, diff_dst},
                                          {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                          {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (!direct) dnnl::reorder(diff_weights, hwio).execute(Stream(), diff_weights, hwio);
  });
}

}  // namespace

#define VGG_JAX_PADS                                                     \
  .Attr<int64_t>("pad_top").Attr<int64_t>("pad_bottom").Attr<int64_t>( \
      "pad_left").Attr<int64_t>("pad_right").Attr<int64_t>("threads")

#define VGG_JAX_HANDLER(name, impl)                                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl,                             \
                                ffi::Ffi::Bind()                        \
                                    .Arg<ffi::Buffer<ffi::F32>>()       \
                                    .Arg<ffi::Buffer<ffi::F32>>()       \
                                    .Ret<ffi::Buffer<ffi::F32>>() VGG_JAX_PADS)

VGG_JAX_HANDLER(VggJaxConvForward, ForwardImpl);
VGG_JAX_HANDLER(VggJaxConvBackwardData, BackwardDataImpl);
VGG_JAX_HANDLER(VggJaxConvBackwardWeights, BackwardWeightsImpl);

// The implementations oneDNN chose for a 3x3 SAME convolution (for logs and
// benchmarks): e.g. "brgconv:avx512_core".
extern "C" const char* VggJaxConvImplementations(int64_t n, int64_t h, int64_t w,
                                                 int64_t in, int64_t out) {
  thread_local std::string names;
  Convolution& c = Get({n, h, w, in, out, 3, 3, 1, 1, 1, 1});
  names = std::string(c.forward_pd.impl_info_str()) + ", " +
          c.backward_data_pd.impl_info_str() + ", " + c.backward_weights_pd.impl_info_str();
  return names.c_str();
}
