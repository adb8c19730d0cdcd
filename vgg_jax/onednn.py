"""oneDNN's convolutions, and batch norm's channel sums, inside XLA's CPU programs,
through `jax.ffi`.

Why: XLA's CPU backend computes each convolution's weight gradient as
transposes of the activation and the output gradient around an Eigen
convolution, and its thin convolutions (8-64 channels) run at a third to a
half of oneDNN's, which reads NHWC activations as they are (PyTorch's CPU
path). The gradients of one layer on a 2-core AMD EPYC with AVX-512
(`python -m experiments.bench_ops`, 2026-12-04): 128x32x32x8 -> 8 in 3.1
against 11.2 ms, 64x16x16x128 -> 128 in 42 against 59 ms
(experiments/PERFORMANCE.md has the whole steps).

The channel sums (`channel_sums.cc`, plain C++ on the same OpenMP threads)
read the activations once per pass where XLA's reductions read them once per
sum, stride across channels and add in float32 one value after another
(`vgg_jax.batch_norm` says why that is inaccurate); here each pass's two sums
accumulate in double, vectorised over the channels.

A bfloat16 model (`model.dtype=bfloat16`) takes oneDNN's bfloat16 kernels on
CPUs that multiply bfloat16 in hardware (AVX-512 BF16, AMX;
`bfloat16_available`): operands bfloat16, sums in float32, each result
rounded once, as XLA's own bfloat16 convolution (the kernel gradient leaves
oneDNN in float32, so that devices add their shares before the rounding).
With AMX they are 2.6 times as fast as the float32 ones over VGG-D's 13
convolutions at width 1/2 (75 against 197 ms, forward and both gradients at
batch 128, 32x32; 2-core Intel Xeon, 2026-12-06, experiments/PERFORMANCE.md);
batch norm's channel sums read bfloat16 as it is.

oneDNN comes from PyPI (`onednn-devel-cpu-gomp`, its headers and library
under the environment's prefix) and the FFI headers from jaxlib; the C++
files beside this one are compiled on first use with the machine's C++
compiler and cached per source and version (a wheel per platform would need
a build farm this project does not have). Where any of it is missing,
`available()` says why once and the caller keeps XLA's own convolution.

`matmul`, a plain matrix product by oneDNN, multiplies Muon's Newton-Schulz
iterations in bfloat16 (`optim.newton_schulz`): XLA's CPU dot computes
bfloat16 in float32.

`conv` is batch-parallel: under `jax.jit` over a mesh each device convolves
its share of the batch (`custom_partitioning`), and the weight gradient is
summed over the batch's mesh axes, as XLA's own convolution is partitioned.
On one device the partitioning is inlined; on several CPU devices (the tests'
eight, `jax.distributed` on CPUs) the program holds the partitioner's address,
which `parallel.key_cache_by_source` keeps out of the compilation cache's key.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import site
import sys
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from vgg_jax import env_vars, machine, native

# Set to 0, the CPU convolutions stay XLA's own (for comparisons).
SWITCH_ENV = 'VGG_JAX_ONEDNN'
# oneDNN's OpenMP threads share the cores with XLA's own thread pool. Spinning
# after each convolution, libgomp's default, takes the cores from the XLA ops
# between convolutions: VGG-A's step ran 4-7 % faster with them asleep, its FC
# matmuls twice as fast (2-core AMD EPYC, 2026-12-04). libgomp reads this when
# it loads, so it is set, unless the user set it, just before the library loads.
WAIT_POLICY_ENV = 'OMP_WAIT_POLICY'
_USERS_WAIT_POLICY = os.environ.get(WAIT_POLICY_ENV)
# The library's sources: oneDNN's convolutions and batch norm's channel sums.
SOURCES = tuple(pathlib.Path(__file__).with_name(name)
                for name in ('onednn_conv.cc', 'channel_sums.cc'))
_LIBRARY = 'libdnnl.so.3'
_FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC', '-fopenmp')
_TARGETS = {'forward': 'VggJaxConvForward', 'backward_data': 'VggJaxConvBackwardData',
            'backward_weights': 'VggJaxConvBackwardWeights',
            'forward_bias_relu': 'VggJaxConvBiasReluForward',
            'backward_weights_bias': 'VggJaxConvBackwardWeightsBias',
            'moments': 'VggJaxChannelMoments', 'gradient_sums': 'VggJaxChannelGradientSums',
            'relu_gradient_sums': 'VggJaxReluGradientSums',
            'normalize_relu_gradient': 'VggJaxNormalizeReluGradient',
            'matmul': 'VggJaxMatmul'}

Pads = tuple[tuple[int, int], tuple[int, int]]


def _prefixes() -> list[pathlib.Path]:
  # pip installs a wheel's data files (onednn's lib/ and include/) under the
  # scheme's prefix: the environment's, or the user's for `pip install --user`.
  return [pathlib.Path(p) for p in dict.fromkeys((sys.prefix, site.USER_BASE or ''))
          if p]


def _find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
  for prefix in _prefixes():
    library, include = prefix / 'lib' / _LIBRARY, prefix / 'include'
    if library.exists() and (include / 'oneapi' / 'dnnl' / 'dnnl.hpp').exists():
      return library, include
  raise FileNotFoundError('no oneDNN under ' + ', '.join(map(str, _prefixes())) +
                          ': pip install onednn-devel-cpu-gomp')


def build() -> pathlib.Path:
  """The compiled library, built once per source, jaxlib and oneDNN."""
  library, include = _find_onednn()
  return native.build(
      'onednn_conv', SOURCES, [*_FLAGS, f'-I{jax.ffi.include_dir()}', f'-I{include}'],
      link=[str(library), f'-Wl,-rpath,{library.parent}'],
      key_parts=[jax.__version__, str(library.resolve()), str(library.stat().st_size)])


@functools.cache
def _library() -> ctypes.CDLL:
  path = build()
  os.environ.setdefault(WAIT_POLICY_ENV, 'passive')
  lib = ctypes.CDLL(str(path))
  for target in _TARGETS.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)),
                                platform='cpu')
  lib.VggJaxConvImplementations.restype = ctypes.c_char_p
  lib.VggJaxConvImplementations.argtypes = [ctypes.c_int64] * 6
  return lib


@functools.cache
def unavailable_reason() -> Optional[str]:
  """None where oneDNN's convolutions can run in this process, else why not."""
  linux = sys.platform.startswith('linux')
  return native.unavailable_reason(
      SWITCH_ENV, _library, "oneDNN convolutions unavailable, XLA's own are used (slower "
      'on thin nets)', None if linux else f'built for Linux only, not {sys.platform}')


