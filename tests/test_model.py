"""The model against the paper's numbers and against independent computations."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax import model as vgg
from vgg_jax import summary

# Table 2, exact (VGG_REFERENCE.md): 224x224 input, 1000 classes.
PAPER_PARAMS = {
    'A': 132_863_336, 'A-LRN': 132_863_336, 'B': 133_047_848,
    'C': 133_638_952, 'D': 138_357_544, 'E': 143_667_240,
}
PAPER_GMACS = {'A': 7.61, 'A-LRN': 7.61, 'B': 11.31, 'C': 11.77, 'D': 15.47, 'E': 19.63}
PAPER_WEIGHT_LAYERS = {'A': 11, 'A-LRN': 11, 'B': 13, 'C': 16, 'D': 16, 'E': 19}
FC_PARAMS = 123_642_856


@pytest.mark.parametrize('variant', list(vgg.CONFIGS))
def test_parameter_count_and_cost_match_table2(variant):
  rows = summary.layer_table(vgg.VGG(variant=variant))
  assert sum(r[2] for r in rows) == PAPER_PARAMS[variant]
  assert sum(r[2] for r in rows if r[0].startswith('fc')) == FC_PARAMS
  assert round(sum(r[3] for r in rows) / 1e9, 2) == PAPER_GMACS[variant]
  weight_layers = [r for r in rows if r[0].startswith(('conv', 'fc'))]
  assert len(weight_layers) == PAPER_WEIGHT_LAYERS[variant]


def test_config_c_has_1x1_convs_ending_stages_3_to_5():
  kernels = {s.name: s.kernel_size for s in vgg.resolve_layers('C')}
  assert [n for n, k in kernels.items() if k == 1] == ['conv3_3', 'conv4_3', 'conv5_3']
  assert all(k == 3 for n, k in kernels.items() if n not in ('conv3_3', 'conv4_3', 'conv5_3'))


def test_knobs_are_config_changes():
  # The "shallow net" of §2.3: B with each pair of 3x3 convs replaced by one 5x5.
  shallow = vgg.resolve_layers('B', depths=(1, 1, 1, 1, 1), kernel_size=5)
  assert [(s.name, s.kernel_size) for s in shallow] == [
      (f'conv{i}_1', 5) for i in range(1, 6)]
  # 1x1 convs on another depth, and a width multiplier.
  d_1x1 = vgg.resolve_layers('D', conv1x1=True, width=0.25)
  assert [s.name for s in d_1x1 if s.kernel_size == 1] == ['conv3_4', 'conv4_4', 'conv5_4']
  assert [s.features for s in d_1x1 if s.name.endswith('_1')] == [16, 32, 64, 128, 128]
  # 5x5 pair replacement: conv weights 25 C^2 against 2 * 9 C^2 for the pair.
  b = summary.count_params(summary.abstract_variables(vgg.VGG(variant='B'))['params'])
  b5 = summary.count_params(summary.abstract_variables(
      vgg.VGG(variant='B', depths=(1,) * 5, kernel_size=5))['params'])
  assert b - b5 == _b_minus_shallow()


def _b_minus_shallow():
  """Conv weights and biases of B minus those of its 5x5 'shallow net'."""
  widths = vgg.STAGE_WIDTHS
  b = 0
  c_in = 3
  for c in widths:  # two 3x3 convs per stage
    b += 9 * c_in * c + c + 9 * c * c + c
    c_in = c
  shallow = 0
  c_in = 3
  for c in widths:  # one 5x5 conv per stage
    shallow += 25 * c_in * c + c
    c_in = c
  return b - shallow


@pytest.mark.parametrize('bad, message', [
    (dict(variant='F'), 'unknown VGG variant'),
    (dict(kernel_size=4), 'kernel_size=4 is not supported'),
    (dict(depths=(1, 1, 1)), 'five stages'),
    (dict(image_size=16), 'too small for the fc head'),
])
def test_impossible_settings_fail_clearly(bad, message):
  with pytest.raises(ValueError, match=message):
    summary.abstract_variables(vgg.VGG(**bad))


def test_input_smaller_than_training_crop_fails_clearly():
  model = vgg.VGG(variant='A', width=0.125, fc_width=16, image_size=64)
  with pytest.raises(ValueError, match='too small for this model'):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _tf():
  import tensorflow  # pylint: disable=import-outside-toplevel
  return tensorflow


def test_lrn_equals_tensorflow():
  tf = _tf()
  x = np.random.default_rng(0).normal(0, 30, (2, 5, 6, 17)).astype(np.float32)
  for radius, bias, alpha, beta in [(2, 2.0, 1e-4, 0.75), (1, 1.0, 1e-2, 0.5)]:
    ours = vgg.LocalResponseNorm(radius, bias, alpha, beta).apply({}, x)
    ref = tf.nn.local_response_normalization(
        x, depth_radius=radius, bias=bias, alpha=alpha, beta=beta).numpy()
    assert np.max(np.abs(np.asarray(ours) - ref)) <= 1e-5


TINY = dict(width=1 / 16, fc_width=32, num_classes=7)


def init(model, x):
  """Variables from a jitted init compiled without LLVM optimisation.

  Eager init compiles each random draw separately at full optimisation, which
  costs XLA's CPU backend tens of seconds for a whole VGG; the values are the same.
  """
  return jax.jit(model.init, compiler_options=QUICK)(jax.random.key(0), x)


# For programs run once on tiny inputs: LLVM's optimisation costs more than it saves.
QUICK = {'xla_backend_optimization_level': 0}


def drawn_variables(model, x):
  """Variables of init's shapes and dtypes, drawn by numpy (He normal, BN identity).

  For tests of what the model computes, not of how it initialises: init's
  random code costs a compilation per model that these tests do not need.
  """
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, leaf.dtype)
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = np.prod(leaf.shape[:-1])
    return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))


@pytest.mark.parametrize('variant', list(vgg.CONFIGS))
def test_every_variant_trains_forward_and_backward(variant):
  model = vgg.VGG(variant=variant, image_size=32, batch_norm=variant == 'B', **TINY)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = drawn_variables(model, x)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])

  value, grads = jax.jit(jax.value_and_grad(loss), compiler_options=QUICK)(variables['params'])
  assert np.isfinite(value)
  assert set(grads) == set(variables['params'])
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  assert all(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))


def test_dense_evaluation_averages_the_classic_head_over_windows():
  """§3.2: on a larger image the FC layers slide as convs and scores are averaged.

  Computed independently: run the classic head on every 2x2 window (the FC1
  window at a 64 crop) of the last feature map and average the logits.
  """
  model = vgg.VGG(variant='A', image_size=64, **TINY)
  x = jax.random.normal(jax.random.key(1), (2, 96, 128, 3))  # last map 3x4
  params = drawn_variables(model, x[:, :64, :64])['params']
  dense, capture = jax.jit(
      lambda p: model.apply({'params': p}, x, capture_intermediates=True,
                            mutable=['intermediates']), compiler_options=QUICK)(params)

  # The conv trunk's last feature map, pooled as the model pools it.
  capture = capture['intermediates']
  last_conv = capture['conv5_2']['__call__'][0]
  fmap = jax.nn.relu(jax.lax.reduce_window(last_conv, -jnp.inf, jax.lax.max,
                                           (1, 2, 2, 1), (1, 2, 2, 1), 'VALID'))
  assert fmap.shape[1:3] == (3, 4)
  w1 = params['fc1']['kernel']
  scores = []
  for i in range(fmap.shape[1] - 1):
    for j in range(fmap.shape[2] - 1):
      window = fmap[:, i:i + 2, j:j + 2].reshape(2, -1)
      h = jax.nn.relu(window @ w1.reshape(-1, w1.shape[-1]) + params['fc1']['bias'])
      h = jax.nn.relu(h @ params['fc2']['kernel'] + params['fc2']['bias'])
      scores.append(h @ params['fc3']['kernel'] + params['fc3']['bias'])
  np.testing.assert_allclose(dense, np.mean(scores, axis=0), rtol=1e-5, atol=1e-6)


def test_gap_head_takes_any_size_and_bf16_keeps_float32_params():
  model = vgg.VGG(variant='A', head='gap', dtype=jnp.bfloat16, **TINY)
  variables = drawn_variables(model, jnp.zeros((1, 32, 32, 3)))  # init's dtypes
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  for side in (32, 48):
    out = jax.jit(model.apply, compiler_options=QUICK)(variables, jnp.ones((3, side, side, 3)))
    assert out.shape == (3, 7) and out.dtype == jnp.float32


def test_paper_init_has_std_0_01_and_zero_bias():
  params = init(vgg.VGG(variant='A', image_size=32, width=0.5, fc_width=512),
                jnp.zeros((1, 32, 32, 3)))['params']
  kernel = np.asarray(params['conv4_1']['kernel'])
  assert abs(kernel.std() - 0.01) < 5e-4
  assert not np.any(np.asarray(params['conv4_1']['bias']))


def test_glorot_init_gives_fc1_the_dense_layers_fans_at_224():
  # FC1 is stored as a (7, 7, C, fc_width) conv kernel; the dense layer it
  # stands for has 7*7*C inputs and fc_width outputs. Flax's conv Glorot would
  # count 7*7*fc_width outputs: a std of 0.0084 here instead of 0.0234.
  model = vgg.VGG(variant='A', image_size=224, width=1 / 8, fc_width=512, weight_init='glorot')
  params = init(model, jnp.zeros((1, 224, 224, 3)))['params']
  fc1 = np.asarray(params['fc1']['kernel'])
  assert fc1.shape == (7, 7, 64, 512)
  np.testing.assert_allclose(fc1.std(), np.sqrt(2 / (7 * 7 * 64 + 512)), rtol=0.01)
  # Convs keep their receptive-field fans, dense layers theirs.
  conv = np.asarray(params['conv4_1']['kernel'])  # 3x3, 32 -> 64
  np.testing.assert_allclose(conv.std(), np.sqrt(2 / (9 * 32 + 9 * 64)), rtol=0.02)
  fc2 = np.asarray(params['fc2']['kernel'])
  np.testing.assert_allclose(fc2.std(), np.sqrt(2 / (512 + 512)), rtol=0.02)


def test_train_flops_count_every_conv_and_dense_layer_three_times():
  # VGG-D at width 1/2 on 32x32 (issue #15's 12 % run), by hand: positions x
  # 3 x 3 x fan-in x fan-out per conv (maps 32, 16, 8, 4, 2), then FC 256-128-128-10.
  convs = (1024 * 9 * (3 * 32 + 32 * 32) + 256 * 9 * (32 * 64 + 64 * 64)
           + 64 * 9 * (64 * 128 + 2 * 128 * 128) + 16 * 9 * (128 * 256 + 2 * 256 * 256)
           + 4 * 9 * 3 * 256 * 256)
  macs = convs + 256 * 128 + 128 * 128 + 128 * 10
  model = vgg.VGG(variant='D', width=0.5, fc_width=128, num_classes=10, image_size=32)
  assert summary.train_flops_per_image(model) == 3 * 2 * macs == 472_751_616


def test_summary_cli_prints_layers_and_total(capsys):
  text = summary.summary(vgg.VGG(variant='D'))
  assert '138,357,544' in text and 'conv5_3' in text and '15.47 GMACs' in text
  table = summary.table2()
  assert all(f'{n:,}' in table for n in PAPER_PARAMS.values())


def test_plot_writes_a_png(tmp_path):
  from matplotlib import image  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'vgg.png'
  summary.plot(vgg.VGG(variant='C', image_size=32, batch_norm=True, **TINY), str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  pixels = image.imread(str(path))
  assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100


def _stage(convs):
  return convs + ['maxpool']


HEAD = ['FC-4096', 'FC-4096', 'FC-1000', 'soft-max']
INPUT = 'input (224x224 RGB image)'


def test_architecture_labels_read_like_table1():
  """The picture's labels are the paper's column for C: the 1x1 convs show."""
  labels = summary.architecture_labels(vgg.VGG(variant='C'))
  assert labels == ([INPUT] + _stage(['conv3-64'] * 2) + _stage(['conv3-128'] * 2)
                    + _stage(['conv3-256'] * 2 + ['conv1-256'])
                    + _stage(['conv3-512'] * 2 + ['conv1-512'])
                    + _stage(['conv3-512'] * 2 + ['conv1-512']) + HEAD)
  assert [l for l in labels if l.startswith('conv1-')] == [
      'conv1-256', 'conv1-512', 'conv1-512']


def test_architecture_labels_show_lrn_and_pools():
  a_lrn = summary.architecture_labels(vgg.VGG(variant='A-LRN'))
  assert a_lrn[:4] == [INPUT, 'conv3-64', 'LRN', 'maxpool']
  assert a_lrn.count('LRN') == 1
  assert 'LRN' not in summary.architecture_labels(vgg.VGG(variant='A'))
  d = summary.architecture_labels(vgg.VGG(variant='D'))
  assert d.count('maxpool') == 5 and d[-5:] == ['maxpool'] + HEAD
  assert len([l for l in d if l.startswith(('conv', 'FC'))]) == 16


def test_architecture_labels_follow_the_knobs():
  model = vgg.VGG(variant='B', depths=(1,) * 5, kernel_size=5, width=0.25,
                  head='gap', fc_width=256, num_classes=10, image_size=32)
  assert summary.architecture_labels(model) == (
      ['input (32x32 RGB image)'] + _stage(['conv5-16']) + _stage(['conv5-32'])
      + _stage(['conv5-64']) + _stage(['conv5-128']) + _stage(['conv5-128'])
      + ['global avgpool', 'FC-256', 'FC-10', 'soft-max'])


@pytest.mark.slow  # starts the command
def test_cli_prints_and_draws_and_imports_define_no_flags(tmp_path):
  """`python -m vgg_jax.model` works; importing the library defines no flags.

  A-LRN checks that the summary finds layers of the `__main__` copy of the model.
  """
  code = ('from absl import flags; import vgg_jax.model, vgg_jax.summary; '
          'assert "variant" not in flags.FLAGS')
  subprocess.run([sys.executable, '-c', code], check=True)
  path = tmp_path / 'a.png'
  out = subprocess.run(
      [sys.executable, '-m', 'vgg_jax.model', '--variant', 'A-LRN', '--plot', str(path)],
      check=True, capture_output=True, text=True).stdout
  assert '\nlrn ' in out and '132,863,336' in out and path.read_bytes()
  missing = tmp_path / 'no_such_dir' / 'c.png'
  proc = subprocess.run([sys.executable, '-m', 'vgg_jax.model', '--plot', str(missing)],
                        capture_output=True, text=True)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
      f'vgg_jax.model: error: --plot={missing}: the directory {missing.parent} does not '
      'exist; create it or draw elsewhere')
