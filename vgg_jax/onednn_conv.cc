// oneDNN's convolutions as XLA FFI handlers: NHWC activations, HWIO kernels,
// float32 or bfloat16 (oneDNN accumulates bfloat16 in float32), stride 1, any
// non-negative padding. Every operand and result of a call has one type, but
// for the bias and the kernel's and bias's gradients, float32 for either: the
// caller sums the gradients over devices before it rounds them, as XLA's own
// partitioned bfloat16 convolution does.
// vgg_jax/onednn.py builds this file on first use and calls it from jitted
// code (cpu_ops.conv_general_dilated).
//
// Three handlers, one per pass, so that XLA drops the input gradient where no
// one uses it (the first layer's) and schedules the passes like its own ops;
// and for a convolution with a bias and a ReLU (the unnormalised VGGs), a
// forward pass that adds the bias and applies the ReLU as the convolution
// writes its output, and a kernel gradient that sums the bias's gradient as
// it reads the output gradient: two passes over the activations fewer.
// Activations stay in the caller's layout (oneDNN's kernels read NHWC as it
// is); kernels are reordered to the layout oneDNN picks, as PyTorch does.
// In bfloat16 the kernel gradient of a map of a few positions is one oneDNN
// matmul of its image patches instead (`kMaxMatmulPositions`).
// And a plain matrix product (`VggJaxMatmul`, either operand read transposed),
// for Muon's Newton-Schulz iterations in bfloat16 (vgg_jax/optim.py).

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

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

// n, h, w, in, out, kh, kw, pad_top, pad_bottom, pad_left, pad_right, and the
// element type (a memory::data_type)
using Geometry = std::array<int64_t, 12>;

// A geometry's memory descriptors and window, as oneDNN's constructors take them.
struct Shapes {
  memory::desc src, dst, kernel, hwio, kernel_gradient, hwio_gradient;
  memory::dims strides, pad_l, pad_r;
};

// The output's height and width.
std::array<int64_t, 2> OutputSize(const Geometry& g) {
  auto [n, h, w, in, out, kh, kw, top, bottom, left, right, type_code] = g;
  return {h + top + bottom - kh + 1, w + left + right - kw + 1};
}

Shapes ShapesOf(const Geometry& g) {
  auto [n, h, w, in, out, kh, kw, top, bottom, left, right, type_code] = g;
  const auto [oh, ow] = OutputSize(g);
  const Type type = static_cast<Type>(type_code);
  return {memory::desc({n, in, h, w}, type, Tag::nhwc),
          memory::desc({n, out, oh, ow}, type, Tag::nhwc),
          memory::desc({out, in, kh, kw}, type, Tag::any),  // oneDNN's choice
          memory::desc({out, in, kh, kw}, type, Tag::hwio),
          memory::desc({out, in, kh, kw}, Type::f32, Tag::any),
          memory::desc({out, in, kh, kw}, Type::f32, Tag::hwio),
          {1, 1}, {top, left}, {bottom, right}};
}

// Each call brings its own scratchpad: XLA runs one program's shards (one per
// device) on several threads at once, through the same primitives.
dnnl::primitive_attr OwnScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

constexpr auto kDirect = dnnl::algorithm::convolution_direct;

// oneDNN's bfloat16 kernel gradient reads maps of a few positions slowly: on a
// 2-core Intel Xeon with AMX, 128x4x4x256 -> 256 took 8.1 ms where its forward
// pass, the same multiply-adds, takes 2.1. Written as the image patches
// (n*oh*ow rows of kh*kw*in) transposed times the output gradient (n*oh*ow
// rows of out), the same sum is one matmul, which oneDNN runs near the AMX
// units' pace: 3.0 ms, the patches included (128x4x4x128 -> 256: 1.5 against
// 4.5 ms). From 8x8 on the patches cost more than the matmul saves (128x8x8x64
// -> 128: 2.7 against 1.9 ms), and float32 gains nothing (4x4x256: 8.8 against
// 8.4 ms). Hence bfloat16 maps of at most 16 output positions. (One-off
// script, 2026-12-06, the kernel gradient alone, best of 5 windows of 20 calls.)
constexpr int64_t kMaxMatmulPositions = 16;

