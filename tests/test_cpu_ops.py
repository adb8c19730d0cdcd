"""The CPU fast paths equal XLA's plain convolution and pooling: values and gradients."""

import os
import platform
import shutil
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vgg_jax import cpu_ops, pooling
from vgg_jax import model as vgg
from vgg_jax import native, onednn

LAYOUT = ('NHWC', 'HWIO', 'NHWC')


def normal(*shape, seed=0):
  # numpy, not jax.random: XLA CPU takes seconds to compile each threefry draw.
  return np.random.default_rng([seed, *shape]).standard_normal(shape, np.float32)


def conv_and_grads(conv, x, w, cotangent, padding, **kwargs):
  out, vjp = jax.vjp(lambda x, w: conv(x, w, (1, 1), padding, dimension_numbers=LAYOUT,
                                       **kwargs), x, w)
  return (out, *vjp(cotangent))


def assert_same_as_plain(shape, kernel, padding, cout=12, **kwargs):
  x = normal(*shape)
  w = normal(kernel, kernel, shape[-1], cout)
  out_shape = jax.eval_shape(
      lambda: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=LAYOUT,
                                           **kwargs)).shape
  cotangent = normal(*out_shape, seed=1)
  fast = jax.jit(lambda *a: conv_and_grads(cpu_ops.conv_general_dilated, *a, padding, **kwargs))
  plain = jax.jit(lambda *a: conv_and_grads(jax.lax.conv_general_dilated, *a, padding, **kwargs))
  for name, f, p in zip(('output', 'input grad', 'kernel grad'), fast(x, w, cotangent),
                        plain(x, w, cotangent)):
    scale = float(jnp.max(jnp.abs(p)))
    np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


WINDOW, TAPS, ONEDNN = 'window matmul', 'tap matmuls', 'oneDNN'


@pytest.fixture(params=[WINDOW, TAPS])
def small_map_route(request, monkeypatch):
  """Each small-map route on this test's small channel counts: with no room
  for a window matrix, the taps take them."""
  if request.param == TAPS:
    monkeypatch.setattr(cpu_ops, '_WINDOW_MATRIX_MAX_BYTES', 0)
  return request.param


def assert_route(jaxpr, route, taps_met=None):
  if route == WINDOW:  # one matmul by the assembled matrix
    assert 'optimization_barrier' in jaxpr and 'custom_partitioning' not in jaxpr
  elif route == TAPS:  # one matmul for each tap that meets the map
    assert 'optimization_barrier' not in jaxpr and 'custom_partitioning' not in jaxpr
    assert jaxpr.count('dot_general') == taps_met
  else:  # oneDNN's where it is built (faster than patches here too), else patches
    assert ('custom_partitioning' in jaxpr) == onednn.available()
    assert ('dot_general' in jaxpr) != onednn.available()


@pytest.mark.parametrize('side, kernel, padding, taps_met', [
    (2, 3, 'SAME', 9), (1, 3, 'SAME', 1), (3, 5, 'SAME', 25),
    (2, 7, 'SAME', 9), (7, 7, 'VALID', 49)])  # the last a fully connected layer
def test_maps_in_every_window_take_a_small_map_route(side, kernel, padding, taps_met,
                                                      small_map_route):
  x, w = normal(3, side, side, 10), normal(kernel, kernel, 10, 12)
  jaxpr = str(jax.make_jaxpr(lambda x, w: cpu_ops.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=LAYOUT))(x, w))
  assert_route(jaxpr, small_map_route, taps_met)
  assert_same_as_plain((3, side, side, 10), kernel, padding)


@pytest.mark.parametrize('padding', [((2, 0), (0, 1)), ((3, 0), (1, 1))])  # asymmetric pads, the last one wider than k - 1
def test_maps_smaller_than_the_kernel_with_positions_outside_a_window(padding):
  x, w = normal(3, 2, 2, 10), normal(3, 3, 10, 12)
  jaxpr = str(jax.make_jaxpr(lambda x, w: cpu_ops.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=LAYOUT))(x, w))
  assert_route(jaxpr, ONEDNN)
  assert_same_as_plain((3, 2, 2, 10), kernel=3, padding=padding)


