"""The optimiser of the conv kernels: Muon against a NumPy reference."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10
from vgg_jax import cli, config_schema, onednn, optim, train

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
  """Newton-Schulz on the (h * w * in, out) matrix transposed, in float64 (the
  iteration is an odd polynomial: on the transpose it gives the transpose)."""
  x = g.reshape(-1, g.shape[-1]).T  # (out, h * w * in)
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


# bfloat16 products round each of Newton-Schulz's matrices to 8 bits (measured: at
# most 1.7e-3 from the float64 reference after three steps of 0.03 radians, kernels of
# norm sqrt(6); a wrong direction would be off by about the steps themselves).
@pytest.mark.parametrize('muon_dtype,atol', [('float32', 2e-5), ('bfloat16', 3e-3)])
def test_muon_turns_conv_kernels_as_the_reference_does_and_sgd_trains_the_rest(muon_dtype, atol):
  rng = np.random.default_rng(0)
  # A kernel with more rows (3 * 3 * 4) than columns (6), and one with fewer (a 1x1
  # conv from 4 to 6 channels; VGG's conv1_1 is one such: 27 rows, 32 columns at width 1/2).
  params = {'conv': {'kernel': rng.normal(size=(3, 3, 4, 6)) * 0.3, 'bias': np.zeros(6)},
            'conv1x1': {'kernel': rng.normal(size=(1, 1, 4, 6)) * 0.3},
            'fc': {'kernel': rng.normal(size=(6, 3)), 'bias': rng.normal(size=3)}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
           for _ in range(3)]
  config = _muon_config(muon_dtype=muon_dtype)
  tx = optim.create_optimizer(config, num_steps=10, steps_per_epoch=5)
  sgd_only = optim.create_optimizer(_muon_config(kernels='sgd'), num_steps=10, steps_per_epoch=5)
  state, sgd_state = tx.init(params), sgd_only.init(params)
  trained, sgd_trained = params, params
  for g in grads:
    updates, state = jax.jit(tx.update)(g, state, trained)
    trained = jax.tree.map(jnp.add, trained, updates)
    updates, sgd_state = jax.jit(sgd_only.update)(g, sgd_state, sgd_trained)
    sgd_trained = jax.tree.map(jnp.add, sgd_trained, updates)

  for name in ('conv', 'conv1x1'):
    want = _reference_kernel_steps(np.asarray(params[name]['kernel'], np.float64),
                                   [np.asarray(g[name]['kernel'], np.float64) for g in grads],
                                   config.muon_learning_rate, config.muon_momentum)
    np.testing.assert_allclose(trained[name]['kernel'], want, rtol=0, atol=atol)
    assert np.linalg.norm(trained[name]['kernel']) == pytest.approx(np.sqrt(6), rel=1e-6)
    # Each of the three steps turned the kernel by about the rate (radians).
    assert not np.allclose(trained[name]['kernel'], params[name]['kernel'], atol=0.01)
  # Everything but the conv kernels: the SGD of the same config, to the bit.
  for path in (('conv', 'bias'), ('fc', 'kernel'), ('fc', 'bias')):
    a, b = trained[path[0]][path[1]], sgd_trained[path[0]][path[1]]
    np.testing.assert_array_equal(a, b)


def _named_in_one_line(config, match):
  with pytest.raises(ValueError, match=match) as error:
    train.validate(config)
  assert_in_readme(cli.error_line('vgg_jax.train', error.value))


def test_unknown_kernel_optimizer_and_bad_muon_settings_are_named():
  config = cifar10.get_config('D,twocore')
  config.optimizer.kernels = 'adam'
  _named_in_one_line(config, "unknown optimizer.kernels 'adam': choose one of sgd, muon")
  config.optimizer.kernels = 'muon'
  config.model.batch_norm = False
  _named_in_one_line(config, "optimizer.kernels='muon' holds every conv kernel at a fixed "
                     'norm, which only batch norm')
  config.optimizer.muon_dtype = 'float16'
  _named_in_one_line(config, "unknown optimizer.muon_dtype 'float16': choose one of float32, "
                     'bfloat16')
  config.optimizer.muon_dtype = 'bfloat16'
  config.model.batch_norm = True
  config.optimizer.muon_momentum = 1.0
  with pytest.raises(ValueError, match=r'optimizer.muon_momentum=1.0 must be in \[0, 1\)'):
    train.validate(config)


@pytest.mark.parametrize('by_onednn', [True, False])
def test_bfloat16_newton_schulz_is_float32s_to_bfloat16_rounding(monkeypatch, by_onednn):
  """oneDNN multiplies where the CPU has bfloat16 kernels, XLA's dot elsewhere; both
  land where float32's iterations do, to bfloat16's rounding, tall matrix or wide."""
  if by_onednn and not onednn.bfloat16_available():
    pytest.skip('no bfloat16 kernels of oneDNN on this CPU')
  monkeypatch.setattr(onednn, 'bfloat16_available', lambda: by_onednn)
  rng = np.random.default_rng(0)
  for shape in ((72, 16), (16, 72)):
    x = rng.normal(size=shape).astype(np.float32)
    x /= np.linalg.norm(x)
    ns = functools.partial(optim.newton_schulz, steps=3)
    want = np.asarray(jax.jit(ns)(x))
    program = jax.jit(functools.partial(ns, dtype=jnp.bfloat16)).lower(x)
    assert ('VggJaxMatmul' in program.as_text()) == by_onednn
    got = np.asarray(program.compile()(x))
    assert got.dtype == np.float32
    # Measured: 4.1 and 5.5 % of the largest entry off at most, by either route.
    assert np.max(np.abs(got - want)) <= 0.08 * np.max(np.abs(want))
    # Three iterations take the singular values from 0.13-0.36 to 0.66-1.14 (measured).
    singular_values = np.linalg.svd(got, compute_uv=False)
    assert np.all((singular_values > 0.5) & (singular_values < 1.5))


@pytest.mark.parametrize('schedule,expected', [
    # steps 0, 5, 10 (the warm-up's end), 35, 60 and 110 (the last) of 110, 10 an epoch
    ('cosine', [0.0, 0.2, 0.4, 0.2 * (1 + np.cos(np.pi / 4)), 0.2, 0.0]),
    ('linear', [0.0, 0.2, 0.4, 0.3, 0.2, 0.0]),
    ('step', [0.0, 0.2, 0.4, 0.4, 0.04, 0.04]),
    ('constant', [0.0, 0.2, 0.4, 0.4, 0.4, 0.4]),
])
def test_schedules_after_a_linear_warm_up(schedule, expected):
  cfg = config_schema.base_config().optimizer
  cfg.update(learning_rate=0.4, schedule=schedule, warmup_epochs=1.0, step_epochs=(6,))
  lr = optim.learning_rate_fn(cfg, num_steps=110, steps_per_epoch=10)
  np.testing.assert_allclose([float(lr(t)) for t in (0, 5, 10, 35, 60, 110)], expected,
                             rtol=1e-6, atol=1e-7)