// The kernel gradient as one matmul: the patches transposed [kh*kw*in,
// n*oh*ow] (`Patches`' rows read as columns) times the output gradient
// [n*oh*ow, out], accumulated and written in float32.
struct PatchesMatmul {
  Geometry geometry;
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

// The matmul for a geometry where it wins (above), else null.
std::unique_ptr<PatchesMatmul> MakePatchesMatmul(const Geometry& g) {
  auto [n, h, w, in, out, kh, kw, top, bottom, left, right, type_code] = g;
  const auto [oh, ow] = OutputSize(g);
  const Type type = static_cast<Type>(type_code);
  if (type != Type::bf16 || oh * ow > kMaxMatmulPositions) return nullptr;
  const int64_t rows = kh * kw * in, positions = n * oh * ow;
  auto m = std::make_unique<PatchesMatmul>();
  m->geometry = g;
  m->pd = dnnl::matmul::primitive_desc(
      Engine(), memory::desc({rows, positions}, type, memory::dims{1, rows}),
      memory::desc({positions, out}, type, Tag::ab), memory::desc({rows, out}, Type::f32, Tag::ab),
      OwnScratchpad());
  m->primitive = dnnl::matmul(m->pd);
  return m;
}

// The image patches of x (NHWC, `element` bytes each), row (b, y, x) holding the
// window of output position (y, x) of image b in the order (ky, kx, channel),
// zero where the window leaves the padded image.
void Patches(const Geometry& g, size_t element, const char* x, char* patches) {
  auto [n, h, w, in, out, kh, kw, top, bottom, left, right, type_code] = g;
  const auto [oh, ow] = OutputSize(g);
  const size_t run = in * element, row = kh * kw * run;
#pragma omp parallel for collapse(2)
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t y = 0; y < oh; ++y) {
      for (int64_t xo = 0; xo < ow; ++xo) {
        char* to = patches + ((b * oh + y) * ow + xo) * row;
        for (int64_t ky = 0; ky < kh; ++ky) {
          const int64_t iy = y + ky - top;
          for (int64_t kx = 0; kx < kw; ++kx, to += run) {
            const int64_t ix = xo + kx - left;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
              std::memset(to, 0, run);
            } else {
              std::memcpy(to, x + ((b * h + iy) * w + ix) * run, run);
            }
          }
        }
      }
    }
  }
}

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
  memory::desc hwio_gradient;  // the kernel gradient as the caller takes it: float32
  // Where not null, the kernel gradient's pass, and backward_weights is unset.
  std::unique_ptr<PatchesMatmul> kernel_gradient_matmul;
};

std::unique_ptr<Convolution> Make(const Geometry& g) {
  const Shapes s = ShapesOf(g);
  auto c = std::make_unique<Convolution>();
  c->hwio = s.hwio;
  c->hwio_gradient = s.hwio_gradient;
  c->forward_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, kDirect, s.src, s.kernel, s.dst, s.strides,
      s.pad_l, s.pad_r, OwnScratchpad());
  c->forward = dnnl::convolution_forward(c->forward_pd);
  c->backward_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), kDirect, s.src, s.kernel, s.dst, s.strides, s.pad_l, s.pad_r, c->forward_pd,
      OwnScratchpad());
  c->backward_data = dnnl::convolution_backward_data(c->backward_data_pd);
  c->kernel_gradient_matmul = MakePatchesMatmul(g);
  if (c->kernel_gradient_matmul) return c;
  c->backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), kDirect, s.src, s.kernel_gradient, s.dst, s.strides, s.pad_l, s.pad_r,
      c->forward_pd, OwnScratchpad());
  c->backward_weights = dnnl::convolution_backward_weights(c->backward_weights_pd);
  return c;
}

// The passes that differ for relu(conv(x) + bias): the input gradient is the
// plain convolution's, of the output gradient masked by the ReLU.
struct BiasedConvolution {
  dnnl::convolution_forward::primitive_desc forward_pd;  // + bias, then ReLU
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_weights::primitive_desc backward_weights_pd;  // + bias's
  dnnl::convolution_backward_weights backward_weights;
  memory::desc hwio, hwio_gradient;
  // Where not null, the kernel gradient's pass, and backward_weights is unset.
  std::unique_ptr<PatchesMatmul> kernel_gradient_matmul;
};

