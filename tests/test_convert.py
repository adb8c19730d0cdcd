"""Imported weights reproduce the reference networks' outputs exactly.

Each reference model gets random, non-trivial weights (random biases, and for
BatchNorm random running statistics and affine parameters, so no layer is the
identity), is converted, and must give the same logits as our VGG on the same
224x224 input. Equal logits pin down every transpose and the FC1 permutation:
a wrong layout changes the output by O(1) of its scale, while float32 rounding
differences between libraries stay near 1e-6 of it.
"""

import os

import jax
import numpy as np
import pytest

from vgg_jax import convert
from vgg_jax.model import VGG

# torchvision's `cfgs`: ints are conv widths, 'M' a 2x2 max-pool.
TORCHVISION_CFGS = {
    'A': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'B': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'D': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
          512, 512, 512, 'M'],
    'E': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512,
          'M', 512, 512, 512, 512, 'M'],
}


def assert_logits_close(ours, reference):
  """Equal to 1e-4 of the logits' scale.

  Elementwise relative error is meaningless for logits near zero, so the
  absolute tolerance is 1e-4 of the largest logit; summation order over
  25088-long dot products and 13-16 convs differs between libraries by ~1e-6.
  """
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape
  scale = np.abs(reference).max()
  assert scale > 0
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * scale)


def random_images(batch=1, size=224, seed=0):
  # One image: jax 0.10's XLA CPU fuses the whole batch>1 network into one
  # slow YNN fusion (20x slower; XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
  # avoids it), and a batch adds nothing to a per-image weight mapping.
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def apply(variables, x, **kwargs):
  # Full float32 precision wherever the suite runs (GPUs may default to TF32).
  # Op by op, not jitted: each layer's shape compiles once per worker and the
  # networks here share most of them (a jit of each whole network: 1.3-2 s).
  with jax.default_matmul_precision('highest'):
    return VGG(**kwargs).apply(variables, x)


# --------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------


# VGG16 as ImageNet has it (224 inputs, FC1 on a 7x7 map, 1000 classes); VGG19
# at 64 (a 2x2 map: FC1's permutation still matters) and 10 classes, 15 times
# cheaper to build and run.
@pytest.mark.parametrize('name, variant, image_size, num_classes', [
    pytest.param('VGG16', 'D', 224, 1000, marks=pytest.mark.slow),  # full size
    ('VGG19', 'E', 64, 10)])
def test_keras_outputs_match(name, variant, image_size, num_classes):
  import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  # Glorot-uniform kernels; zero biases, so give them values to be checked too.
  reference = getattr(keras.applications, name)(
      weights=None, input_shape=(image_size, image_size, 3), classes=num_classes,
      classifier_activation=None)
  rng = np.random.default_rng(1)
  for layer in reference.layers:
    if getattr(layer, 'bias', None) is not None:
      layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
  x = random_images(size=image_size)

  variables, kwargs = convert.from_keras(reference)

  assert kwargs == dict(variant=variant, num_classes=num_classes, image_size=image_size)
  assert_logits_close(apply(variables, x, **kwargs), reference(x, training=False))


def test_keras_weights_take_vgg_jax_s_rgb_input():
  """Folded for RGB pixels minus `data.mean_rgb`, the imported net gives what the
  Keras net gives on Keras's own preprocessing (BGR minus the mean pixel)."""
  import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  reference = keras.applications.VGG19(weights=None, input_shape=(64, 64, 3), classes=10,
                                        classifier_activation=None)
  pixels = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
  expected = reference(keras.applications.vgg19.preprocess_input(pixels.copy()), training=False)

  variables, kwargs = convert.from_keras(reference)
  variables, mean_rgb = convert.for_rgb_input(variables, 'keras')

  assert_logits_close(apply(variables, pixels - np.float32(mean_rgb), **kwargs), expected)


def test_torchvision_weights_take_vgg_jax_s_rgb_input():
  """conv1_1 folded: on RGB pixels minus `data.mean_rgb` it computes what the
  original computes on torchvision's input, (pixels / 255 - mean) / std."""
  rng = np.random.default_rng(3)
  kernel = rng.normal(size=(3, 3, 3, 8)).astype(np.float32)
  params = {'conv1_1': {'kernel': kernel, 'bias': np.zeros(8, np.float32)}, 'fc3': {}}
  folded, mean_rgb = convert.for_rgb_input({'params': params}, 'torchvision')
  pixels = rng.uniform(0, 255, (2, 9, 9, 3)).astype(np.float32)
  normalised = (pixels / 255 - np.float32([0.485, 0.456, 0.406])) / np.float32(
      [0.229, 0.224, 0.225])
  conv = lambda x, k: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(
      conv(pixels - np.float32(mean_rgb), folded['params']['conv1_1']['kernel']),
      conv(normalised, kernel), rtol=1e-5, atol=1e-4)
  assert folded['params']['fc3'] is params['fc3'] and params['conv1_1']['kernel'] is kernel


def test_keras_without_top_is_refused():
  import keras  # pylint: disable=import-outside-toplevel
  headless = keras.applications.VGG16(weights=None, include_top=False,
                                      input_shape=(32, 32, 3))
  with pytest.raises(ValueError, match='include_top=True'):
    convert.from_keras(headless)


# --------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------


