"""vgg_jax.batch_norm: Flax's batch norm, with accurate sums on the CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vgg_jax import batch_norm, cpu_ops, onednn

SHAPE = (64, 32, 32, 16)  # the size at which XLA CPU's plain sums lose 30x


def batch():
  return np.random.default_rng(0).normal(1.0, 3.0, SHAPE).astype(np.float32)


def loss_and_grads(module, x, options=None):
  variables = module.init(jax.random.key(0), x)

  def loss(params, x):
    y, updated = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y)), updated['batch_stats']

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
               compiler_options=options or {})
  (value, stats), (g_params, g_x) = fn(variables['params'], x)
  return jax.device_get((value, stats, g_params, g_x))


def float64_reference(x):
  """Mean, variance and the gradients of the same loss, in float64 numpy."""
  x = x.astype(np.float64)
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  inv = 1 / np.sqrt(var + 1e-5)
  xhat = (x - mean) * inv
  g = np.cos(xhat)  # d sum(sin(y)) / dy at scale 1, bias 0
  n = x.size // x.shape[-1]
  g_scale, g_bias = (g * xhat).sum((0, 1, 2)), g.sum((0, 1, 2))
  g_x = inv * (g - g_bias / n - xhat * g_scale / n)
  return mean, var, g_scale, g_bias, g_x


def rel(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def test_same_variables_and_values_as_flax():
  x = batch()
  ours = batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  a, b = ours.init(jax.random.key(0), x), flax_bn.init(jax.random.key(0), x)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  (got_loss, *got), (want_loss, *want) = loss_and_grads(ours, x), loss_and_grads(flax_bn, x, {})
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert rel(g, np.asarray(w, np.float64)) < 1e-5  # float32 rounding, both ways
  # The loss sums a million sines that cancel down to 93: a few 1e-7 of relative
  # difference in y (sums in double against Flax's float32) grows ~100 times.
  assert rel(got_loss, np.float64(want_loss)) < 1e-4
  # Evaluation mode normalises with the running statistics, like Flax's.
  variables = {'params': a['params'],
               'batch_stats': {'mean': np.full(16, 0.5, np.float32),
                               'var': np.full(16, 4.0, np.float32)}}
  np.testing.assert_allclose(
      batch_norm.BatchNorm(use_running_average=True).apply(variables, x),
      nn.BatchNorm(use_running_average=True).apply(variables, x), rtol=1e-6, atol=1e-6)


def test_statistics_and_gradients_are_accurate_with_the_train_steps_options():
  x = batch()
  mean, var, g_scale, g_bias, g_x = float64_reference(x)
  _, stats, g_params, g_x32 = loss_and_grads(
      batch_norm.BatchNorm(momentum=0.0, epsilon=1e-5), x, cpu_ops.compiler_options())
  # float32 rounding of the inputs is ~6e-8; a sequential sum of 65,536
  # values in float32 lands near 3e-6.
  assert rel(stats['mean'], mean) < 5e-7
  assert rel(stats['var'], var) < 5e-7
  assert rel(g_params['bias'], g_bias) < 5e-7
  assert rel(g_x32, g_x) < 2e-6
  assert rel(g_params['scale'], g_scale) < 2e-5  # a sum with cancellation


def test_channel_sum_equals_the_plain_sum():
  x = batch()
  np.testing.assert_allclose(batch_norm.channel_sum(x), x.astype(np.float64).sum((0, 1, 2)),
                             rtol=1e-6)
  assert batch_norm.channel_sum(x[:, :, 0, :]).shape == (16,)


@pytest.mark.parametrize('dtype', [jnp.bfloat16])
def test_low_precision_compute_keeps_float32_statistics(dtype):
  x = batch()
  y, updated = batch_norm.BatchNorm(dtype=dtype, momentum=0.0).apply(
      batch_norm.BatchNorm(dtype=dtype).init(jax.random.key(0), x), x.astype(dtype),
      mutable=['batch_stats'])
  assert y.dtype == dtype and updated['batch_stats']['mean'].dtype == jnp.float32


@pytest.mark.skipif(not onednn.available(), reason='the native library is not built here')
def test_native_sums_are_the_exact_sums_rounded_and_split_over_devices():
  x = batch()
  g = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
  mean = x.mean((0, 1, 2)).astype(np.float32)
  x64, g64 = x.astype(np.float64), g.astype(np.float64)
  exact = [x64.sum((0, 1, 2)), (x64 * x64).sum((0, 1, 2)), g64.sum((0, 1, 2)),
           (g64 * (x64 - mean)).sum((0, 1, 2))]
  one = [*jax.jit(onednn.channel_moments)(x),
         *jax.jit(onednn.channel_gradient_sums)(g, x, mean)]
  for got, want in zip(one, exact):
    assert rel(got, want) < 1e-7  # float32's rounding of the exact sum, nothing more
  # Eight devices (conftest), the batch split: each sums its share, then a psum.
  mesh = Mesh(np.array(jax.devices()), ('data',))
  by_batch = NamedSharding(mesh, P('data'))
  xs, gs = jax.device_put(x, by_batch), jax.device_put(g, by_batch)
  moments = jax.jit(onednn.channel_moments)
  assert 'all-gather' not in moments.lower(xs).compile().as_text()
  eight = [*moments(xs), *jax.jit(onednn.channel_gradient_sums)(gs, xs, mean)]
  for got, want in zip(eight, exact):
    assert rel(got, want) < 1e-6  # eight float32 partial sums added
  # The CPU's batch norm takes them, forward and backward.
  module = batch_norm.BatchNorm()
  variables = module.init(jax.random.key(0), x[:2])
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda v, x: jnp.sum(module.apply(
      v, x, mutable=['batch_stats'])[0]), argnums=1))(variables, x))
  assert jaxpr.count('custom_partitioning') == 2



@pytest.mark.skipif(not onednn.available(), reason='the native library is not built here')
def test_native_sums_read_bfloat16_as_it_is():
  # bfloat16 values (8 significant bits) and their products add exactly in
  # double: the sums are the exact ones rounded to float32, like float32's.
  x = batch().astype(jnp.bfloat16)
  g = np.random.default_rng(1).standard_normal(SHAPE).astype(jnp.bfloat16)
  mean = np.asarray(x, np.float32).mean((0, 1, 2))
  x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
  exact = [x64.sum((0, 1, 2)), (x64 * x64).sum((0, 1, 2)), g64.sum((0, 1, 2)),
           (g64 * (x64 - mean)).sum((0, 1, 2))]
  got = [*jax.jit(onednn.channel_moments)(x), *jax.jit(onednn.channel_gradient_sums)(g, x, mean)]
  for a, want in zip(got, exact):
    assert a.dtype == jnp.float32
    assert rel(a, want) < 1e-7


def test_bfloat16_batch_norm_is_flaxs_to_bfloat16_rounding():
  # A bfloat16 model's batch norm: bfloat16 in and out, float32 statistics,
  # no float32 copy of the activations handed to the sums (the native ones
  # where built); values and gradients as Flax's bfloat16 batch norm.
  x = batch().astype(jnp.bfloat16)
  ours = batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=jnp.bfloat16)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                         dtype=jnp.bfloat16)
  (_, *got), (_, *want) = loss_and_grads(ours, x), loss_and_grads(flax_bn, x, {})
  g_x = got[-1]
  assert g_x.dtype == jnp.bfloat16
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    # the statistics: float32 sums of the same values; the gradients: sums of
    # bfloat16 cotangents, each rounded once (2**-8) on either side.
    assert rel(a, np.asarray(b, np.float64)) < (1e-5 if a.dtype == jnp.float32 else 2**-7)
  if onednn.available():
    variables = ours.init(jax.random.key(0), x[:2])
    hlo = jax.jit(jax.grad(lambda v, x: jnp.sum(ours.apply(
        v, x, mutable=['batch_stats'])[0]).astype(jnp.float32), argnums=1)).lower(
            variables, x).compile().as_text()
    sums = [line for line in hlo.splitlines() if 'VggJaxChannel' in line]
    assert len(sums) == 2
    assert all('bf16[64,32,32,16]' in line and 'f32[64,32,32,16]' not in line
               for line in sums)


class _ThenReLU(nn.Module):
  """The model's layers before the fusion: batch norm, then jax.nn.relu."""
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    return nn.relu(batch_norm.BatchNorm(momentum=0.9, dtype=self.dtype, name='bn')(x))