// The bias and its gradient float32 whatever the activations' type.
std::unique_ptr<BiasedConvolution> MakeBiased(const Geometry& g) {
  const Shapes s = ShapesOf(g);
  const memory::desc bias({s.dst.get_dims()[1]}, Type::f32, Tag::a);
  dnnl::primitive_attr with_relu = OwnScratchpad();
  dnnl::post_ops relu;
  relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  with_relu.set_post_ops(relu);
  auto c = std::make_unique<BiasedConvolution>();
  c->hwio = s.hwio;
  c->hwio_gradient = s.hwio_gradient;
  c->forward_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, kDirect, s.src, s.kernel, bias, s.dst,
      s.strides, s.pad_l, s.pad_r, with_relu);
  c->forward = dnnl::convolution_forward(c->forward_pd);
  c->kernel_gradient_matmul = MakePatchesMatmul(g);
  if (c->kernel_gradient_matmul) return c;
  c->backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), kDirect, s.src, s.kernel_gradient, bias, s.dst, s.strides, s.pad_l, s.pad_r,
      c->forward_pd, OwnScratchpad());
  c->backward_weights = dnnl::convolution_backward_weights(c->backward_weights_pd);
  return c;
}

template <typename Made, typename Key, std::unique_ptr<Made> (*make)(const Key&)>
Made& Cached(const Key& g) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Made>> made;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = made[g];
  if (!slot) slot = make(g);
  return *slot;
}

Convolution& Get(const Geometry& g) { return Cached<Convolution, Geometry, Make>(g); }

BiasedConvolution& GetBiased(const Geometry& g) {
  return Cached<BiasedConvolution, Geometry, MakeBiased>(g);
}

// A matrix product c = op(a) op(b), op a transpose where asked (read through
// strides, not copied): m, k, n, transpose_a, transpose_b, and the element type.
using MatmulShape = std::array<int64_t, 6>;

struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

// A row-major (rows, cols) matrix, or the transpose of a row-major (cols, rows) one.
memory::desc MatrixDesc(int64_t rows, int64_t cols, bool transposed, Type type) {
  return transposed ? memory::desc({rows, cols}, type, memory::dims{1, rows})
                    : memory::desc({rows, cols}, type, memory::dims{cols, 1});
}

std::unique_ptr<Matmul> MakeMatmul(const MatmulShape& s) {
  auto [m, k, n, transpose_a, transpose_b, type_code] = s;
  const Type type = static_cast<Type>(type_code);
  auto mm = std::make_unique<Matmul>();
  mm->pd = dnnl::matmul::primitive_desc(Engine(), MatrixDesc(m, k, transpose_a, type),
                                        MatrixDesc(k, n, transpose_b, type),
                                        MatrixDesc(m, n, false, type), OwnScratchpad());
  mm->primitive = dnnl::matmul(mm->pd);
  return mm;
}

Matmul& GetMatmul(const MatmulShape& s) { return Cached<Matmul, MatmulShape, MakeMatmul>(s); }

Geometry GeometryOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> hwio, int64_t top,
                    int64_t bottom, int64_t left, int64_t right, Type type) {
  return {x[0], x[1], x[2], x[3], hwio[3], hwio[0], hwio[1], top, bottom, left, right,
          static_cast<int64_t>(type)};
}

// The oneDNN type of a call whose operands and results are all `buffers`' one
// type, float32 or bfloat16; Type::undef otherwise.
template <typename... Buffers>
Type TypeOf(const ffi::AnyBuffer& first, const Buffers&... rest) {
  const ffi::DataType t = first.element_type();
  if (((rest.element_type() != t) || ...)) return Type::undef;
  if (t == ffi::DataType::F32) return Type::f32;
  if (t == ffi::DataType::BF16) return Type::bf16;
  return Type::undef;
}

