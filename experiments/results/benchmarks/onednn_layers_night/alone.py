"""VGG-D's width-1 convolutions (batch 64, 32x32 input) alone: each of its distinct
3x3 layers above the 2x2 maps, conv + bias + ReLU as the step runs it
(`cpu_ops.conv_bias_relu`, oneDNN), called 8 times in a row. Run from the repository
root with ONEDNN_VERBOSE=1 (oneDNN prints each call's time):

    ONEDNN_VERBOSE=1 PYTHONPATH=. python experiments/results/benchmarks/onednn_layers_night/alone.py
"""
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import cpu_ops

# (batch, side, channels in, channels out)
SHAPES = [(64, 32, 64, 64), (64, 16, 128, 128), (64, 8, 128, 256), (64, 8, 256, 256),
          (64, 4, 512, 512)]

def main():
  for n, side, c_in, c_out in SHAPES:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n, side, side, c_in), np.float32))
    k = jnp.asarray(rng.random((3, 3, c_in, c_out), np.float32) * 0.01)
    b = jnp.zeros((c_out,), jnp.float32)
    f = jax.jit(lambda x, k, b: cpu_ops.conv_bias_relu(x, k, b, 'SAME'),
                compiler_options=cpu_ops.compiler_options())
    for _ in range(8):
      jax.block_until_ready(f(x, k, b))


if __name__ == '__main__':
  main()
