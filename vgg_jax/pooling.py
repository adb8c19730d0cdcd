"""VGG's 2x2 max pooling, by reshaping, on every backend.

XLA lowers the gradient of `nn.max_pool` (reduce-window) to select-and-scatter,
slow on both backends we measured; a max over a reshaped array differentiates to
elementwise work that fuses with its neighbours:

* CPU: forward and backward for 64x32x32x64, 79 ms select-and-scatter against 7 ms
  (`python -m experiments.bench_ops`, 2-core AMD EPYC with AVX-512, 2026-12-01);
* GPU: VGG-16's bf16 training step at 224, batch 256, 3,982 against 4,661 img/s
  (batch 512: 4,042 against 4,739) on one H200, where select-and-scatter took 8 %
  of the step (`experiments/results/gpu_h200_20261204/`, 2026-12-04).
"""

import flax.linen as nn
import jax.numpy as jnp


def max_pool_2x2(x):
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` (VALID) of an NHWC array, by reshaping.

  The gradient goes to the maximum of each window; where several entries tie
  it is shared among them, where XLA's pooling gives it to one. In VGG ties are
  the zeros of a ReLU, whose gradient is zero either way.
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def window_max_pool_2x2(x):
  """Flax's reduce-window pooling: `max_pool_2x2`'s reference in the tests, and
  the benchmark's `--ops=plain`."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))
