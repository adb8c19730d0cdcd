"""The VGG family (Simonyan & Zisserman, ICLR 2015) as one parameterised Flax module.

Every configuration of Table 1 is a row of `CONFIGS`; every ablation of the paper
(depth, kernel size, 1x1 convs, LRN) is an attribute of `VGG`, so a sweep changes
config values, never code.

Parameter names follow the paper and Keras: `conv{stage}_{i}`, `fc1`, `fc2`, `fc3`.
FC1 is stored as a conv kernel of shape (w, w, C, fc_width) with w = image_size // 32
(7 at 224), so the same weights serve the classic crop (the kernel covers the whole
last map) and the paper's dense evaluation on a larger uncropped image (FC1 slides
as a 7x7 conv, FC2/FC3 act as 1x1 convs, and the class score map is averaged).

Run `python -m vgg_jax.model --variant D` for a Keras-style summary, `--all` for
Table 2, `--plot FILE.png` for a picture of the architecture; the code behind them
is in `vgg_jax.summary`, so this module holds the network only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from vgg_jax import cpu_ops, pooling
from vgg_jax.batch_norm import batch_norm_relu

# Per stage: (number of 3x3 convs, whether a 1x1 conv ends the stage).
# Widths are fixed across the family (64, 128, 256, 512, 512); depth is what varies.
STAGE_WIDTHS = (64, 128, 256, 512, 512)
CONFIGS = {
    'A': dict(depths=(1, 1, 2, 2, 2), conv1x1=False, lrn=False),
    'A-LRN': dict(depths=(1, 1, 2, 2, 2), conv1x1=False, lrn=True),
    'B': dict(depths=(2, 2, 2, 2, 2), conv1x1=False, lrn=False),
    'C': dict(depths=(2, 2, 2, 2, 2), conv1x1=True, lrn=False),
    'D': dict(depths=(2, 2, 3, 3, 3), conv1x1=False, lrn=False),
    'E': dict(depths=(2, 2, 4, 4, 4), conv1x1=False, lrn=False),
}
# C's 1x1 convs sit at the end of stages 3-5 only (Table 1).
CONV1X1_STAGES = (3, 4, 5)
KERNEL_SIZES = (1, 3, 5, 7)
HEADS = ('fc', 'gap')
INITS = ('paper', 'glorot')
NUM_POOLS = len(STAGE_WIDTHS)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One conv layer of the resolved architecture."""
  name: str
  stage: int
  kernel_size: int
  features: int


def resolve_layers(
    variant: str = 'D',
    depths: Optional[Sequence[int]] = None,
    kernel_size: int = 3,
    conv1x1: Optional[bool] = None,
    width: float = 1.0,
) -> list[LayerSpec]:
  """The conv layers a configuration builds, in order.

  `depths` overrides the variant's number of k x k convs per stage; `conv1x1`
  overrides whether stages 3-5 end with a 1x1 conv (config C's trick).
  """
  if variant not in CONFIGS:
    raise ValueError(
        f'unknown VGG variant {variant!r}: choose one of {", ".join(CONFIGS)}')
  if kernel_size not in KERNEL_SIZES:
    raise ValueError(
        f'kernel_size={kernel_size} is not supported: use one of {KERNEL_SIZES}')
  row = CONFIGS[variant]
  depths = tuple(row['depths'] if depths is None else depths)
  if len(depths) != NUM_POOLS or any(d < 1 for d in depths):
    raise ValueError(
        f'depths={depths} must give five stages of at least one conv each, '
        'e.g. (2, 2, 3, 3, 3)')
  conv1x1 = row['conv1x1'] if conv1x1 is None else conv1x1
  if width <= 0:
    raise ValueError(f'width={width} must be a positive channel multiplier')
  layers = []
  for stage, (depth, base) in enumerate(zip(depths, STAGE_WIDTHS), start=1):
    features = max(1, int(round(base * width)))
    kernels = [kernel_size] * depth
    if conv1x1 and stage in CONV1X1_STAGES:
      kernels.append(1)
    for i, k in enumerate(kernels, start=1):
      layers.append(LayerSpec(f'conv{stage}_{i}', stage, k, features))
  return layers


def config_layers(model_cfg) -> list[LayerSpec]:
  """The conv layers of a config's `model` group (a ConfigDict or its JSON form)."""
  return resolve_layers(model_cfg['variant'], model_cfg['depths'], model_cfg['kernel_size'],
                        model_cfg['conv1x1'], model_cfg['width'])


