"""Imports trained VGG weights from Keras and torchvision into `vgg_jax.model.VGG`.

Both references build configs D and E (torchvision also A and B, with and without
BatchNorm), so their ImageNet weights give checked starting points and let the
forward pass be tested layer for layer against independent implementations.

    variables, kwargs = from_keras(keras.applications.VGG16())
    logits = VGG(**kwargs).apply(variables, images)  # keras-preprocessed NHWC

    variables = from_torchvision(torchvision.models.vgg16_bn().state_dict())
    logits = VGG(variant='D', batch_norm=True).apply(variables, images)

Both return flax variables of float32 jax arrays: {'params': ...}, plus
{'batch_stats': ...} for torchvision's `_bn` models. Each checks every shape
against the model it targets and raises a one-line ValueError on a mismatch.
Neither library is imported here: they are only needed to produce the weights.

`python -m vgg_jax.convert --torchvision=FILE.pth | --keras=VGG16 --config=...
--workdir=DIR` writes them as a run at step 0 (`vgg_jax.train.start_run_from`),
their library's preprocessing folded into conv1_1 (`for_rgb_input`), for
`vgg_jax.evaluate`, `config.init_from` and fine-tuning.

A downloaded `.pth` file is read with `load_torch_file`, which unpickles
nothing but tensors and containers (`torch.load(..., weights_only=True)`): a
pickle can run any code, so a file from elsewhere is never unpickled whole.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vgg_jax import model as vgg
from vgg_jax import summary

# The configs the reference libraries build; C has as many convs as D, so it
# cannot be told apart by depth and neither library has it anyway.
REFERENCE_VARIANTS = ('A', 'B', 'D', 'E')


def _variant_for(num_convs: int) -> Optional[str]:
  """The reference config with this many conv layers, if any."""
  by_depth = {len(vgg.resolve_layers(v)): v for v in REFERENCE_VARIANTS}
  return by_depth.get(num_convs)


def _numpy(value) -> np.ndarray:
  """A float32 array from a numpy array or a torch tensor (torch not imported)."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def _conv_params(kernels, biases, variant: Optional[str], source: str):
  """Names HWIO conv kernels (and biases, None for none) in order as ours.

  Returns the params dict and the variant, inferred from the number of convs
  when not given, so a checkpoint of the wrong depth fails here with the fix.
  """
  guess = _variant_for(len(kernels))
  variant = variant or guess
  if variant is None:
    raise ValueError(
        f'{source} has {len(kernels)} conv layers, which matches no VGG config '
        f'({", ".join(f"{v}: {len(vgg.resolve_layers(v))}" for v in REFERENCE_VARIANTS)})')
  names = [spec.name for spec in vgg.resolve_layers(variant)]
  if len(names) != len(kernels):
    hint = f"use variant='{guess}'" if guess else 'check the checkpoint'
    raise ValueError(
        f'{source} has {len(kernels)} conv layers but variant {variant!r} has '
        f'{len(names)}: {hint}')
  params = {}
  for name, kernel, bias in zip(names, kernels, biases):
    params[name] = {'kernel': kernel}
    if bias is not None:
      params[name]['bias'] = bias
  return params, variant


def _checked(variables, model: vgg.VGG, source: str):
  """`variables` as jax arrays, if they have exactly the tree `model.init` makes.

  Raises ValueError naming the first mismatching variable otherwise. Arrays
  are moved to the device once here rather than on every `apply`, where
  the transposed numpy views would also be copied each time. Contiguous
  arrays are copied first: on CPU, jax aliases large contiguous numpy buffers
  (even through `jnp.array`), which may be the torch tensors themselves, and
  a later `load_state_dict` would overwrite them under us.
  """
  expected = traverse_util.flatten_dict(summary.abstract_variables(model), sep='/')
  got = traverse_util.flatten_dict(variables, sep='/')
  for path in sorted(expected.keys() | got.keys()):
    want = expected[path].shape if path in expected else None
    have = got[path].shape if path in got else None
    if want != have:
      kind = ('is missing' if have is None else 'is not in the model' if want is None
              else f'has shape {have}, expected {want}')
      raise ValueError(
          f'{source}: {path} {kind} for VGG(variant={model.variant!r}, '
          f'batch_norm={model.batch_norm}, num_classes={model.num_classes}, '
          f'image_size={model.image_size}); check the variant and batch_norm')
  return jax.tree.map(
      lambda x: jnp.asarray(x.copy() if x.flags.c_contiguous else x), variables)