ffi::Error TypeError() {
  return ffi::Error::InvalidArgument(
      "oneDNN convolution: activations and kernels must all be float32 or all bfloat16");
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
memory KernelAs(const memory::desc& wanted, const memory::desc& hwio_desc, void* hwio,
                memory* scratch) {
  memory given(hwio_desc, Engine(), hwio);
  if (wanted == hwio_desc) return given;
  *scratch = memory(wanted, Engine());
  dnnl::reorder(given, *scratch).execute(Stream(), given, *scratch);
  return *scratch;
}

// A forward pass; without a bias where `bias` is null.
void Forward(const dnnl::convolution_forward::primitive_desc& pd,
             const dnnl::convolution_forward& primitive, const memory::desc& hwio, void* x,
             void* kernel, void* bias, void* y) {
  memory scratch;
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(pd.src_desc(), Engine(), x)},
      {DNNL_ARG_WEIGHTS, KernelAs(pd.weights_desc(), hwio, kernel, &scratch)},
      {DNNL_ARG_DST, memory(pd.dst_desc(), Engine(), y)},
      {DNNL_ARG_SCRATCHPAD, memory(pd.scratchpad_desc(), Engine())}};
  if (bias) args[DNNL_ARG_BIAS] = memory(pd.bias_desc(), Engine(), bias);
  primitive.execute(Stream(), args);
}

// Each bias's gradient: the output gradient's columns summed ([positions, out],
// bfloat16 or float32), in float32.
void ColumnSums(Type type, const void* dy, int64_t positions, int64_t out, float* sums) {
  std::vector<float> total(out, 0.f);
  for (int64_t p = 0; p < positions; ++p) {
    if (type == Type::bf16) {
      const uint16_t* row = static_cast<const uint16_t*>(dy) + p * out;
      for (int64_t c = 0; c < out; ++c) {
        const uint32_t bits = static_cast<uint32_t>(row[c]) << 16;
        float value;
        std::memcpy(&value, &bits, sizeof value);
        total[c] += value;
      }
    } else {
      const float* row = static_cast<const float*>(dy) + p * out;
      for (int64_t c = 0; c < out; ++c) total[c] += row[c];
    }
  }
  std::memcpy(sums, total.data(), out * sizeof(float));
}

// The kernel gradient by `m` (HWIO, float32), and the bias's unless `dbias` is null.
void KernelGradientByMatmul(const PatchesMatmul& m, const void* x, void* dy, void* dkernel,
                            void* dbias) {
  auto [n, h, w, in, out, kh, kw, top, bottom, left, right, type_code] = m.geometry;
  const Type type = static_cast<Type>(type_code);
  const size_t element = memory::data_type_size(type);
  const auto [oh, ow] = OutputSize(m.geometry);
  const int64_t positions = n * oh * ow;
  // One buffer per calling thread (each XLA device runs its shard on its own),
  // kept: a fresh one would take its pages from the kernel on every call.
  thread_local std::vector<char> patches;
  patches.resize(positions * kh * kw * in * element);
  Patches(m.geometry, element, static_cast<const char*>(x), patches.data());
  m.primitive.execute(
      Stream(), {{DNNL_ARG_SRC, memory(m.pd.src_desc(), Engine(), patches.data())},
                 {DNNL_ARG_WEIGHTS, memory(m.pd.weights_desc(), Engine(), dy)},
                 {DNNL_ARG_DST, memory(m.pd.dst_desc(), Engine(), dkernel)},
                 {DNNL_ARG_SCRATCHPAD, memory(m.pd.scratchpad_desc(), Engine())}});
  if (dbias) ColumnSums(type, dy, positions, out, static_cast<float*>(dbias));
}