def available() -> bool:
  return unavailable_reason() is None


def users_openmp_environment():
  """`os.environ` with OMP_WAIT_POLICY as the user left it, for the processes
  started inside: another program's OpenMP (PyTorch's, in the benchmark) owns
  its cores and should spin as by default."""
  return env_vars.set_to(WAIT_POLICY_ENV, _USERS_WAIT_POLICY)


def implementations(batch: int, side: int, channels_in: int, channels_out: int,
                    dtype=jnp.float32) -> str:
  """oneDNN's kernels for a 3x3 SAME convolution of this shape and dtype (float32 or
  bfloat16), its three passes', e.g. 'brgconv:avx512_core, ...'; '' where it has none."""
  bfloat16 = jnp.dtype(dtype) == jnp.bfloat16
  return _library().VggJaxConvImplementations(batch, side, side, channels_in,
                                              channels_out, bfloat16).decode()


# CPU flags (Linux's /proc/cpuinfo) of the instructions that multiply bfloat16
# in hardware; without them oneDNN emulates bfloat16 or has no kernel for it.
BFLOAT16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_flags() -> frozenset[str]:
  """This CPU's feature flags as Linux lists them; empty where it does not."""
  return frozenset(machine.cpu_fields().get('flags', '').split())


def convolves(dtype) -> bool:
  """Whether oneDNN convolves arrays of this dtype here: float32 where the
  library is built, bfloat16 where `bfloat16_available`."""
  if jnp.dtype(dtype) == jnp.float32:
    return available()
  return jnp.dtype(dtype) == jnp.bfloat16 and bfloat16_available()


@functools.cache
def bfloat16_available() -> bool:
  """Whether oneDNN convolves bfloat16 here in hardware: a CPU with AVX-512 BF16
  or AMX, and kernels of oneDNN's own for it (not its reference loops).
  Elsewhere XLA's own bfloat16 convolution is the one to use."""
  if not available() or not cpu_flags() & set(BFLOAT16_CPU_FLAGS):
    return False
  names = implementations(8, 8, 16, 16, jnp.bfloat16)
  return bool(names) and not any(n.strip().startswith('ref') for n in names.split(','))


