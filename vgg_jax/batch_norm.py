"""Batch norm whose statistics and gradients are float32-accurate on every backend.

Flax's `nn.BatchNorm` sums each channel over N*H*W values with one XLA
reduction. XLA's CPU backend, with the YNNPACK reduction fusions off (as the
training step compiles, see `cpu_ops.compiler_options`), adds them one after the other:
at 64x32x32x16 the mean comes out with a relative error of 2.9e-6 against 1e-7
with the fusions on, and the step's gradients about 3x less accurate. Here
every per-channel sum runs in three short stages (over W, then H, then N), kept
apart by optimisation barriers so that XLA cannot merge them back into one long
sum: 1.3e-7 at the same cost. (Measured 2026-12-01 by a one-off script against
float64 numpy, the setup of tests/test_batch_norm.py, which asserts < 5e-7.) The
same holds for the sums of the backward pass (the scale's and bias's gradients),
through a custom VJP of the normalisation.

Where `vgg_jax.onednn`'s library is built (float32 on the CPU), the two sums of
each pass come from one read of the activations, accumulated in double and
vectorised over the channels (`channel_sums.cc`): the float32 rounding of the
exact sums, four times as fast as the staged ones (128x32x32x16: forward 0.45
against 1.8 ms, backward 0.52 against 2.05 ms; `python -m experiments.bench_ops`,
2-core AMD EPYC with AVX-512, 2026-12-04). Elsewhere the staged sums above. In
a bfloat16 model the backward pass of batch norm and its ReLU is two C++
passes there (`train_normalize_relu`), bit for bit XLA's values.

Variables, names, defaults and results match `nn.BatchNorm` (fast variance,
E[x^2] - E[x]^2 clipped at 0; statistics in at least float32), so checkpoints
and imported weights are interchangeable with it. Other backends reduce in
trees already and keep Flax's (`default_batch_norm`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vgg_jax import cpu_ops, onednn


def channel_sum(x: jax.Array) -> jax.Array:
  """Per-channel sum of an NHWC (or N...C) array, in stages of one axis each."""
  for axis in range(x.ndim - 2, 0, -1):
    x = lax.optimization_barrier(jnp.sum(x, axis=axis))
  return jnp.sum(x, axis=0)


def staged_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel sums of x and of x * x, staged (`channel_sum`)."""
  return channel_sum(x), channel_sum(x * x)


def staged_gradient_sums(g, x, mean) -> tuple[jax.Array, jax.Array]:
  """Per-channel sums of g and of g * (x - mean), staged (`channel_sum`)."""
  return channel_sum(g), channel_sum(g * (x - mean))


def _native_sums(*arrays) -> bool:
  """Whether `vgg_jax.onednn`'s library sums these: all float32 or all bfloat16,
  on the CPU, where it is built."""
  dtypes = {jnp.dtype(a.dtype) for a in arrays}
  return (cpu_ops.on_cpu() and len(dtypes) == 1
          and dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)}
          and onednn.available())


def _at_least_float32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel sums of x and of x * x, in at least float32: one pass in
  double where the native library is built, else staged."""
  if _native_sums(x):
    return onednn.channel_moments(x)
  return staged_moments(_at_least_float32(x))


def gradient_sums(g, x, mean) -> tuple[jax.Array, jax.Array]:
  """Per-channel sums of g and of g * (x - mean) (the bias's and the scale's
  gradients, up to the scale): as `moments` computes its sums."""
  if _native_sums(g, x):
    return onednn.channel_gradient_sums(g, x, mean)
  return staged_gradient_sums(_at_least_float32(g), _at_least_float32(x), mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def normalize(x, mean, mul, bias, dtype):
  """((x - mean) * mul + bias).astype(dtype), per channel, computed in the
  statistics' dtype; its gradient's sums by `gradient_sums`. x and the result
  stay in their own dtypes (bfloat16 in a bfloat16 model), so that neither
  pass holds a float32 copy of the activations."""
  return ((x.astype(mean.dtype) - mean) * mul + bias).astype(dtype)


def _normalize_fwd(x, mean, mul, bias, dtype):
  return normalize(x, mean, mul, bias, dtype), (x, mean, mul)


def _normalize_bwd(dtype, residuals, g):
  del dtype
  x, mean, mul = residuals
  g_bias, g_mul = gradient_sums(g, x, mean)
  return ((g.astype(mul.dtype) * mul).astype(x.dtype), -g_bias * mul, g_mul, g_bias)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _native_backward(x, dtype, *vectors) -> bool:
  """Whether `train_normalize_relu` computes batch norm and ReLU here: x
  bfloat16 and kept so, float32 parameters, the native library built, and a
  CPU with AVX-512 BW, without which its bfloat16 roundings stay scalar (a
  pass 3-6 times as slow). In float32, where XLA's passes have no roundings to
  make, a C++ pass was no faster, and it differed from XLA's in the last bit
  (XLA contracts multiply-adds)."""
  return (x.dtype == jnp.bfloat16 and jnp.dtype(dtype) == x.dtype and _native_sums(x)
          and all(v.dtype == jnp.float32 for v in vectors)
          and 'avx512bw' in onednn.cpu_flags())


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def normalize_relu(x, mean, mul, bias, dtype):
  """relu(`normalize(x, mean, mul, bias, dtype)`) in one pass: jax.nn.relu after
  `normalize` keeps the normalised activations for the ReLU's gradient, an
  extra write and read of every activation. The gradient is jax.nn.relu's
  (zero where the output is zero, i.e. where the normalised value is not
  positive), then `normalize`'s."""
  return jnp.maximum(normalize(x, mean, mul, bias, dtype), 0)