@pytest.mark.parametrize('channels, route', [(256, WINDOW), (512, TAPS), (2048, TAPS)])
def test_small_maps_take_the_taps_where_the_window_matrix_would_be_large(channels, route):
  # A 2x2 map of 512 channels would need a 16 MB matrix, of 2,048 a 256 MB one.
  x, w = (jax.ShapeDtypeStruct(shape, jnp.float32) for shape in (
      (64, 2, 2, channels), (3, 3, channels, channels)))
  jaxpr = str(jax.make_jaxpr(lambda x, w: cpu_ops.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=LAYOUT))(x, w))
  assert_route(jaxpr, route, taps_met=9)


@pytest.mark.parametrize('side, kernel, padding', [
    (16, 3, 'SAME'), (17, 5, 'SAME'), (4, 3, 'VALID'), (3, 3, ((2, 0), (1, 3))),
    (8, 7, 'VALID'), (5, 1, 'SAME')])
def test_map_larger_than_the_kernel_is_onednns_convolution(side, kernel, padding):
  x, w = normal(2, side, side, 5), normal(kernel, kernel, 5, 4)
  fast = jax.jit(lambda x, w: cpu_ops.conv_general_dilated(x, w, (1, 1), padding,
                                                           dimension_numbers=LAYOUT))
  jaxpr = str(jax.make_jaxpr(fast)(x, w))
  assert 'dot_general' not in jaxpr  # no patches
  assert ('custom_partitioning' in jaxpr) == onednn.available()
  assert_same_as_plain((2, side, side, 5), kernel, padding)


def test_onednn_is_built_wherever_its_parts_are_installed():
  # CI and every Linux x86-64 install have them: a failed build must fail here,
  # not quietly fall back to the slower convolution.
  if not (sys.platform.startswith('linux') and platform.machine() == 'x86_64'
          and shutil.which('g++')):
    pytest.skip('oneDNN is built on Linux x86-64 with g++ only')
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.implementations(8, 8, 8, 8).count(',') == 2  # three passes


@pytest.mark.skipif(not onednn.available(), reason='oneDNN not installed')
@pytest.mark.parametrize('transpose_a', [False, True])
@pytest.mark.parametrize('transpose_b', [False, True])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_onednn_matmul_multiplies_the_transposes_asked(transpose_a, transpose_b, dtype):
  if dtype == 'bfloat16' and not onednn.bfloat16_available():
    pytest.skip('no bfloat16 kernels of oneDNN on this CPU')
  rng = np.random.default_rng(0)
  a = rng.normal(size=(7, 5) if transpose_a else (5, 7)).astype(dtype)
  b = rng.normal(size=(3, 7) if transpose_b else (7, 3)).astype(dtype)
  got = jax.jit(onednn.matmul, static_argnums=(2, 3))(a, b, transpose_a, transpose_b)
  assert got.shape == (5, 3) and got.dtype == a.dtype
  exact = (np.asarray(a, np.float64).T if transpose_a else np.asarray(a, np.float64)) @ (
      np.asarray(b, np.float64).T if transpose_b else np.asarray(b, np.float64))
  # float32 sums; a bfloat16 result rounded once (half a unit in the 8th bit).
  rtol = 2 ** -8 if dtype == 'bfloat16' else 1e-6
  np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=rtol, atol=1e-6)
  with pytest.raises(ValueError, match=r'matmul of \(5, 7\) and \(3, 7\): the inner sizes differ'):
    onednn.matmul(np.zeros((5, 7), dtype), np.zeros((3, 7), dtype))


@pytest.mark.parametrize('users', [None, 'active'])
def test_openmp_sleeps_between_convolutions_unless_the_user_said_otherwise(monkeypatch, users):
  # The library loaded (in this process, once): its wait policy is set unless the user's was.
  if not onednn.available():
    pytest.skip(f'oneDNN is not installed here: {onednn.unavailable_reason()}')
  assert os.environ[onednn.WAIT_POLICY_ENV] == (onednn._USERS_WAIT_POLICY or 'passive')
  # Processes started inside users_openmp_environment (PyTorch's) get the user's.
  monkeypatch.setattr(onednn, '_USERS_WAIT_POLICY', users)
  monkeypatch.setenv(onednn.WAIT_POLICY_ENV, 'passive')
  with onednn.users_openmp_environment():
    assert os.environ.get(onednn.WAIT_POLICY_ENV) == users
  assert os.environ[onednn.WAIT_POLICY_ENV] == 'passive'