class LocalResponseNorm(nn.Module):
  """Cross-channel LRN of AlexNet §3.3, as used by config A-LRN.

  b_c = a_c / (bias + alpha * sum_{|c'-c| <= depth_radius} a_c'^2) ** beta,
  with alpha *not* divided by the window size: identical to
  `tf.nn.local_response_normalization` with the same arguments.
  """
  depth_radius: int = 2
  bias: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75

  @nn.compact
  def __call__(self, x):
    # Statistics in float32: squares of bf16 activations lose too much.
    x32 = x.astype(jnp.float32)
    window = 2 * self.depth_radius + 1
    sum_sq = lax.reduce_window(
        x32 * x32, 0.0, lax.add,
        window_dimensions=(1,) * (x.ndim - 1) + (window,),
        window_strides=(1,) * x.ndim,
        padding=((0, 0),) * (x.ndim - 1) + ((self.depth_radius,) * 2,))
    return (x32 * lax.pow(self.bias + self.alpha * sum_sq, -self.beta)).astype(x.dtype)


class ConvReLU(nn.Module):
  """`nn.Conv` (stride 1, with a bias) then a ReLU, as one operation, in the
  input's dtype (float32 or bfloat16; parameters float32).

  The parameters are nn.Conv's (names, shapes, initialisation), so checkpoints
  and imported weights do not tell them apart. On the CPU one oneDNN call each
  way (`cpu_ops.conv_bias_relu`): the bias and the ReLU cost no pass of their own.
  """
  features: int
  kernel_size: int
  padding: str
  kernel_init: Callable[..., Any]
  bias_init: Callable[..., Any]

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    return cpu_ops.conv_bias_relu(x, kernel.astype(x.dtype), bias, self.padding)


def num_classes_of(params: dict, head: str) -> int:
  """Classes a network's parameters score (its last FC layer's outputs)."""
  return int(params['fc3' if head == 'fc' else 'fc2']['bias'].shape[0])


def _initializers(init: str):
  if init == 'paper':
    # §3.1: zero-mean normal with std 1e-2 (the reference code's reading of
    # "10^-2 variance"), biases zero.
    return nn.initializers.normal(stddev=1e-2), nn.initializers.zeros
  if init == 'glorot':
    return nn.initializers.glorot_uniform(), nn.initializers.zeros
  raise ValueError(f'unknown weight_init {init!r}: choose one of {INITS}')


def _fc1_kernel_init(init: str):
  """FC1's kernel initialiser: the dense layer's, whatever shape stores it.

  FC1 is kept as a (w, w, C, fc_width) conv kernel, for which Flax's Glorot
  counts w*w*fc_width outputs: at 224 (w = 7) FC1 would start with a 2.8x too
  small std. The dense layer it stands for has w*w*C inputs and fc_width outputs.
  """
  if init == 'glorot':
    return nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform',
                                            in_axis=(0, 1, 2), out_axis=3)
  return _initializers(init)[0]