def torchvision_vgg(variant, batch_norm):
  """torchvision's VGG, same module names, randomised so no layer is trivial."""
  import torch  # pylint: disable=import-outside-toplevel
  nn = torch.nn

  class TorchVGG(nn.Module):

    def __init__(self):
      super().__init__()
      layers, channels = [], 3
      for v in TORCHVISION_CFGS[variant]:
        if v == 'M':
          layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
          continue
        layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
        if batch_norm:
          layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        channels = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
          nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
          nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
          nn.Linear(4096, 1000))

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(torch.flatten(x, 1))

  torch.set_num_threads(2)
  torch.manual_seed(0)
  # Built on the meta device: initialised once, by the loop below, not twice.
  with torch.device('meta'):
    net = TorchVGG()
  net = net.to_empty(device='cpu')
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        # He init keeps activations O(1) through 16 layers (uniform: faster
        # to draw than normal for 138M weights); biases nonzero.
        nn.init.kaiming_uniform_(module.weight, nonlinearity='relu')
        nn.init.normal_(module.bias, 0.0, 0.1)
      elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.5, 1.5)
        nn.init.normal_(module.bias, 0.0, 0.1)
        module.running_mean.normal_(0.0, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.num_batches_tracked.zero_()
  return net.eval(), torch


def torchvision_shapes(variant, batch_norm=False):
  """A torchvision state_dict of the right shapes, all zeros, costing no memory."""
  shapes, index, channels = {}, 0, 3
  for v in TORCHVISION_CFGS[variant]:
    if v == 'M':
      index += 1
      continue
    shapes[f'features.{index}.weight'] = (v, channels, 3, 3)
    shapes[f'features.{index}.bias'] = (v,)
    if batch_norm:
      index += 1
      for field in ('weight', 'bias', 'running_mean', 'running_var'):
        shapes[f'features.{index}.{field}'] = (v,)
      shapes[f'features.{index}.num_batches_tracked'] = ()
    index += 2  # the conv (or BN) and its ReLU
    channels = v
  for i, (n_out, n_in) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
    shapes[f'classifier.{i}.weight'] = (n_out, n_in)
    shapes[f'classifier.{i}.bias'] = (n_out,)
  return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.mark.slow  # full-size networks: torchvision's head needs 224 inputs
@pytest.mark.parametrize('variant, batch_norm, as_numpy, pass_variant', [
    ('A', False, False, True),
    ('B', False, True, True),
    ('D', False, False, False),
    ('E', False, True, True),
    ('A', True, True, True),
    ('B', True, False, True),
    ('D', True, True, True),
    ('E', True, False, False),
])
def test_torchvision_outputs_match(variant, batch_norm, as_numpy, pass_variant):
  net, torch = torchvision_vgg(variant, batch_norm)
  x = random_images()
  with torch.no_grad():
    reference = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  state_dict = net.state_dict()
  # Keeps the all-zeros stand-in used by the error tests below honest.
  assert {k: tuple(v.shape) for k, v in state_dict.items()} == {
      k: v.shape for k, v in torchvision_shapes(variant, batch_norm).items()}
  if as_numpy:
    state_dict = {k: v.numpy() for k, v in state_dict.items()}

  variables = convert.from_torchvision(state_dict, variant if pass_variant else None)
  # The variables must not alias the checkpoint (jax zero-copies large
  # contiguous numpy buffers on CPU).
  for value in state_dict.values():
    value[...] = 0
  del net, state_dict

  assert ('batch_stats' in variables) == batch_norm
  ours = apply(variables, x, variant=variant, batch_norm=batch_norm)
  assert_logits_close(ours, reference)


def test_a_run_config_takes_the_imported_network_and_its_mean_pixel():
  from configs import imagenet  # pylint: disable=import-outside-toplevel
  from vgg_jax import summary, train  # pylint: disable=import-outside-toplevel
  variables = convert.from_torchvision(torchvision_shapes('E', batch_norm=True))
  variables, mean_rgb = convert.for_rgb_input(variables, 'torchvision')
  config = convert.run_config(variables, mean_rgb, imagenet.get_config('A,S=384'))
  train.validate(config)  # S = 384 fine-tunes: from the imported weights
  assert (config.model.variant, config.model.batch_norm) == ('E', True)
  np.testing.assert_allclose(config.data.mean_rgb, (123.675, 116.28, 103.53))
  model = VGG.from_config(config.model, 1000, config.data.image_size)
  assert jax.tree.map(np.shape, summary.abstract_variables(model)) == jax.tree.map(
      np.shape, variables)


def test_torchvision_wrong_variant_names_the_right_one():
  with pytest.raises(ValueError,
                     match=r"13 conv layers but variant 'A' has 8: use variant='D'"):
    convert.from_torchvision(torchvision_shapes('D'), 'A')


def test_torchvision_same_depth_wrong_shape_names_the_layer():
  # C has D's number of convs, but 1x1 kernels ending stages 3-5.
  with pytest.raises(ValueError, match=r'conv3_3/kernel has shape \(3, 3, 256, 256\), '
                                       r'expected \(1, 1, 256, 256\)'):
    convert.from_torchvision(torchvision_shapes('D'), 'C')


@pytest.mark.slow  # starts the command
def test_the_command_names_what_it_needs_in_one_line(tmp_path):
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  proc = subprocess.run([sys.executable, '-m', 'vgg_jax.convert', '--config=configs/imagenet.py:D',
                         f'--workdir={tmp_path / "run"}'], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
      'vgg_jax.convert: error: give --config=FILE, --workdir=DIR and one of '
      '--torchvision=FILE.pth or --keras=VGG16|VGG19')
  assert not (tmp_path / 'run').exists()