def _routed_to_onednn(x, w, padding) -> bool:
  jaxpr = str(jax.make_jaxpr(lambda a, b: cpu_ops.conv_general_dilated(
      a, b, (1, 1), padding, dimension_numbers=LAYOUT))(x, w))
  assert ('custom_partitioning' in jaxpr) != ('conv_general_dilated' in jaxpr)
  return 'custom_partitioning' in jaxpr


def test_negative_pads_take_xlas_convolution():
  x, w = normal(2, 8, 8, 3), normal(3, 3, 3, 4)
  assert not _routed_to_onednn(x, w, ((-1, 1), (1, 1)))


def test_bfloat16_takes_onednn_where_the_cpu_multiplies_bfloat16(monkeypatch):
  x, w = normal(2, 8, 8, 3).astype(jnp.bfloat16), normal(3, 3, 3, 4).astype(jnp.bfloat16)
  assert _routed_to_onednn(x, w, 'SAME') == onednn.bfloat16_available()
  if onednn.available():
    names = onednn.implementations(8, 8, 16, 16, jnp.bfloat16)
    in_hardware = bool(onednn.cpu_flags() & set(onednn.BFLOAT16_CPU_FLAGS))
    assert onednn.bfloat16_available() == (
        in_hardware and bool(names) and not any(n.strip().startswith('ref')
                                                for n in names.split(',')))
  # The last stage's 2x2 maps too: oneDNN's bfloat16 kernels, not the window
  # matmul, which XLA runs in float32 (experiments/PERFORMANCE.md).
  small, small_w = (normal(*shape).astype(jnp.bfloat16)
                    for shape in ((2, 2, 2, 16), (3, 3, 16, 16)))
  small_jaxpr = str(jax.make_jaxpr(lambda a, b: cpu_ops.conv_general_dilated(
      a, b, (1, 1), 'SAME', dimension_numbers=LAYOUT))(small, small_w))
  assert ('custom_partitioning' in small_jaxpr) == onednn.bfloat16_available()
  # A CPU without AVX-512 BF16 or AMX (AVX2 only, say): XLA's own, and the
  # window matmul on the 2x2 maps.
  monkeypatch.setattr(onednn, 'cpu_flags', lambda: frozenset({'avx2', 'fma'}))
  onednn.bfloat16_available.cache_clear()
  try:
    assert not onednn.bfloat16_available()
    assert not _routed_to_onednn(x, w, 'SAME')
    small_jaxpr = str(jax.make_jaxpr(lambda a, b: cpu_ops.conv_general_dilated(
        a, b, (1, 1), 'SAME', dimension_numbers=LAYOUT))(small, small_w))
    assert 'optimization_barrier' in small_jaxpr and 'custom_partitioning' not in small_jaxpr
  finally:
    monkeypatch.undo()
    onednn.bfloat16_available.cache_clear()


def test_onednn_can_be_turned_off(monkeypatch):
  monkeypatch.setenv(onednn.SWITCH_ENV, '0')
  onednn.unavailable_reason.cache_clear()
  try:
    assert onednn.unavailable_reason() == f'{onednn.SWITCH_ENV}=0'
    assert not onednn.available()
  finally:
    monkeypatch.undo()
    onednn.unavailable_reason.cache_clear()


def test_a_failed_build_names_the_compiler_and_its_error(monkeypatch, tmp_path):
  if not onednn.available():
    pytest.skip(f'oneDNN is not installed here: {onednn.unavailable_reason()}')
  monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path))
  monkeypatch.setenv('CXX', 'false')
  with pytest.raises(RuntimeError, match='false .* failed'):
    onednn.build()
  assert not list(tmp_path.glob('*.so'))  # nothing half-built left to load