// A kernel-gradient pass, written as HWIO; the bias's gradient too unless `dbias`
// is null. By `matmul` where it is not null.
void BackwardWeights(const dnnl::convolution_backward_weights::primitive_desc& pd,
                     const dnnl::convolution_backward_weights& primitive,
                     const PatchesMatmul* matmul, const memory::desc& hwio_desc, void* x,
                     void* dy, void* dkernel, void* dbias) {
  if (matmul) return KernelGradientByMatmul(*matmul, x, dy, dkernel, dbias);
  memory hwio(hwio_desc, Engine(), dkernel);
  const memory::desc wanted = pd.diff_weights_desc();
  const bool direct = wanted == hwio_desc;
  memory diff_weights = direct ? hwio : memory(wanted, Engine());
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(pd.src_desc(), Engine(), x)},
      {DNNL_ARG_DIFF_DST, memory(pd.diff_dst_desc(), Engine(), dy)},
      {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
      {DNNL_ARG_SCRATCHPAD, memory(pd.scratchpad_desc(), Engine())}};
  if (dbias) args[DNNL_ARG_DIFF_BIAS] = memory(pd.diff_bias_desc(), Engine(), dbias);
  primitive.execute(Stream(), args);
  if (!direct) dnnl::reorder(diff_weights, hwio).execute(Stream(), diff_weights, hwio);
}

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                       int64_t pad_right, int64_t threads) {
  const Type type = TypeOf(x, kernel, *y);
  if (type == Type::undef) return TypeError();
  return Run(threads, [&] {
    Convolution& c = Get(GeometryOf(x.dimensions(), kernel.dimensions(), pad_top, pad_bottom,
                                    pad_left, pad_right, type));
    Forward(c.forward_pd, c.forward, c.hwio, x.untyped_data(), kernel.untyped_data(),
            nullptr, y->untyped_data());
  });
}

ffi::Error BackwardDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer kernel,
                            ffi::Result<ffi::AnyBuffer> dx, int64_t pad_top,
                            int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                            int64_t threads) {
  const Type type = TypeOf(dy, kernel, *dx);
  if (type == Type::undef) return TypeError();
  return Run(threads, [&] {
    Convolution& c = Get(GeometryOf(dx->dimensions(), kernel.dimensions(), pad_top, pad_bottom,
                                    pad_left, pad_right, type));
    memory diff_dst(c.backward_data_pd.diff_dst_desc(), Engine(), dy.untyped_data());
    memory diff_src(c.backward_data_pd.diff_src_desc(), Engine(), dx->untyped_data());
    memory scratch;
    memory weights =
        KernelAs(c.backward_data_pd.weights_desc(), c.hwio, kernel.untyped_data(), &scratch);
    memory scratchpad(c.backward_data_pd.scratchpad_desc(), Engine());
    c.backward_data.execute(Stream(), {{DNNL_ARG_DIFF_DST, diff_dst},
                                       {DNNL_ARG_WEIGHTS, weights},
                                       {DNNL_ARG_DIFF_SRC, diff_src},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
  });
}

ffi::Error BackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                               ffi::ResultBuffer<ffi::F32> dkernel, int64_t pad_top,
                               int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                               int64_t threads) {
  const Type type = TypeOf(x, dy);
  if (type == Type::undef) return TypeError();
  return Run(threads, [&] {
    Convolution& c = Get(GeometryOf(x.dimensions(), dkernel->dimensions(), pad_top, pad_bottom,
                                    pad_left, pad_right, type));
    BackwardWeights(c.backward_weights_pd, c.backward_weights, c.kernel_gradient_matmul.get(),
                    c.hwio_gradient, x.untyped_data(), dy.untyped_data(),
                    dkernel->untyped_data(), nullptr);
  });
}

ffi::Error ForwardBiasReluImpl(ffi::AnyBuffer x, ffi::AnyBuffer kernel,
                               ffi::Buffer<ffi::F32> bias, ffi::Result<ffi::AnyBuffer> y,
                               int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                               int64_t pad_right, int64_t threads) {
  const Type type = TypeOf(x, kernel, *y);
  if (type == Type::undef) return TypeError();
  return Run(threads, [&] {
    BiasedConvolution& c = GetBiased(GeometryOf(x.dimensions(), kernel.dimensions(), pad_top,
                                                pad_bottom, pad_left, pad_right, type));
    Forward(c.forward_pd, c.forward, c.hwio, x.untyped_data(), kernel.untyped_data(),
            bias.typed_data(), y->untyped_data());
  });
}

ffi::Error BackwardWeightsBiasImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                                   ffi::ResultBuffer<ffi::F32> dkernel,
                                   ffi::ResultBuffer<ffi::F32> dbias, int64_t pad_top,
                                   int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                                   int64_t threads) {
  const Type type = TypeOf(x, dy);
  if (type == Type::undef) return TypeError();
  return Run(threads, [&] {
    BiasedConvolution& c = GetBiased(GeometryOf(x.dimensions(), dkernel->dimensions(),
                                                pad_top, pad_bottom, pad_left, pad_right, type));
    BackwardWeights(c.backward_weights_pd, c.backward_weights, c.kernel_gradient_matmul.get(),
                    c.hwio_gradient, x.untyped_data(), dy.untyped_data(),
                    dkernel->typed_data(), dbias->typed_data());
  });
}