class VGG(nn.Module):
  """VGG network on NHWC images; returns class logits of shape (batch, num_classes).

  Attributes:
    variant: a row of Table 1: 'A', 'A-LRN', 'B', 'C', 'D' or 'E'.
    num_classes: size of the last layer.
    image_size: the training crop; fixes FC1's window (image_size // 32) for the
      'fc' head. Larger inputs are evaluated densely with the same weights.
    depths: k x k convs per stage, overriding the variant's (depth ablations).
    kernel_size: side of the stacked convs (3 in the paper; 5 or 7 for the
      "shallow net" ablation).
    conv1x1: end stages 3-5 with a 1x1 conv (C's trick); None keeps the variant's.
    lrn: LRN after the first conv; None keeps the variant's (on for 'A-LRN').
    batch_norm: BatchNorm after every conv (not in the paper).
    width: multiplier on every conv's channels (0.25 for a narrow net).
    fc_width: width of the hidden FC layers (4096 in the paper).
    head: 'fc' (the paper's three FC layers) or 'gap' (global average pool, one
      hidden FC layer of fc_width, classifier), for small images.
    dropout_rate: dropout before FC2 and FC3, as in the paper.
    weight_init: 'paper' (normal, std 0.01) or 'glorot'.
    dtype: compute dtype; parameters stay float32. On the CPU, bfloat16 runs
      oneDNN's bfloat16 convolutions where the CPU has them (`cpu_ops`).
    conv_fn: the convolution primitive (a `lax.conv_general_dilated` look-alike);
      None picks the fastest known for the backend (`cpu_ops.default_conv_fn`; on
      the CPU in float32 or bfloat16, without batch norm, each conv and its ReLU
      run as one operation, `ConvReLU`). One given is used as it is, with no fusion.
    pool_fn: 2x2 max pooling of an NHWC array; None picks the fastest known
      for the backend (`pooling.default_pool_fn`).
  """
  variant: str = 'D'
  num_classes: int = 1000
  image_size: int = 224
  depths: Optional[Sequence[int]] = None
  kernel_size: int = 3
  conv1x1: Optional[bool] = None
  lrn: Optional[bool] = None
  batch_norm: bool = False
  width: float = 1.0
  fc_width: int = 4096
  head: str = 'fc'
  dropout_rate: float = 0.5
  weight_init: str = 'paper'
  dtype: Any = jnp.float32
  conv_fn: Optional[Callable[..., Any]] = None
  pool_fn: Optional[Callable[[Any], Any]] = None

  @classmethod
  def from_config(cls, model_cfg, num_classes: int, image_size: int) -> 'VGG':
    """The network of a config's `model` group (a ConfigDict or its JSON form):
    the dtype named by a string, the depths a tuple as a module attribute must be."""
    kwargs = dict(model_cfg)
    try:
      kwargs['dtype'] = jnp.dtype(model_cfg['dtype'])
    except TypeError:
      raise ValueError(f"model.dtype={model_cfg['dtype']!r} is not a dtype: use 'float32' "
                       "or 'bfloat16'") from None
    if model_cfg['depths'] is not None:
      kwargs['depths'] = tuple(model_cfg['depths'])
    return cls(num_classes=num_classes, image_size=image_size, **kwargs)

  def layers(self) -> list[LayerSpec]:
    return resolve_layers(self.variant, self.depths, self.kernel_size,
                          self.conv1x1, self.width)

  @property
  def fc1_window(self) -> int:
    """Side of FC1's kernel: the last feature map's side at the training crop."""
    return self.image_size // 2**NUM_POOLS

  @property
  def fuse_conv_relu(self) -> bool:
    """Whether each conv and its ReLU run as one operation (`ConvReLU`): float32
    or bfloat16 with the CPU's convolutions (the default `conv_fn` on the CPU)."""
    return (self.conv_fn is None and cpu_ops.on_cpu()
            and jnp.dtype(self.dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)))

  @property
  def use_lrn(self) -> bool:
    """Whether LRN follows conv1_1: `lrn` if set, else the variant's (A-LRN)."""
    return CONFIGS[self.variant]['lrn'] if self.lrn is None else self.lrn

  def check_settings(self) -> None:
    """Every knob: the conv layers (`layers()`), the head and the classifier."""
    self.layers()
    if self.head not in HEADS:
      raise ValueError(f'unknown head {self.head!r}: choose one of {HEADS}')
    for name in ('fc_width', 'num_classes'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name}={getattr(self, name)} must be at least 1')
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(f'dropout_rate={self.dropout_rate} must be in [0, 1): the fraction '
                       'of FC activations dropped')
    _initializers(self.weight_init)

  def check_input(self, height: int, width: int) -> None:
    self.check_settings()
    if self.head == 'fc' and self.fc1_window < 1:
      raise ValueError(
          f'image_size={self.image_size} is too small for the fc head: five 2x2 '
          f'pools need at least {2**NUM_POOLS} pixels; use a larger crop or '
          "head='gap'")
    if self.image_size < 2**NUM_POOLS:
      raise ValueError(f'image_size={self.image_size} is too small: five 2x2 pools need at '
                       f'least {2**NUM_POOLS} pixels; use a larger crop')
    smallest = (self.fc1_window if self.head == 'fc' else 1) * 2**NUM_POOLS
    if min(height, width) < smallest:
      raise ValueError(
          f'input {height}x{width} is too small for this model: it needs at '
          f'least {smallest}x{smallest} (five 2x2 pools'
          + (f', then a {self.fc1_window}x{self.fc1_window} FC1 window)'
             if self.head == 'fc' else ')')
          + '; use larger images or a smaller image_size')

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_input(x.shape[1], x.shape[2])
    layers = self.layers()
    kernel_init, bias_init = _initializers(self.weight_init)
    conv_kwargs = dict(dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=kernel_init, bias_init=bias_init)
    conv_kwargs['conv_general_dilated'] = self.conv_fn or cpu_ops.default_conv_fn()
    pool = self.pool_fn or pooling.default_pool_fn()

    x = x.astype(self.dtype)
    stage = 1
    for spec in layers:
      if spec.stage != stage:
        x = pool(x)
        stage = spec.stage
      if self.fuse_conv_relu and not self.batch_norm:
        x = ConvReLU(spec.features, spec.kernel_size, 'SAME', kernel_init, bias_init,
                     name=spec.name)(x)
      else:
        x = nn.Conv(spec.features, (spec.kernel_size,) * 2, padding='SAME',
                    use_bias=not self.batch_norm, name=spec.name, **conv_kwargs)(x)
        if self.batch_norm:
          x = batch_norm_relu(x, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                              dtype=self.dtype, name=spec.name.replace('conv', 'bn'))
        else:
          x = nn.relu(x)
      if self.use_lrn and spec.name == 'conv1_1':
        x = LocalResponseNorm(name='lrn')(x)
    x = pool(x)

    dense = functools.partial(nn.Dense, **{k: v for k, v in conv_kwargs.items()
                                           if k != 'conv_general_dilated'})
    def dropout(x):
      if not train or self.dropout_rate == 0:
        return x
      return nn.Dropout(self.dropout_rate, deterministic=False)(
          x, rng=self.make_rng('dropout'))

    if self.head == 'gap':
      x = jnp.mean(x, axis=(1, 2))
      x = nn.relu(dense(self.fc_width, name='fc1')(x))
      x = dropout(x)
      return dense(self.num_classes, name='fc2')(x).astype(jnp.float32)

    # FC1 as a VALID conv: a single output position at the training crop, a
    # score map on larger images (dense evaluation, §3.2).
    w = self.fc1_window
    if self.fuse_conv_relu:
      x = ConvReLU(self.fc_width, w, 'VALID', _fc1_kernel_init(self.weight_init), bias_init,
                   name='fc1')(x)
    else:
      x = nn.relu(nn.Conv(self.fc_width, (w, w), padding='VALID', name='fc1',
                          **{**conv_kwargs, 'kernel_init': _fc1_kernel_init(self.weight_init)})(x))
    x = dropout(x)
    # Dense layers act on the channel axis, i.e. as 1x1 convs on the score map.
    x = dropout(nn.relu(dense(self.fc_width, name='fc2')(x)))
    x = dense(self.num_classes, name='fc3')(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def _main(argv, report):
  """The command line; `report` is `vgg_jax.summary`, which does the work."""
  del argv
  import os
  import sys
  from absl import flags
  from vgg_jax import cli, errors
  FLAGS = flags.FLAGS
  try:
    if FLAGS.all:
      print(report.table2(FLAGS.num_classes, FLAGS.image_size))
      return
    model = VGG(variant=FLAGS.variant, num_classes=FLAGS.num_classes,
                image_size=FLAGS.image_size, kernel_size=FLAGS.kernel_size,
                width=FLAGS.width, head=FLAGS.head, lrn=FLAGS.lrn,
                conv1x1=FLAGS.conv1x1, batch_norm=FLAGS.batch_norm,
                fc_width=FLAGS.fc_width)
    model.check_input(FLAGS.image_size, FLAGS.image_size)
    folder = FLAGS.plot and os.path.dirname(os.path.abspath(FLAGS.plot))
    if folder and not os.path.isdir(folder):  # before the summary, not after
      raise FileNotFoundError(f'--plot={FLAGS.plot}: the directory {folder} does not exist; '
                              'create it or draw elsewhere')
    print(report.summary(model))
    if FLAGS.plot:
      report.plot(model, FLAGS.plot)
      print(f'architecture drawn to {FLAGS.plot}')
  except errors.USER_ERRORS as e:
    sys.exit(cli.error_line('vgg_jax.model', e))


def _define_flags():
  from absl import flags
  flags.DEFINE_enum('variant', 'D', list(CONFIGS), 'Row of Table 1.')
  flags.DEFINE_bool('all', False, 'Print Table 2 for every variant.')
  flags.DEFINE_integer('num_classes', 1000, 'Classes.')
  flags.DEFINE_integer('image_size', 224, 'Input side.')
  flags.DEFINE_integer('kernel_size', 3, 'Side of the stacked convs.')
  flags.DEFINE_float('width', 1.0, 'Channel multiplier.')
  flags.DEFINE_integer('fc_width', 4096, 'Hidden FC width.')
  flags.DEFINE_enum('head', 'fc', list(HEADS), 'Classifier head.')
  flags.DEFINE_bool('lrn', None, 'LRN after conv1_1 (default: the variant\'s).')
  flags.DEFINE_bool('conv1x1', None, '1x1 convs ending stages 3-5 (default: the variant\'s).')
  flags.DEFINE_bool('batch_norm', False, 'BatchNorm after every conv.')
  flags.DEFINE_string('plot', None, 'Draw the architecture to this PNG file.')


if __name__ == '__main__':
  # Flags and report code only for the command line: importing the model
  # defines no flags and loads no summary or plotting code. The command runs
  # the imported `vgg_jax.model`, the one `summary` sees, not this `__main__` copy.
  from absl import app
  from vgg_jax import cli, model, summary
  model._define_flags()  # pylint: disable=protected-access
  app.run(functools.partial(model._main, report=summary),  # pylint: disable=protected-access
          flags_parser=cli.flags_parser('vgg_jax.model'))