@pytest.mark.parametrize('route, side', [(ONEDNN, 8), (WINDOW, 2), (TAPS, 2)])
def test_fast_convolutions_split_the_batch_over_devices_like_xla(route, side):
  # Eight CPU devices (conftest): each convolves its share of the batch, the
  # kernel gradient is summed over them; no device gathers the batch.
  if route == ONEDNN and not onednn.available():
    pytest.skip(f'oneDNN is not installed here: {onednn.unavailable_reason()}')
  conv = {ONEDNN: onednn.conv, WINDOW: cpu_ops.window_matmul_conv,
          TAPS: cpu_ops.tap_matmul_conv}[route]
  mesh = Mesh(np.array(jax.devices()), ('data',))
  x, w = normal(16, side, side, 5), normal(3, 3, 5, 6)
  pads = ((1, 1), (1, 1))

  def loss_and_grads(conv):
    return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))

  plain = loss_and_grads(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), pads, dimension_numbers=LAYOUT))(x, w)
  sharded = (jax.device_put(x, NamedSharding(mesh, P('data'))),
             jax.device_put(w, NamedSharding(mesh, P())))
  fast = loss_and_grads(lambda x, w: conv(x, w, pads))
  assert 'all-gather' not in fast.lower(*sharded).compile().as_text()
  loss, (dx, dw) = fast(*sharded)
  assert dx.sharding.spec == P('data')
  # The 2x2 map's loss is a sum of sines that nearly cancel (about -1): the
  # rounding of its terms, not of the sum, bounds it.
  np.testing.assert_allclose(loss, plain[0], rtol=1e-5, atol=1e-6 * x.size)
  for f, p in zip((dx, dw), plain[1]):
    np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(p))))


def conv_bias_relu_and_grads(fn, x, w, b, cotangent):
  out, vjp = jax.vjp(fn, x, w, b)
  return (out, *vjp(cotangent))


@pytest.mark.parametrize('side, kernel, padding, route', [
    (8, 3, 'SAME', ONEDNN), (2, 3, 'SAME', WINDOW), (1, 3, 'SAME', WINDOW),
    (7, 7, 'VALID', WINDOW), (2, 3, 'SAME', TAPS), (8, 7, 'VALID', ONEDNN),
    (5, 1, 'SAME', ONEDNN), (3, 3, ((2, 0), (1, 3)), ONEDNN)])
def test_conv_bias_relu_equals_the_plain_convolution_bias_and_relu(side, kernel, padding, route,
                                                                   monkeypatch):
  if route == TAPS:
    monkeypatch.setattr(cpu_ops, '_WINDOW_MATRIX_MAX_BYTES', 0)
  x, w, b = normal(3, side, side, 5), normal(kernel, kernel, 5, 6), normal(6, seed=2)
  plain = lambda x, w, b: jax.nn.relu(jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=LAYOUT) + b)
  fast = lambda x, w, b: cpu_ops.conv_bias_relu(x, w, b, padding)
  jaxpr = str(jax.make_jaxpr(fast)(x, w, b))
  # oneDNN's: one call, bias inside; the window matmul's: none.
  assert jaxpr.count('custom_partitioning') == (route == ONEDNN and onednn.available())
  assert ('optimization_barrier' in jaxpr) == (route == WINDOW)
  cotangent = normal(*jax.eval_shape(plain, x, w, b).shape, seed=3)
  options = cpu_ops.compiler_options()
  got = jax.jit(lambda *a: conv_bias_relu_and_grads(fast, *a), compiler_options=options)(
      x, w, b, cotangent)
  want = jax.jit(lambda *a: conv_bias_relu_and_grads(plain, *a))(x, w, b, cotangent)
  assert float(jnp.mean(want[0] > 0)) > 0.2  # the ReLU passes some, masks some
  for name, f, p in zip(('output', 'input grad', 'kernel grad', 'bias grad'), got, want):
    np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(p))),
                               err_msg=name)