def _attributes(pads: Pads, threads: int) -> dict:
  (top, bottom), (left, right) = pads
  return dict(pad_top=np.int64(top), pad_bottom=np.int64(bottom), pad_left=np.int64(left),
              pad_right=np.int64(right), threads=np.int64(threads))


def _output_shape(x_shape, kernel_shape, pads: Pads):
  n, h, w, _ = x_shape
  kh, kw, _, out = kernel_shape
  (top, bottom), (left, right) = pads
  return (n, h + top + bottom - kh + 1, w + left + right - kw + 1, out)


def _call(target: str, shapes, operands, pads: Pads, threads: int, dtype=None):
  """`target` on `operands`; `shapes`: its result's shape, or a list of its results'
  (of `dtype`, by default the operands')."""
  dtype = dtype or operands[0].dtype
  results = ([jax.ShapeDtypeStruct(shape, dtype) for shape in shapes]
             if isinstance(shapes, list) else jax.ShapeDtypeStruct(shapes, dtype))
  return jax.ffi.ffi_call(_TARGETS[target], results)(*operands, **_attributes(pads, threads))


def _threads_per_device(mesh) -> int:
  """oneDNN's threads for each of this process's devices in `mesh` (0: OpenMP's default)."""
  return _threads_for(sum(d.process_index == jax.process_index() for d in mesh.devices.flat))