def _normalize_relu_fwd(x, mean, mul, bias, dtype):
  out = normalize_relu(x, mean, mul, bias, dtype)
  return out, (x, mean, mul, out)


def _normalize_relu_bwd(dtype, residuals, g):
  x, mean, mul, out = residuals
  return _normalize_bwd(dtype, (x, mean, mul), jnp.where(out > 0, g, jnp.zeros_like(g)))


normalize_relu.defvjp(_normalize_relu_fwd, _normalize_relu_bwd)


def statistics(sum_x, sum_squares, scale, count: int, epsilon: float):
  """The batch's mean and (fast) variance from its channel sums, and the
  normalisation's multiplier, rsqrt(var + epsilon) * scale."""
  mean = sum_x / count
  var = jnp.maximum(0.0, sum_squares / count - mean * mean)
  return mean, var, lax.rsqrt(var + epsilon) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def train_normalize_relu(x, scale, bias, epsilon: float):
  """(relu(batch norm of x with the batch's statistics), mean, var), x and the
  result bfloat16 (where `_native_backward`): the same values and gradients as
  `moments`, `statistics` and `normalize_relu` differentiated by jax, bit for
  bit, in fewer passes. The backward pass reads g, the output and x twice in
  C++ (the ReLU's gradient's channel sums, then x's gradient through the
  normalisation and the sums at once), where autodiff's has XLA write out the
  ReLU's gradient and add two gradients of x: 128x32x32x32, forward and
  backward, 5.8 against 7.0 ms (2-core Intel Xeon, 2026-12-06)."""
  return _train_normalize_relu_fwd(x, scale, bias, epsilon)[0]


def _train_normalize_relu_fwd(x, scale, bias, epsilon):
  count = math.prod(x.shape[:-1])
  sum_x, sum_squares = onednn.channel_moments(x)
  mean, var, mul = statistics(sum_x, sum_squares, scale, count, epsilon)
  out = jnp.maximum(normalize(x, mean, mul, bias, x.dtype), 0)  # XLA's pass is as fast
  return (out, mean, var), (x, out, sum_x, sum_squares, scale, mean, mul)


def _train_normalize_relu_bwd(epsilon, residuals, cotangents):
  x, out, sum_x, sum_squares, scale, mean, mul = residuals
  g, g_mean, g_var = cotangents
  count = math.prod(x.shape[:-1])
  g_bias, g_mul = onednn.relu_gradient_sums(g, out, x, mean)
  _, pullback = jax.vjp(lambda a, b, c: statistics(a, b, c, count, epsilon),
                        sum_x, sum_squares, scale)
  g_sum_x, g_sum_squares, g_scale = pullback((-g_bias * mul + g_mean, g_var, g_mul))
  dx = onednn.normalize_relu_gradient(g, out, x, mul, g_sum_x, g_sum_squares)
  return dx, g_scale, g_bias


train_normalize_relu.defvjp(_train_normalize_relu_fwd, _train_normalize_relu_bwd)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over all axes but the last, with accurate sums (see above);
  with `relu`, followed by a ReLU in the same pass (`normalize_relu`, or in
  training in bfloat16 `train_normalize_relu`, whose backward pass is C++)."""
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  relu: bool = False

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)

    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    dtype = jnp.dtype(self.dtype or jnp.result_type(x, scale))
    fused = (self.relu and not self.use_running_average
             and _native_backward(x, dtype, scale, bias))
    if fused:
      out, mean, var = train_normalize_relu(x, scale, bias, self.epsilon)
    elif self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      sum_x, sum_squares = moments(x)
      mean, var, _ = statistics(sum_x, sum_squares, scale, math.prod(x.shape[:-1]),
                                self.epsilon)
    if not (self.use_running_average or self.is_initializing()):
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    if fused:
      return out
    mul = lax.rsqrt(var + self.epsilon) * scale
    return (normalize_relu if self.relu else normalize)(
        x, mean.astype(stats_dtype), mul.astype(stats_dtype), bias.astype(stats_dtype),
        dtype)


def default_batch_norm() -> type[nn.Module]:
  """This module on the CPU, whose reductions it fixes; Flax's elsewhere."""
  return BatchNorm if cpu_ops.on_cpu() else nn.BatchNorm


def batch_norm_relu(x, **kwargs):
  """relu(`default_batch_norm()(**kwargs)(x)`), in one pass where it is this module.
  Called inside a Flax module's compact method, whose child the batch norm becomes."""
  module = default_batch_norm()
  if module is BatchNorm:
    return BatchNorm(relu=True, **kwargs)(x)
  return nn.relu(module(**kwargs)(x))