@pytest.mark.skipif(not onednn.available(), reason='oneDNN not installed')
def test_conv_bias_relu_splits_the_batch_over_devices():
  mesh = Mesh(np.array(jax.devices()), ('data',))
  x, w, b = normal(16, 8, 8, 5), normal(3, 3, 5, 6), normal(6, seed=1)
  pads = ((1, 1), (1, 1))

  def loss_and_grads(fn):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), (0, 1, 2)))

  plain = loss_and_grads(lambda x, w, b: jax.nn.relu(jax.lax.conv_general_dilated(
      x, w, (1, 1), pads, dimension_numbers=LAYOUT) + b))(x, w, b)
  replicated = NamedSharding(mesh, P())
  sharded = (jax.device_put(x, NamedSharding(mesh, P('data'))), jax.device_put(w, replicated),
             jax.device_put(b, replicated))
  fast = loss_and_grads(lambda x, w, b: onednn.conv_bias_relu(x, w, b, pads))
  assert 'all-gather' not in fast.lower(*sharded).compile().as_text()
  loss, grads = fast(*sharded)
  assert grads[0].sharding.spec == P('data')
  # A sum of sines: the rounding of its terms, which oneDNN's kernels do
  # differently per instruction set, bounds it.
  np.testing.assert_allclose(loss, plain[0], rtol=1e-5, atol=1e-6 * x.size)
  for f, p in zip(grads, plain[1]):
    np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(p))))


@pytest.mark.parametrize('kwargs', [dict(rhs_dilation=(2, 2)), dict(feature_group_count=5)])
def test_unusual_convolutions_take_the_plain_path(kwargs):
  # Grouped kernels have in_channels / groups input features.
  cin = 1 if 'feature_group_count' in kwargs else 5
  x = normal(2, 16, 16, 5)
  w = normal(3, 3, cin, 10)
  fast = cpu_ops.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=LAYOUT, **kwargs)
  plain = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=LAYOUT, **kwargs)
  np.testing.assert_array_equal(fast, plain)


def test_flax_conv_reaches_the_fast_path():
  """flax passes ConvDimensionNumbers, not layout strings: both must be recognised."""
  calls = []

  def spy(*args, **kwargs):
    calls.append(cpu_ops._is_nhwc_hwio(args[0], args[1], kwargs['dimension_numbers']))
    return cpu_ops.conv_general_dilated(*args, **kwargs)

  layer = nn.Conv(4, (3, 3), conv_general_dilated=spy)
  layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert calls and all(calls)


def test_whole_model_gradients_equal_the_plain_convolution():
  # 32x32 input: maps from 32x32 down to 2x2, all oneDNN's where it is built.
  model = vgg.VGG(variant='B', image_size=32, width=1 / 16, fc_width=16, num_classes=5,
                  dropout_rate=0.0)
  plain = model.clone(conv_fn=jax.lax.conv_general_dilated,
                      pool_fn=pooling.window_max_pool_2x2)
  x = normal(4, 32, 32, 3)
  # Init's random code compiles slowly at full LLVM optimisation; the values are the same.
  init = lambda m: jax.jit(m.init, compiler_options={'xla_backend_optimization_level': 0})(
      jax.random.key(0), x)
  params = init(model)
  assert cpu_ops.default_conv_fn() is cpu_ops.conv_general_dilated
  # Convs and their ReLUs as one operation: nn.Conv's parameters all the same.
  assert model.fuse_conv_relu and not plain.fuse_conv_relu
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, init(plain))

  def loss_and_grad(m, **options):
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply(p, x) ** 2)),
                   compiler_options=options)(params)

  plain_loss, plain_grads = loss_and_grad(plain)
  # The fast operations, compiled as XLA defaults and as the train step is.
  step_options = cpu_ops.compiler_options()
  for fast_loss, fast_grads in loss_and_grad(model), loss_and_grad(model, **step_options):
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-5)
    for f, p in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(plain_grads)):
      np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(p))))