def _threads_for(local: int) -> int:
  """oneDNN's threads for each of `local` devices sharing this process's cores."""
  return 0 if local <= 1 else max(1, len(os.sched_getaffinity(0)) // local)


# --------------------------------------------------------------------------
# Partitioning: over the batch only (the first axis of the first operand).
# --------------------------------------------------------------------------


def _batch_axes(shape) -> object:
  spec = shape.sharding.spec
  return spec[0] if len(spec) else None


def _batch_partitioned(single, rule: str, batched: tuple[bool, ...], summed: bool):
  """`single(*operands, pads, threads)` split over the batch of the first operand.

  The operands marked in `batched` are split by their first axis, the others
  are whole on every device; the results are split by the batch too, or, if
  `summed` (kernel and bias gradients, channel sums), summed over the batch's shards.
  """
  results = rule.split('->')[1].count(',') + 1

  def whole(*args):  # unpartitioned (one device): OpenMP's default threads
    *operands, pads = args
    return single(*operands, pads, 0)

  op = custom_partitioning(whole, static_argnums=(len(batched),))

  def shardings(mesh, arg_shapes):
    batch = _batch_axes(arg_shapes[0])
    by_batch, replicated = NamedSharding(mesh, P(batch)), NamedSharding(mesh, P())
    args = tuple(by_batch if split else replicated for split in batched)
    result = replicated if summed else by_batch
    return batch, args, result if results == 1 else (result,) * results

  def infer(pads, mesh, arg_shapes, result_shape):
    del pads, result_shape
    return shardings(mesh, arg_shapes)[2]

  def partition(pads, mesh, arg_shapes, result_shape):
    del result_shape
    batch, args, result = shardings(mesh, arg_shapes)
    threads = _threads_per_device(mesh)

    def lowered(*operands):
      out = single(*operands, pads, threads)
      if summed and batch is not None:
        return jax.tree_util.tree_map(lambda o: jax.lax.psum(o, batch), out)
      return out

    return mesh, lowered, result, args

  # Every factor but the batch stays whole, listed in order of appearance (Shardy's rule).
  factors = rule.replace('->', ' ').replace(',', ' ').split()
  others = tuple(f for f in dict.fromkeys(factors) if f != 'n')
  op.def_partition(partition=partition, infer_sharding_from_operands=infer,
                   sharding_rule=rule, need_replication_factors=others,
                   reduction_factors=('n',) if summed else ())
  return op


def _kernel_shape(x_shape, dy_shape, pads: Pads):
  kh = x_shape[1] + sum(pads[0]) - dy_shape[1] + 1
  kw = x_shape[2] + sum(pads[1]) - dy_shape[2] + 1
  return (kh, kw, x_shape[3], dy_shape[3])


def _forward_single(x, kernel, pads, threads):
  return _call('forward', _output_shape(x.shape, kernel.shape, pads), (x, kernel), pads,
               threads)


def _forward_bias_relu_single(x, kernel, bias, pads, threads):
  return _call('forward_bias_relu', _output_shape(x.shape, kernel.shape, pads),
               (x, kernel, bias), pads, threads)


def _backward_data_single(dy, kernel, pads, threads):
  n, oh, ow, _ = dy.shape
  kh, kw, cin, _ = kernel.shape
  (top, bottom), (left, right) = pads
  shape = (n, oh - top - bottom + kh - 1, ow - left - right + kw - 1, cin)
  return _call('backward_data', shape, (dy, kernel), pads, threads)


def _backward_weights_single(x, dy, pads, threads):
  # float32 for bfloat16 too: the devices' shares are summed before the one rounding.
  return _call('backward_weights', _kernel_shape(x.shape, dy.shape, pads), (x, dy), pads,
               threads, jnp.float32)


def _backward_weights_bias_single(x, dy, pads, threads):
  return tuple(_call('backward_weights_bias',
                     [_kernel_shape(x.shape, dy.shape, pads), (dy.shape[3],)], (x, dy), pads,
                     threads, jnp.float32))


_forward = _batch_partitioned(_forward_single, 'n h w c, a b c o -> n p q o',
                              (True, False), summed=False)
_forward_bias_relu = _batch_partitioned(_forward_bias_relu_single,
                                        'n h w c, a b c o, o -> n p q o',
                                        (True, False, False), summed=False)
_backward_data = _batch_partitioned(_backward_data_single, 'n p q o, a b c o -> n h w c',
                                    (True, False), summed=False)
_backward_weights = _batch_partitioned(_backward_weights_single,
                                       'n h w c, n p q o -> a b c o', (True, True),
                                       summed=True)
_backward_weights_bias = _batch_partitioned(_backward_weights_bias_single,
                                            'n h w c, n p q o -> a b c o, o', (True, True),
                                            summed=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, kernel, pads: Pads):
  """`lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=('NHWC',
  'HWIO', 'NHWC'))` for non-negative pads, by oneDNN: float32, or bfloat16
  (where `bfloat16_available()`) accumulated in float32 and rounded once."""
  return _forward(x, kernel, pads)


def _conv_forward(x, kernel, pads):
  return _forward(x, kernel, pads), (x, kernel)


def _conv_backward(pads, residuals, dy):
  x, kernel = residuals
  return (_backward_data(dy, kernel, pads),
          _backward_weights(x, dy, pads).astype(kernel.dtype))


conv.defvjp(_conv_forward, _conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_bias_relu(x, kernel, bias, pads: Pads):
  """relu(`conv(x, kernel, pads)` + bias), by one oneDNN call each way: the bias
  and the ReLU applied as the convolution writes its output, the bias's
  gradient summed as the kernel gradient reads the output gradient. x and
  kernel float32, or bfloat16 (`bfloat16_available`); the bias float32 for
  either, added before the one rounding."""
  return _forward_bias_relu(x, kernel, bias, pads)


def _conv_bias_relu_forward(x, kernel, bias, pads):
  y = _forward_bias_relu(x, kernel, bias, pads)
  return y, (x, kernel, y)


def _conv_bias_relu_backward(pads, residuals, dy):
  x, kernel, y = residuals
  dz = jnp.where(y > 0, dy, 0)  # the ReLU's gradient, as jax.nn.relu's
  d_kernel, d_bias = _backward_weights_bias(x, dz, pads)
  return _backward_data(dz, kernel, pads), d_kernel.astype(kernel.dtype), d_bias


conv_bias_relu.defvjp(_conv_bias_relu_forward, _conv_bias_relu_backward)


# --------------------------------------------------------------------------
# Batch norm's channel sums (channel_sums.cc), split over the batch and
# summed over its shards like the kernel gradient (the static `pads` is None).
# --------------------------------------------------------------------------


def _sums_single(target: str, *args):
  *operands, _, threads = args  # no pads
  channels = jax.ShapeDtypeStruct((operands[0].shape[-1],), jnp.float32)
  return tuple(jax.ffi.ffi_call(_TARGETS[target], (channels, channels))(
      *operands, threads=np.int64(threads)))


def _per_channel_partitioned(single, rank: int, arrays: int, vectors: int, summed: bool):
  """`single` of `arrays` operands of rank `rank` (N...C) and the `vectors`
  per-channel operands after them, split over the batch: its results two
  per-channel sums of the shares, psum'd (`summed`), or one array shaped as
  the first operand."""
  array = ' '.join(('n', *'hwxyz'[:rank - 2], 'c'))
  rule = ', '.join([array] * arrays + ['c'] * vectors) + ' -> ' + ('c, c' if summed else array)
  return _batch_partitioned(single, rule, (True,) * arrays + (False,) * vectors, summed)


@functools.cache
def _batch_summed(target: str, rank: int, arrays: int, vectors: int):
  """`target`'s two per-channel sums, each device summing its share of the batch."""
  return _per_channel_partitioned(functools.partial(_sums_single, target), rank, arrays,
                                  vectors, summed=True)


def _elementwise_single(target: str, *args):
  *operands, _, threads = args  # no pads
  x = operands[0]
  return jax.ffi.ffi_call(_TARGETS[target], jax.ShapeDtypeStruct(x.shape, x.dtype))(
      *operands, threads=np.int64(threads))


@functools.cache
def _batch_elementwise(target: str, rank: int, arrays: int, vectors: int):
  """`target`'s result shaped as its first operand, each device computing its
  share of the batch."""
  return _per_channel_partitioned(functools.partial(_elementwise_single, target), rank,
                                  arrays, vectors, summed=False)


def _moments(x):
  return _batch_summed('moments', x.ndim, 1, 0)(x, None)


def _gradient_sums(g, x, mean):
  return _batch_summed('gradient_sums', x.ndim, 2, 1)(g, x, mean, None)


@jax.custom_vjp
def channel_moments(x):
  """(sum of x, sum of x*x) over every axis but the last, accumulated in double
  (x float32 or bfloat16; the sums float32)."""
  return _moments(x)


def _moments_forward(x):
  return _moments(x), x


def _moments_backward(x, grads):
  g_sum, g_sum_squares = grads
  return ((g_sum + 2 * x.astype(jnp.float32) * g_sum_squares).astype(x.dtype),)


channel_moments.defvjp(_moments_forward, _moments_backward)


def channel_gradient_sums(g, x, mean):
  """(sum of g, sum of g * (x - mean)) over every axis but the last, in double:
  batch norm's bias and scale gradients (not differentiable). g and x both
  float32 or both bfloat16, mean float32; the sums float32."""
  return _gradient_sums(g, x, mean)


def relu_gradient_sums(g, out, x, mean):
  """`channel_gradient_sums` of the ReLU's gradient (g where out > 0, else 0),
  without writing it out. g, out and x bfloat16."""
  return _batch_summed('relu_gradient_sums', x.ndim, 3, 1)(g, out, x, mean, None)


def normalize_relu_gradient(g, out, x, mul, sum_grad, square_grad):
  """x's gradient through `normalize_relu` and the two channel sums its
  statistics came from: round(round(gm * mul) + round(sum_grad + 2 * x *
  square_grad)), gm the ReLU's gradient, rounded where XLA rounds the same
  jax code (vgg_jax/batch_norm.py), in one read of g, out and x (bfloat16)."""
  return _batch_elementwise('normalize_relu_gradient', x.ndim, 3, 3)(
      g, out, x, mul, sum_grad, square_grad, None)


# --------------------------------------------------------------------------
# Matrix products (Muon's Newton-Schulz iterations, vgg_jax/optim.py).
# --------------------------------------------------------------------------


def matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
  """op(a) @ op(b) by oneDNN, op a transpose where asked (read in place): float32,
  or bfloat16 (where `bfloat16_available()`) accumulated in float32 and rounded
  once. Not differentiable. Replicated under a mesh: every local device computes
  the whole product on its share of the cores."""
  m, k = a.shape[::-1] if transpose_a else a.shape
  k_b, n = b.shape[::-1] if transpose_b else b.shape
  if k != k_b:
    raise ValueError(f'matmul of {a.shape}{".T" * transpose_a} and '
                     f'{b.shape}{".T" * transpose_b}: the inner sizes differ')
  _library()  # registers the handlers
  threads = _threads_for(jax.local_device_count())
  return jax.ffi.ffi_call(_TARGETS['matmul'], jax.ShapeDtypeStruct((m, n), a.dtype))(
      a, b, transpose_a=np.int64(transpose_a), transpose_b=np.int64(transpose_b),
      threads=np.int64(threads))
