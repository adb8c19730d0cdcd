"""Times XLA's CPU convolutions, pooling and batch-norm sums against vgg_jax's replacements.

    python -m experiments.bench_ops [--repeats=5]

Prints one JSON line per operation (float32, shapes VGG has at 32x32 input, at
width 1/8 and width 1): milliseconds for XLA's own operation (for batch norm's
sums: the staged XLA sums) and for vgg_jax's (oneDNN's convolutions and the
native sums where `vgg_jax.onednn` is built), each the
best of `repeats` calls after one untimed call that compiles. Each is compiled
with the train step's options (`cpu_ops.compiler_options`: no YNNPACK
fusions). The numbers in experiments/PERFORMANCE.md ("What changed") come
from this script.
"""

import functools
import json
import time
import types

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax

from vgg_jax import batch_norm, cli, cpu_ops, pooling

_LAYOUT = ('NHWC', 'HWIO', 'NHWC')


def best_ms(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * min(times)


def conv(conv_fn):
  return lambda x, w: conv_fn(x, w, (1, 1), 'SAME', dimension_numbers=_LAYOUT)


def jit(fn):
  return jax.jit(fn, compiler_options=cpu_ops.compiler_options())


def forward(conv_fn):
  return jit(conv(conv_fn))


def forward_and_backward(conv_fn):
  return jit(lambda x, w, dy: jax.vjp(conv(conv_fn), x, w)[1](dy))


def pool_forward_backward(pool_fn):
  return jit(lambda x, dy: jax.vjp(pool_fn, x)[1](dy)[0])


def normal(seed, *shape):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def cases():
  """(name, shape text, make(op) -> jitted fn, args, plain op, fast op)."""
  small = (normal(0, 64, 2, 2, 512), normal(1, 3, 3, 512, 512))
  small_grad = (*small, normal(2, 64, 2, 2, 512))
  pool = (normal(5, 64, 32, 32, 64), normal(6, 64, 16, 16, 64))
  thin = (normal(7, 128, 32, 32, 8), normal(8, 3, 3, 8, 8))
  thin_pool = (normal(15, 128, 32, 32, 16), normal(16, 128, 16, 16, 16))
  wide = (normal(10, 64, 16, 16, 128), normal(11, 3, 3, 128, 128))
  bn = normal(13, 128, 32, 32, 16)
  bn_grad = (normal(14, 128, 32, 32, 16), bn, jnp.mean(bn, axis=(0, 1, 2)))
  conv_cases = [
      (f'conv {make.__name__.replace("_", " ")}', shape, make, args[:2] if make is forward
       else args, lax.conv_general_dilated, cpu_ops.conv_general_dilated)
      for shape, args in (('128x32x32x8 -> 8, 3x3', (*thin, normal(9, 128, 32, 32, 8))),
                          ('64x16x16x128 -> 128, 3x3', (*wide, normal(12, 64, 16, 16, 128))))
      for make in (forward, forward_and_backward)]
  return conv_cases + [
      ('conv forward, map smaller than the kernel', '64x2x2x512 -> 512, 3x3',
       forward, small, lax.conv_general_dilated, cpu_ops.conv_general_dilated),
      ('conv backward, map smaller than the kernel', '64x2x2x512 -> 512, 3x3',
       forward_and_backward, small_grad, lax.conv_general_dilated,
       cpu_ops.conv_general_dilated),
      ('conv backward, map smaller than the kernel', '64x2x2x256 -> 256, 3x3',
       forward_and_backward, (normal(17, 64, 2, 2, 256), normal(18, 3, 3, 256, 256),
                              normal(19, 64, 2, 2, 256)),
       lax.conv_general_dilated, cpu_ops.conv_general_dilated),
      ('2x2 max pool by reshaping, forward and backward', '64x32x32x64',
       pool_forward_backward, pool, pooling.window_max_pool_2x2, pooling.max_pool_2x2),
      *[('2x2 max pool from strided slices, forward and backward', shape,
         pool_forward_backward, args, pooling.window_max_pool_2x2,
         pooling.strided_max_pool_2x2)
        for shape, args in (('64x32x32x64', pool), ('128x32x32x16', thin_pool))],
      ('batch norm sums, forward: x and x * x', '128x32x32x16', jit, (bn,),
       batch_norm.staged_moments, batch_norm.moments),
      ('batch norm sums, backward: g and g * (x - mean)', '128x32x32x16', jit, bn_grad,
       batch_norm.staged_gradient_sums, batch_norm.gradient_sums),
  ]


def _define_flags() -> types.SimpleNamespace:
  """The command line's flags, as holders; only `python -m experiments.bench_ops`
  defines them, so importing this module defines none."""
  return types.SimpleNamespace(repeats=flags.DEFINE_integer(
      'repeats', 5, 'Timed calls per operation; the best is kept.'))


def main(argv, command: types.SimpleNamespace):
  del argv
  repeats = command.repeats.value
  for name, shape, make, args, plain_op, fast_op in cases():
    plain_ms = best_ms(make(plain_op), *args, repeats=repeats)
    fast_ms = best_ms(make(fast_op), *args, repeats=repeats)
    print(json.dumps({'operation': name, 'shape': shape, 'xla_ms': round(plain_ms, 2),
                      'cpu_ops_ms': round(fast_ms, 2),
                      'speedup': round(plain_ms / fast_ms, 1)}), flush=True)


if __name__ == '__main__':
  app.run(functools.partial(main, command=_define_flags()),
          flags_parser=cli.flags_parser('experiments.bench_ops'))