def _fc1_kernel(matrix: np.ndarray, channels: int, channel_major: bool) -> np.ndarray:
  """FC1's (in, out) matrix as our (w, w, C, out) conv kernel.

  Keras flattens the last NHWC map row-major over (h, w, c); torchvision
  flattens NCHW, i.e. over (c, h, w), so its rows are permuted to match.
  Returns a view where possible: the one copy of these 400 MB is made later.
  """
  size_in, size_out = matrix.shape
  window = int(round((size_in // channels) ** 0.5))
  if window * window * channels != size_in:
    raise ValueError(
        f'fc1 takes {size_in} inputs, not a square map of {channels} channels')
  if channel_major:
    # matrix.T is torch's contiguous (out, in) weight, so reshaping it is free.
    return matrix.T.reshape(size_out, channels, window, window).transpose(2, 3, 1, 0)
  return matrix.reshape(window, window, channels, size_out)


def from_keras(keras_model) -> tuple[dict[str, Any], dict[str, Any]]:
  """Variables and VGG kwargs from `keras.applications.VGG16` or `VGG19`.

  The keras model must be built with include_top=True: our head needs fc1, fc2
  and predictions. Feed our model what the keras model is fed, i.e. NHWC images
  already through `keras.applications.vgg16.preprocess_input` (BGR, mean
  subtracted), which keras keeps outside the graph. Our VGG returns logits:
  keras' default classifier_activation='softmax' gives their softmax.

  Args:
    keras_model: a keras.applications VGG16/VGG19, any weights and num classes.

  Returns:
    (variables, kwargs) such that `VGG(**kwargs).apply(variables, x)` matches
    `keras_model(x)` up to the final activation; kwargs holds variant ('D' for
    13 convs, 'E' for 16), num_classes and image_size (32 * fc1's window).
  """
  layers = {layer.name: layer for layer in keras_model.layers}
  missing = [n for n in ('fc1', 'fc2', 'predictions') if n not in layers]
  if missing:
    raise ValueError(
        f'keras model has no {", ".join(missing)} layer: build it with '
        'include_top=True (our VGG needs the classifier head)')
  convs = [layer for layer in keras_model.layers
           if layer.name.startswith('block') and '_conv' in layer.name]
  weights = [[_numpy(w) for w in layer.get_weights()] for layer in convs]
  params, variant = _conv_params([w[0] for w in weights], [w[1] for w in weights],
                                 None, 'keras model')
  fc1, fc2, fc3 = ([_numpy(w) for w in layers[n].get_weights()]
                   for n in ('fc1', 'fc2', 'predictions'))
  channels = weights[-1][0].shape[-1]
  fc1_kernel = _fc1_kernel(fc1[0], channels, channel_major=False)
  params['fc1'] = {'kernel': fc1_kernel, 'bias': fc1[1]}
  params['fc2'] = {'kernel': fc2[0], 'bias': fc2[1]}
  params['fc3'] = {'kernel': fc3[0], 'bias': fc3[1]}
  kwargs = dict(variant=variant, num_classes=fc3[0].shape[-1],
                image_size=32 * fc1_kernel.shape[0])
  return _checked({'params': params}, vgg.VGG(**kwargs), 'keras model'), kwargs


# What each reference's networks were trained on, against vgg_jax's input (RGB
# pixels in 0-255 minus data.mean_rgb, as its pipelines make it). Keras (caffe
# mode): BGR pixels minus the ImageNet mean pixel; torchvision: (RGB / 255 -
# mean) / std per channel.
KERAS_MEAN_RGB = (123.68, 116.779, 103.939)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
SOURCES = ('keras', 'torchvision')


def for_rgb_input(variables: dict[str, Any], source: str) -> tuple[dict[str, Any], tuple]:
  """(variables, mean_rgb) that take vgg_jax's input where `variables` (from
  `from_keras` or `from_torchvision`) took their library's preprocessing:
  conv1_1's input channels reversed (Keras feeds BGR) or divided by 255 std
  (torchvision), and the mean pixel to set as `data.mean_rgb`. Exact up to
  float32 rounding, so the paper's evaluations and the training pipeline feed
  imported weights as they feed trained ones (`vgg_jax.train.start_run_from`).
  """
  if source not in SOURCES:
    raise ValueError(f'unknown source {source!r}: choose one of {", ".join(SOURCES)}')
  kernel = np.asarray(variables['params']['conv1_1']['kernel'])  # (k, k, 3, C)
  if source == 'keras':
    kernel, mean_rgb = kernel[:, :, ::-1, :], KERAS_MEAN_RGB
  else:
    scale = 255.0 * np.asarray(TORCHVISION_STD, np.float64)
    kernel = (kernel / scale[None, None, :, None]).astype(np.float32)
    mean_rgb = tuple(float(255.0 * m) for m in TORCHVISION_MEAN)
  params = dict(variables['params'])
  params['conv1_1'] = {**params['conv1_1'], 'kernel': jnp.asarray(np.ascontiguousarray(kernel))}
  return {**variables, 'params': params}, mean_rgb


def load_torch_file(path: str) -> Mapping[str, Any]:
  """A PyTorch state_dict file (`torch.save(model.state_dict(), path)`), safely.

  `weights_only=True` restricts unpickling to tensors, primitive types and
  containers, so a file crafted to run code when loaded raises instead.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file; pass a state_dict saved with '
                            'torch.save(model.state_dict(), path)')
  import torch  # pylint: disable=import-outside-toplevel
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except torch.serialization.pickle.UnpicklingError as e:
    raise ValueError(f'{path} holds objects besides tensors, which unpickling would run as '
                     'code: only plain state_dicts are loaded; if the file is yours, re-save '
                     'it with torch.save(model.state_dict(), path)') from e


def from_torchvision(state_dict: Mapping[str, Any],
                     variant: Optional[str] = None) -> dict[str, Any]:
  """Variables from a torchvision vgg11/13/16/19 or `_bn` state_dict.

  Use them with `VGG(variant, num_classes=<rows of classifier.6.weight>,
  batch_norm='batch_stats' in variables)` on NHWC images normalised as
  torchvision expects. Torchvision's AdaptiveAvgPool2d((7, 7)) is the identity
  when the last map is 7x7, so outputs are equal for inputs of 224 to 255
  pixels; elsewhere torchvision resamples the map and we evaluate densely.

  Args:
    state_dict: `model.state_dict()`; values are torch tensors or numpy arrays.
    variant: 'A', 'B', 'D' or 'E'; None infers it from the number of convs.

  Returns:
    {'params': ...}, plus {'batch_stats': ...} when the checkpoint has
    BatchNorm. Our BN convs have no bias, so torchvision's conv bias b is folded
    into the running mean (mean - b), which is exact: BN subtracts the mean.
  """
  features = {}
  for key, value in state_dict.items():
    if key.startswith('features.'):
      _, index, field = key.split('.')
      features.setdefault(int(index), {})[field] = value
  # Sequential order: each conv (4-D weight) is followed by its BatchNorm, if any.
  convs, norms = [], []
  for index in sorted(features):
    layer = features[index]
    if 'running_mean' in layer:
      norms.append({k: _numpy(v) for k, v in layer.items() if k != 'num_batches_tracked'})
    elif layer['weight'].ndim == 4:
      convs.append({k: _numpy(v).transpose(2, 3, 1, 0) if k == 'weight' else _numpy(v)
                    for k, v in layer.items()})
  batch_norm = bool(norms)
  if batch_norm and len(norms) != len(convs):
    raise ValueError(f'state_dict has {len(convs)} convs but {len(norms)} BatchNorms')
  biases = [None if batch_norm else c['bias'] for c in convs]
  params, variant = _conv_params([c['weight'] for c in convs], biases, variant,
                                 'torchvision state_dict')
  variables = {'params': params}
  if batch_norm:
    stats = {}
    for spec, conv, norm in zip(vgg.resolve_layers(variant), convs, norms):
      name = spec.name.replace('conv', 'bn')
      params[name] = {'scale': norm['weight'], 'bias': norm['bias']}
      stats[name] = {'mean': norm['running_mean'] - conv.get('bias', 0.0),
                     'var': norm['running_var']}
    variables['batch_stats'] = stats

  def linear(i):
    return (_numpy(state_dict[f'classifier.{i}.weight']).T,
            _numpy(state_dict[f'classifier.{i}.bias']))

  (fc1, b1), (fc2, b2), (fc3, b3) = linear(0), linear(3), linear(6)
  channels = convs[-1]['weight'].shape[-1]
  params['fc1'] = {'kernel': _fc1_kernel(fc1, channels, channel_major=True), 'bias': b1}
  params['fc2'] = {'kernel': fc2, 'bias': b2}
  params['fc3'] = {'kernel': fc3, 'bias': b3}
  model = vgg.VGG(variant=variant, num_classes=fc3.shape[-1], batch_norm=batch_norm,
                  image_size=32 * params['fc1']['kernel'].shape[0])
  return _checked(variables, model, 'torchvision state_dict')


def run_config(variables: dict[str, Any], mean_rgb: tuple, config) -> Any:
  """`config` with its model set to the network of `variables` (variant, batch
  norm, full width, FC width) and its mean pixel to `mean_rgb` (both from
  `for_rgb_input`), for `vgg_jax.train.start_run_from`."""
  params = variables['params']
  config.model.update(variant=_variant_for(sum(k.startswith('conv') for k in params)),
                      batch_norm='batch_stats' in variables, width=1.0, head='fc',
                      fc_width=int(params['fc2']['bias'].shape[0]))
  config.data.mean_rgb = tuple(mean_rgb)
  # The imported weights are the trained run a fine-tuning config (the paper's
  # S = 384) asks to start from: training the new run resumes them.
  config.requires_init_from = False
  return config


if __name__ == '__main__':
  # The command; its flags and the training service it writes the run with are
  # only here, so that importing the library defines and imports neither.
  import sys
  from absl import app, flags
  from ml_collections import config_flags
  from vgg_jax import cli, errors, train

  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'The new run\'s config (e.g. configs/imagenet.py:D): its model and '
      'mean pixel are set to those of the weights.')
  flags.DEFINE_string('torchvision', None, 'A torchvision VGG state_dict file (.pth).')
  flags.DEFINE_enum('keras', None, ['VGG16', 'VGG19'], 'A keras.applications VGG.')
  flags.DEFINE_string('keras_weights', 'imagenet',
                      "--keras's weights: 'imagenet' (Keras downloads them) or a file.")
  flags.DEFINE_string('workdir', None, 'The new run\'s directory.')

  def main(argv):
    del argv
    f = flags.FLAGS
    try:
      if (f.torchvision is None) == (f.keras is None) or not f.workdir or _CONFIG.value is None:
        raise ValueError('give --config=FILE, --workdir=DIR and one of --torchvision=FILE.pth '
                         'or --keras=VGG16|VGG19')
      if f.torchvision:
        source, variables = 'torchvision', from_torchvision(load_torch_file(f.torchvision))
      else:
        import keras  # pylint: disable=g-import-not-at-top
        keras_model = getattr(keras.applications, f.keras)(weights=f.keras_weights)
        source, (variables, _) = 'keras', from_keras(keras_model)
      variables, mean_rgb = for_rgb_input(variables, source)
      config = run_config(variables, mean_rgb, _CONFIG.value)
      train.start_run_from(variables, config, f.workdir)
    except errors.USER_ERRORS as e:
      sys.exit(cli.error_line('vgg_jax.convert', e))
    print(f'wrote {f.workdir}: VGG-{config.model.variant} from {source} as a run at step 0; '
          f'python -m vgg_jax.evaluate --workdir={f.workdir} evaluates it')

  app.run(main, flags_parser=cli.flags_parser('vgg_jax.convert', _CONFIG))
