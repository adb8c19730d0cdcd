"""2x2 max pooling by reshaping equals flax's reduce-window pooling, gradients included."""

import jax
import numpy as np
import pytest

from vgg_jax import pooling


def normal(*shape, seed=0):
  return np.random.default_rng([seed, *shape]).standard_normal(shape, np.float32)


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_equals_flax_with_its_gradient(shape):
  x = normal(*shape)
  out, vjp = jax.vjp(pooling.max_pool_2x2, x)
  ref, ref_vjp = jax.vjp(pooling.window_max_pool_2x2, x)
  np.testing.assert_array_equal(out, ref)
  cotangent = normal(*out.shape, seed=1)
  np.testing.assert_array_equal(vjp(cotangent)[0], ref_vjp(cotangent)[0])


def test_max_pool_ties_after_relu_give_the_same_gradient():
  # A ReLU's zeros tie within a window; the ReLU's zero gradient there makes
  # sharing (reshape) and picking one (select-and-scatter) agree.
  x = normal(2, 8, 8, 4) - 0.5
  cotangent = normal(2, 4, 4, 4, seed=1)
  grads = [jax.vjp(lambda x: pool(jax.nn.relu(x)), x)[1](cotangent)[0]
           for pool in (pooling.max_pool_2x2, pooling.window_max_pool_2x2)]
  np.testing.assert_array_equal(*grads)