def test_the_suites_backend_level_changes_only_where_multiply_adds_round():
  # tests/conftest.py compiles the suite at XLA's backend level 0, users' programs
  # at level 3: elementwise functions, reductions and divisions must agree bit for
  # bit, a multiply-add to its rounding (contracted into one FMA or not), and a
  # network's loss and gradients to float rounding. Arrays as arguments: constants
  # would be folded before either level compiled anything.
  at = lambda level, f, *args: jax.jit(
      f, compiler_options={'xla_backend_optimization_level': level})(*args)
  a, b, c = normal(4096), normal(4096, seed=1), normal(4096, seed=2)
  exact = {'exp': lambda a, b: jnp.exp(a), 'log': lambda a, b: jnp.log(jnp.abs(a) + 1),
           'tanh': lambda a, b: jnp.tanh(a), 'sum': lambda a, b: jnp.sum(a * b),
           'divide': lambda a, b: a / (jnp.abs(b) + 1), 'maximum': jnp.maximum}
  for name, f in exact.items():
    np.testing.assert_array_equal(at(0, f, a, b), at(3, f, a, b), err_msg=name)
  multiply_add = lambda a, b, c: a * b + c
  low, high = at(0, multiply_add, a, b, c), at(3, multiply_add, a, b, c)
  np.testing.assert_allclose(low, high, rtol=0, atol=1e-6 * float(np.max(np.abs(high))))
  if 'fma' in onednn.cpu_flags():  # level 3 did compile: it contracts into FMAs
    assert not np.array_equal(low, high)
  model = vgg.VGG(variant='A', image_size=32, width=1 / 16, fc_width=16, num_classes=5,
                  dropout_rate=0.0)
  x = normal(4, 32, 32, 3)
  params = at(0, model.init, jax.random.key(0), x)
  loss = jax.value_and_grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2))
  (low, low_grads), (high, high_grads) = at(0, loss, params, x), at(3, loss, params, x)
  np.testing.assert_allclose(low, high, rtol=1e-5)
  for f, p in zip(jax.tree_util.tree_leaves(low_grads), jax.tree_util.tree_leaves(high_grads)):
    np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(p))))


def test_cpu_compiler_options_keep_ynnpacks_matmuls_only_unless_asked_to_keep_defaults(
    monkeypatch):
  monkeypatch.delenv(cpu_ops.KEEP_XLA_DEFAULTS_ENV, raising=False)
  x = jnp.ones((64, 256))

  def ynn_fusions(options):
    text = jax.jit(lambda a: (a @ a.T, jnp.sum(a * a, axis=0)),
                   compiler_options=options).lower(x).compile().as_text()
    fusions = [line for line in text.splitlines() if '"__ynn_fusion"' in line]
    return {op: any(f'/{op}"' in line for line in fusions) for op in ('dot_general', 'reduce_sum')}

  # XLA's defaults give YNNPACK the reduction too; the step's options, its matmul alone.
  assert ynn_fusions({}) == {'dot_general': True, 'reduce_sum': True}
  assert ynn_fusions(cpu_ops.compiler_options()) == {'dot_general': True, 'reduce_sum': False}
  monkeypatch.setenv(cpu_ops.KEEP_XLA_DEFAULTS_ENV, '1')
  assert cpu_ops.compiler_options() == {}


@pytest.mark.skipif(not onednn.bfloat16_available(),
                    reason='oneDNN has no bfloat16 kernels for this CPU (AVX-512 BF16 or AMX)')
@pytest.mark.parametrize('side, kernel, padding', [
    (8, 3, 'SAME'), (4, 3, 'SAME'), (2, 3, 'SAME'), (8, 7, 'VALID'), (5, 1, 'SAME'),
    (3, 3, ((2, 0), (1, 3)))])
def test_onednn_bfloat16_convolution_is_xlas_to_bfloat16_rounding(side, kernel, padding):
  # Both accumulate in float32 and round once: each value and gradient lies
  # within half a bfloat16 step (2**-8 relative) of the float32 convolution of
  # the same bfloat16 inputs, and within one step of XLA's own bfloat16 result.
  # Maps of at most 16 output positions (4x4; 8 -> 2x2 under a 7x7 kernel;
  # 3x5 under uneven pads) take the kernel gradient as patches times a matmul.
  x = normal(16, side, side, 24).astype(jnp.bfloat16)
  w = (normal(kernel, kernel, 24, 32) / kernel).astype(jnp.bfloat16)
  out_shape = jax.eval_shape(lambda: jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=LAYOUT)).shape
  cotangent = normal(*out_shape, seed=1).astype(jnp.bfloat16)
  assert _routed_to_onednn(x, w, padding)
  fast = jax.jit(lambda *a: conv_and_grads(cpu_ops.conv_general_dilated, *a, padding))
  plain = jax.jit(lambda *a: conv_and_grads(jax.lax.conv_general_dilated, *a, padding))
  exact = jax.jit(lambda *a: conv_and_grads(jax.lax.conv_general_dilated,
                                            *(b.astype(jnp.float32) for b in a), padding))
  for name, f, p, e in zip(('output', 'input grad', 'kernel grad'), fast(x, w, cotangent),
                           plain(x, w, cotangent), exact(x, w, cotangent)):
    assert f.dtype == jnp.bfloat16, name
    f, p, e = (np.asarray(a, np.float64) for a in (f, p, e))
    slack = 1e-5 * np.max(np.abs(e))  # float32 sums added in another order
    assert np.all(np.abs(f - e) <= 2**-8 * np.abs(e) + slack), name
    assert np.all(np.abs(f - p) <= 2**-7 * np.abs(p) + slack), name