ffi::Error MatmulImpl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                      int64_t transpose_a, int64_t transpose_b, int64_t threads) {
  const Type type = TypeOf(a, b, *c);
  if (type == Type::undef) {
    return ffi::Error::InvalidArgument(
        "oneDNN matmul: a, b and c must all be float32 or all bfloat16");
  }
  const auto da = a.dimensions(), dc = c->dimensions();
  const int64_t k = transpose_a ? da[0] : da[1];
  return Run(threads, [&] {
    Matmul& mm = GetMatmul({dc[0], k, dc[1], transpose_a, transpose_b,
                            static_cast<int64_t>(type)});
    mm.primitive.execute(
        Stream(), {{DNNL_ARG_SRC, memory(mm.pd.src_desc(), Engine(), a.untyped_data())},
                   {DNNL_ARG_WEIGHTS, memory(mm.pd.weights_desc(), Engine(), b.untyped_data())},
                   {DNNL_ARG_DST, memory(mm.pd.dst_desc(), Engine(), c->untyped_data())},
                   {DNNL_ARG_SCRATCHPAD, memory(mm.pd.scratchpad_desc(), Engine())}});
  });
}

}  // namespace

#define VGG_JAX_PADS                                                     \
  .Attr<int64_t>("pad_top").Attr<int64_t>("pad_bottom").Attr<int64_t>( \
      "pad_left").Attr<int64_t>("pad_right").Attr<int64_t>("threads")

#define VGG_JAX_HANDLER(name, impl)                                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                   \
      name, impl,                                                                  \
      ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() \
          VGG_JAX_PADS)

VGG_JAX_HANDLER(VggJaxConvForward, ForwardImpl);
VGG_JAX_HANDLER(VggJaxConvBackwardData, BackwardDataImpl);

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() VGG_JAX_PADS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxConvBiasReluForward, ForwardBiasReluImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>() VGG_JAX_PADS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxConvBackwardWeightsBias, BackwardWeightsBiasImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() VGG_JAX_PADS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggJaxMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose_a")
                                  .Attr<int64_t>("transpose_b")
                                  .Attr<int64_t>("threads"));

// The implementations oneDNN chose for a 3x3 SAME convolution (for logs and
// benchmarks, and to tell whether this CPU has bfloat16 kernels): e.g.
// "brgconv:avx512_core, ..."; `bfloat16` nonzero for that type, else float32.
// Empty where oneDNN has no implementation of the type on this CPU.
extern "C" const char* VggJaxConvImplementations(int64_t n, int64_t h, int64_t w,
                                                 int64_t in, int64_t out, int64_t bfloat16) {
  thread_local std::string names;
  const Type type = bfloat16 ? Type::bf16 : Type::f32;
  try {
    Convolution& c = Get({n, h, w, in, out, 3, 3, 1, 1, 1, 1, static_cast<int64_t>(type)});
    names = std::string(c.forward_pd.impl_info_str()) + ", " +
            c.backward_data_pd.impl_info_str() + ", " +
            (c.kernel_gradient_matmul
                 ? std::string("patches+matmul:") + c.kernel_gradient_matmul->pd.impl_info_str()
                 : std::string(c.backward_weights_pd.impl_info_str()));
  } catch (const dnnl::error&) {
    names.clear();
  }
  return names.c_str();
}
