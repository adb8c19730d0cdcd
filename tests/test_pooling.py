"""2x2 max pooling without select-and-scatter equals flax's reduce-window pooling,
gradients included."""

import jax
import numpy as np
import pytest

from vgg_jax import pooling

POOLS = [pooling.max_pool_2x2, pooling.strided_max_pool_2x2]


def normal(*shape, seed=0):
  return np.random.default_rng([seed, *shape]).standard_normal(shape, np.float32)


@pytest.mark.parametrize('pool', POOLS)
@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_equals_flax_with_its_gradient(pool, shape):
  x = normal(*shape)
  out, vjp = jax.vjp(pool, x)
  ref, ref_vjp = jax.vjp(pooling.window_max_pool_2x2, x)
  np.testing.assert_array_equal(out, ref)
  cotangent = normal(*out.shape, seed=1)
  np.testing.assert_array_equal(vjp(cotangent)[0], ref_vjp(cotangent)[0])


@pytest.mark.parametrize('pool', POOLS)
def test_max_pool_ties_after_relu_give_the_same_gradient(pool):
  # A ReLU's zeros tie within a window; the ReLU's zero gradient there makes
  # sharing (reshape) and picking one (select-and-scatter) agree.
  x = normal(2, 8, 8, 4) - 0.5
  cotangent = normal(2, 4, 4, 4, seed=1)
  grads = [jax.vjp(lambda x: p(jax.nn.relu(x)), x)[1](cotangent)[0]
           for p in (pool, pooling.window_max_pool_2x2)]
  np.testing.assert_array_equal(*grads)


def test_strided_pool_gives_a_tied_window_s_gradient_to_its_first_maximum():
  # Values from {0, 1, 2}: most windows hold ties, in every arrangement.
  x = np.random.default_rng(0).integers(0, 3, (4, 6, 10, 3)).astype(np.float32)
  cotangent = normal(4, 3, 5, 3, seed=1)
  grads = [jax.vjp(p, x)[1](cotangent)[0]
           for p in (pooling.strided_max_pool_2x2, pooling.window_max_pool_2x2)]
  np.testing.assert_array_equal(*grads)
  # Each window's cotangent lands on exactly one of its four entries.
  assert np.count_nonzero(grads[0]) == cotangent.size


def test_default_pool_is_the_strided_one_on_the_cpu():
  assert jax.default_backend() == 'cpu'
  assert pooling.default_pool_fn() is pooling.strided_max_pool_2x2