@pytest.mark.skipif(not onednn.bfloat16_available(),
                    reason='oneDNN has no bfloat16 kernels for this CPU (AVX-512 BF16 or AMX)')
def test_bfloat16_kernel_gradients_of_small_maps_are_a_matmul():
  # oneDNN's bfloat16 kernel gradient of a map of a few positions ran 3x slower
  # than a matmul of the same multiply-adds (onednn_conv.cc): up to 16 output
  # positions take the matmul; float32, and larger maps, oneDNN's own pass.
  def kernel_gradient(side, dtype):
    return onednn.implementations(16, side, 24, 32, dtype).split(', ')[-1]
  assert kernel_gradient(4, jnp.bfloat16).startswith('patches+matmul:')
  assert not kernel_gradient(5, jnp.bfloat16).startswith('patches+matmul:')
  assert not kernel_gradient(4, jnp.float32).startswith('patches+matmul:')


@pytest.mark.skipif(not onednn.bfloat16_available(),
                    reason='oneDNN has no bfloat16 kernels for this CPU (AVX-512 BF16 or AMX)')
@pytest.mark.parametrize('side', [8, 4])  # the kernel gradient by oneDNN's conv, by a matmul
def test_onednn_bfloat16_convolution_splits_the_batch_over_devices(side):
  # Eight CPU devices (conftest): each convolves its share in bfloat16; the
  # outputs and input gradients are the whole batch's (each image's own), and
  # the kernel gradient is summed over the devices in float32 and rounded
  # once, as by XLA's own partitioned convolution, not as a sum of eight
  # rounded shares (0.4 % off before).
  mesh = Mesh(np.array(jax.devices()), ('data',))
  x = normal(16, side, side, 16).astype(jnp.bfloat16)
  w = (normal(3, 3, 16, 24) / 3).astype(jnp.bfloat16)
  dy = normal(16, side, side, 24, seed=1).astype(jnp.bfloat16)
  pads = ((1, 1), (1, 1))

  def passes(conv):
    return jax.jit(lambda *a: conv_and_grads(lambda x, w, *_, **__: conv(x, w), *a, pads))

  fast = passes(lambda x, w: onednn.conv(x, w, pads))
  xla = passes(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), pads,
                                                         dimension_numbers=LAYOUT))
  by_batch, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  sharded = (jax.device_put(x, by_batch), jax.device_put(w, replicated),
             jax.device_put(dy, by_batch))
  split, whole, xla_split = fast(*sharded), fast(x, w, dy), xla(*sharded)
  assert split[1].sharding.spec == P('data')
  for name, a, b, c in zip(('output', 'input grad', 'kernel grad'), split, whole, xla_split):
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    # float32 sums in another order may round to the neighbouring bfloat16
    bound = 0 if name != 'kernel grad' else 2**-7 * np.abs(b)
    assert np.all(np.abs(a - b) <= bound), name
    assert np.all(np.abs(a - c) <= 2**-7 * np.abs(c)), name


@pytest.mark.skipif(not onednn.bfloat16_available(),
                    reason='oneDNN has no bfloat16 kernels for this CPU (AVX-512 BF16 or AMX)')
@pytest.mark.parametrize('side, kernel, padding', [(8, 3, 'SAME'), (4, 3, 'SAME'), (2, 3, 'SAME'),
                                                   (5, 1, 'SAME')])
