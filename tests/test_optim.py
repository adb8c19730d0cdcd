"""The optimiser of the conv kernels: Muon against a NumPy reference."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10
from vgg_jax import cli, config_schema, optim, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_reliability import assert_in_readme  # pylint: disable=wrong-import-position

# optax's quintic Newton-Schulz coefficients (Jordan's), five iterations.
NS_COEFFS, NS_STEPS = (3.4445, -4.7750, 2.0315), 5


def _muon_config(**changes):
  config = config_schema.base_config().optimizer
  config.update({**dict(learning_rate=0.1, schedule='constant', nesterov=True,
                        weight_decay=5e-4, kernels='muon', muon_learning_rate=0.03,
                        muon_momentum=0.9), **changes})
  return config


def _orthogonalised(g):
  """Newton-Schulz on the (h * w * in, out) matrix, on the wide side, in float64."""
  x = g.reshape(-1, g.shape[-1]).T  # (out, h * w * in): out is the smaller side here
  x = x / (np.linalg.norm(x) + 1e-8)
  a, b, c = NS_COEFFS
  for _ in range(NS_STEPS):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T.reshape(g.shape)


def _reference_kernel_steps(kernel, grads, rate, beta):
  """Muon as optax defines it (a mean of the gradients, bias-corrected, Nesterov),
  then the step of `rate` radians, back onto the sphere of norm sqrt(out)."""
  mu = np.zeros_like(kernel)
  for t, g in enumerate(grads, start=1):
    mu = beta * mu + (1 - beta) * g
    nesterov = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t)
    moved = kernel - rate * _orthogonalised(nesterov)
    kernel = moved * np.sqrt(kernel.shape[-1]) / np.linalg.norm(moved)
  return kernel


def test_muon_turns_conv_kernels_as_the_reference_does_and_sgd_trains_the_rest():
  rng = np.random.default_rng(0)
  params = {'conv': {'kernel': rng.normal(size=(3, 3, 4, 6)) * 0.3, 'bias': np.zeros(6)},
            'fc': {'kernel': rng.normal(size=(6, 3)), 'bias': rng.normal(size=3)}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
           for _ in range(3)]
  config = _muon_config()
  tx = optim.create_optimizer(config, num_steps=10, steps_per_epoch=5)
  sgd_only = optim.create_optimizer(_muon_config(kernels='sgd'), num_steps=10, steps_per_epoch=5)
  state, sgd_state = tx.init(params), sgd_only.init(params)
  trained, sgd_trained = params, params
  for g in grads:
    updates, state = jax.jit(tx.update)(g, state, trained)
    trained = jax.tree.map(jnp.add, trained, updates)
    updates, sgd_state = jax.jit(sgd_only.update)(g, sgd_state, sgd_trained)
    sgd_trained = jax.tree.map(jnp.add, sgd_trained, updates)

  want = _reference_kernel_steps(np.asarray(params['conv']['kernel'], np.float64),
                                 [np.asarray(g['conv']['kernel'], np.float64) for g in grads],
                                 config.muon_learning_rate, config.muon_momentum)
  np.testing.assert_allclose(trained['conv']['kernel'], want, rtol=0, atol=2e-5)
  assert np.linalg.norm(trained['conv']['kernel']) == pytest.approx(np.sqrt(6), rel=1e-6)
  # Each of the three steps turned the kernel by about the rate (radians).
  assert not np.allclose(trained['conv']['kernel'], params['conv']['kernel'], atol=0.01)
  # Everything but the conv kernels: the SGD of the same config, to the bit.
  for path in (('conv', 'bias'), ('fc', 'kernel'), ('fc', 'bias')):
    a, b = trained[path[0]][path[1]], sgd_trained[path[0]][path[1]]
    np.testing.assert_array_equal(a, b)


def test_unknown_kernel_optimizer_and_bad_muon_settings_are_named():
  config = cifar10.get_config('D,twocore')
  config.optimizer.kernels = 'adam'
  with pytest.raises(ValueError, match="unknown optimizer.kernels 'adam': choose one of sgd, "
                     "muon") as error:
    train.validate(config)
  assert_in_readme(cli.error_line('vgg_jax.train', error.value))
  config.optimizer.kernels = 'muon'
  config.model.batch_norm = False
  with pytest.raises(ValueError, match="optimizer.kernels='muon' holds every conv kernel at a "
                     'fixed norm, which only batch norm') as error:
    train.validate(config)
  assert_in_readme(cli.error_line('vgg_jax.train', error.value))
  config.model.batch_norm = True
  config.optimizer.muon_momentum = 1.0
  with pytest.raises(ValueError, match=r'optimizer.muon_momentum=1.0 must be in \[0, 1\)'):
    train.validate(config)
