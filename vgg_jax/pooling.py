"""VGG's 2x2 max pooling without select-and-scatter, the fastest form per backend.

XLA lowers the gradient of `nn.max_pool` (reduce-window) to select-and-scatter,
slow on both backends we measured. Two forms replace it:

* `max_pool_2x2`, a max over a reshaped array, whose gradient is elementwise work
  that fuses with its neighbours. GPU: VGG-16's bf16 training step at 224, batch
  256, 3,982 against 4,661 img/s (batch 512: 4,042 against 4,739) on one H200,
  where select-and-scatter took 8 % of the step
  (`experiments/results/gpu_h200_20261204/`, 2026-12-04); CPU: forward and
  backward for 64x32x32x64, 79 ms select-and-scatter against 7 ms
  (`python -m experiments.bench_ops`, 2-core AMD EPYC with AVX-512, 2026-12-01).
* `strided_max_pool_2x2`, the max of four strided slices: XLA's CPU code
  vectorises it over the channels, where it runs the reshaped max's window
  loop one value at a time and, at the first block's shape, on one core.
  Batch norm's normalisation, ReLU and the pooling fused, width 1/4's shapes,
  forward / forward and backward: 128x32x32x16 0.99 / 1.94 ms as a reshape
  against 0.16 / 1.57 strided, 64x32x32x64 2.05 / 4.62 against 0.64 / 2.93
  (a one-off script, best of 25, 2-core AMD EPYC with AVX-512, 2026-12-05;
  more shapes and the step: experiments/PERFORMANCE.md). Not measured on a GPU
  yet, so the GPU keeps the reshape (`default_pool_fn`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgg_jax import cpu_ops


def _even(x):
  """VALID pooling's input: an odd last row or column is dropped."""
  _, h, w, _ = x.shape
  return x[:, :h - h % 2, :w - w % 2, :]


def max_pool_2x2(x):
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` (VALID) of an NHWC array, by reshaping.

  The gradient goes to the maximum of each window; where several entries tie
  it is shared among them, where XLA's pooling gives it to one. Ties of a ReLU's
  zeros get a zero gradient either way, but flat image regions tie positive
  values too: the default config's run ends at 99.60 % with this pooling's
  gradient against 99.65 % with the first maximum's (README).
  """
  x = _even(x)
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


# The window's four entries in row-major order, the order in which XLA's
# select-and-scatter looks for the maximum.
_WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))


def _strided_max(x):
  a, b, c, d = (x[:, i::2, j::2, :] for i, j in _WINDOW)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


@jax.custom_vjp
def _strided_max_pool(x):
  return _strided_max(x)


def _strided_max_pool_forward(x):
  y = _strided_max(x)
  return y, (x, y)


def _strided_max_pool_backward(residuals, g):
  # The whole gradient to the first maximum of each window, as select-and-scatter
  # gives it, so that ties too match `nn.max_pool` (jnp.maximum's own gradient
  # would halve it at each tie).
  x, y = residuals
  zero = jnp.zeros((), g.dtype)
  taken, parts = jnp.zeros(y.shape, bool), []
  for i, j in _WINDOW:
    hit = (x[:, i::2, j::2, :] == y) & ~taken
    parts.append(jnp.where(hit, g, zero))
    taken |= hit
  # Interleaved back: (n, h/2, 2, w/2, 2, c) is the input's (n, h, w, c).
  top, bottom = jnp.stack(parts[:2], axis=3), jnp.stack(parts[2:], axis=3)
  return (jnp.stack([top, bottom], axis=2).reshape(x.shape),)


_strided_max_pool.defvjp(_strided_max_pool_forward, _strided_max_pool_backward)


def strided_max_pool_2x2(x):
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` (VALID) of an NHWC array, from four
  strided slices; its gradient equals XLA's pooling's, ties included."""
  return _strided_max_pool(_even(x))


def default_pool_fn():
  """The pooling for the current backend: strided on the CPU, measured there."""
  return strided_max_pool_2x2 if cpu_ops.on_cpu() else max_pool_2x2


def window_max_pool_2x2(x):
  """Flax's reduce-window pooling: the reference in the tests, and the benchmark's
  `--ops=plain`."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))