class _Fused(nn.Module):
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    return batch_norm.batch_norm_relu(x, momentum=0.9, dtype=self.dtype, name='bn')


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_norm_relu_in_one_pass_is_batch_norm_then_relu(dtype):
  # Same variables, values, statistics and gradients, bit for bit: the same
  # arithmetic, the ReLU's gradient masked where its output is zero as
  # jax.nn.relu's is where its input is not positive.
  x = batch().astype(dtype)
  got, want = loss_and_grads(_Fused(dtype), x), loss_and_grads(_ThenReLU(dtype), x)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _fused_backward_here() -> bool:
  return onednn.available() and 'avx512bw' in onednn.cpu_flags()


def test_fused_backward_passes_are_autodiffs_split_over_devices():
  # The C++ passes of train_normalize_relu's backward (the ReLU's gradient's
  # channel sums; x's gradient through the normalisation and the sums), on
  # eight devices (conftest), equal XLA's of the same jax arithmetic on one.
  if not onednn.available():
    pytest.skip('the native library is not built here')
  dtype = jnp.bfloat16
  rng = np.random.default_rng(2)
  x = batch().astype(dtype)
  g = rng.standard_normal(SHAPE).astype(dtype)
  out = np.maximum(x.astype(np.float32) - 1, 0).astype(dtype)
  mean, mul, sum_grad, square_grad = (rng.standard_normal(SHAPE[-1]).astype(np.float32)
                                      for _ in range(4))
  masked = jnp.where(out > 0, g, jnp.zeros_like(g))
  want_sums = jax.jit(onednn.channel_gradient_sums)(masked, x, mean)
  want_dx = jax.jit(lambda: ((masked.astype(jnp.float32) * mul).astype(dtype) + (
      sum_grad + 2 * x.astype(jnp.float32) * square_grad).astype(dtype)))()
  mesh = Mesh(np.array(jax.devices()), ('data',))
  by_batch = NamedSharding(mesh, P('data'))
  gs, outs, xs = (jax.device_put(a, by_batch) for a in (g, out, x))
  for got in (jax.jit(onednn.relu_gradient_sums)(g, out, x, mean),
              jax.jit(onednn.relu_gradient_sums)(gs, outs, xs, mean)):
    for a, b in zip(got, want_sums):
      assert rel(a, np.asarray(b, np.float64)) < 1e-6  # float32 partial sums added
  split = jax.jit(onednn.normalize_relu_gradient)(gs, outs, xs, mul, sum_grad, square_grad)
  assert split.sharding.spec == P('data') and split.dtype == dtype
  for got in (jax.jit(onednn.normalize_relu_gradient)(g, out, x, mul, sum_grad, square_grad),
              split):
    np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(want_dx, np.float64))


def test_bfloat16_batch_norm_relu_backward_is_two_native_passes():
  module = _Fused(jnp.bfloat16)
  x = batch().astype(jnp.bfloat16)
  variables = module.init(jax.random.key(0), x[:2])
  hlo = jax.jit(jax.grad(lambda v, x: jnp.sum(module.apply(
      v, x, mutable=['batch_stats'])[0]).astype(jnp.float32), argnums=1)).lower(
          variables, x).compile().as_text()
  fused = ('VggJaxReluGradientSums' in hlo, 'VggJaxNormalizeReluGradient' in hlo)
  assert fused == (_fused_backward_here(),) * 2