def test_bfloat16_conv_bias_relu_is_the_float32_one_rounded(side, kernel, padding):
  # bfloat16 activations and kernel, float32 bias: oneDNN adds the bias and
  # applies the ReLU before its one rounding (half a bfloat16 step, 2**-8).
  x = normal(3, side, side, 16).astype(jnp.bfloat16)
  w = (normal(kernel, kernel, 16, 24) / kernel).astype(jnp.bfloat16)
  b = normal(24, seed=2)
  fast = lambda x, w, b: cpu_ops.conv_bias_relu(x, w, b, padding)
  exact = lambda x, w, b: jax.nn.relu(jax.lax.conv_general_dilated(
      x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), padding,
      dimension_numbers=LAYOUT) + b)
  jaxpr = str(jax.make_jaxpr(fast)(x, w, b))
  assert jaxpr.count('custom_partitioning') == 1 and 'conv_general_dilated' not in jaxpr
  cotangent = normal(*jax.eval_shape(exact, x, w, b).shape, seed=3).astype(jnp.bfloat16)
  got = jax.jit(lambda *a: conv_bias_relu_and_grads(fast, *a))(x, w, b, cotangent)
  want = jax.jit(lambda *a: conv_bias_relu_and_grads(exact, *a))(
      x, w, b, cotangent.astype(jnp.float32))
  assert [g.dtype for g in got] == [jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, jnp.float32]
  for name, f, e in zip(('output', 'input grad', 'kernel grad', 'bias grad'), got, want):
    f, e = np.asarray(f, np.float64), np.asarray(e, np.float64)
    slack = 1e-5 * np.max(np.abs(e))  # float32 sums in another order
    assert np.all(np.abs(f - e) <= 2**-8 * np.abs(e) + slack), name


def test_bfloat16_conv_bias_relu_elsewhere_is_nn_convs(monkeypatch):
  # Where oneDNN does not fuse it (a CPU without bfloat16 kernels: here the 2x2
  # map's window matmul), the bfloat16 layer is nn.Conv's in bfloat16 and a
  # ReLU: the bias rounded to bfloat16 and added to the rounded convolution.
  monkeypatch.setattr(onednn, 'cpu_flags', lambda: frozenset({'avx2', 'fma'}))
  onednn.bfloat16_available.cache_clear()
  try:
    x = normal(3, 2, 2, 16).astype(jnp.bfloat16)
    w = (normal(3, 3, 16, 24) / 3).astype(jnp.bfloat16)
    b = normal(24, seed=2)
    got = jax.jit(lambda x, w, b: cpu_ops.conv_bias_relu(x, w, b, 'SAME'))
    want = jax.jit(lambda x, w, b: jax.nn.relu(cpu_ops.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=LAYOUT) + b.astype(jnp.bfloat16)))
    assert 'optimization_barrier' in str(jax.make_jaxpr(got)(x, w, b))
    got, want = got(x, w, b), want(x, w, b)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  finally:
    monkeypatch.undo()
    onednn.bfloat16_available.cache_clear()


def test_bfloat16_model_fuses_its_convs_and_relus_with_nn_convs_parameters():
  model = vgg.VGG(variant='A', image_size=32, width=1 / 16, fc_width=16, num_classes=5,
                  dropout_rate=0.0, weight_init='glorot', dtype=jnp.bfloat16)
  plain = model.clone(conv_fn=jax.lax.conv_general_dilated)
  assert model.fuse_conv_relu and not plain.fuse_conv_relu
  x = normal(4, 32, 32, 3)
  init = lambda m: jax.jit(m.init, compiler_options={'xla_backend_optimization_level': 0})(
      jax.random.key(0), x)
  params = init(model)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, init(plain))
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply(p, x) ** 2)))(params)
  (fast_loss, fast_grads), (plain_loss, plain_grads) = loss(model), loss(plain)
  # Eight layers of bfloat16 rounding apart (one rounding a layer against two).
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-2)
  for f, p in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(plain_grads)):
    assert f.dtype == jnp.float32
    np.testing.assert_allclose(f, p, atol=6e-2 * float(jnp.max(jnp.abs(p))))
