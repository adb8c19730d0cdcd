"""Optimiser and learning-rate schedules, the paper's and modern ones.

§3.1: SGD with momentum 0.9, L2 weight decay 5e-4, learning rate 1e-2 divided
by 10 whenever validation accuracy stops improving. The plateau rule is
optax's `reduce_on_plateau` fed the validation top-1 error (lower is better):
the rate is multiplied by `plateau_factor` when the error has not fallen by
more than `PLATEAU_MIN_IMPROVEMENT` for `plateau_patience` evaluations, at most
`plateau_max_reductions` times (its `min_scale` is the scale after that many
reductions, computed in the same float32 arithmetic, so a further reduction
leaves the scale exactly where it was).

The evaluations happen outside the compiled step, so the rule's state lives
in the train state: `after_evaluation` updates it with an evaluation's error
(optax's update of no gradients), and the step multiplies its updates by the
state's `scale`. The state is checkpointed with the rest, so a resumed run
decays exactly as the uninterrupted one would.

Not the paper's: `kernels='muon'` trains the 4-D kernels with Muon (Jordan et al.,
2024; optax's `contrib.scale_by_muon`): their gradients' Nesterov momentum,
orthogonalised by Newton-Schulz iterations, turns each kernel by the rate in
radians at a fixed norm (`keep_kernel_norm`). It learns faster per epoch than SGD
on the small CIFAR-10 budgets (configs/cifar10.py, size `muon`). The iterations
are this module's (`newton_schulz`: no transposes, products in float32 or, with
`muon_dtype='bfloat16'`, in bfloat16 by oneDNN on CPUs that multiply it);
optax's `scale_by_muon` keeps the momentum.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from vgg_jax import cpu_ops, onednn

SCHEDULES = ('plateau', 'step', 'cosine', 'linear', 'constant')
# What trains the conv kernels: the paper's SGD, or Muon (the momentum's
# direction orthogonalised, kernels kept at a fixed norm) with SGD for the rest.
KERNEL_OPTIMIZERS = ('sgd', 'muon')
# The dtypes Muon's Newton-Schulz iterations multiply in (`muon_dtype`).
MUON_DTYPES = ('float32', 'bfloat16')
# conv1_1 trained like every layer (the paper), or set to a patch-whitening filter
# bank of the training images and never trained (vgg_jax/whitening.py).
FIRST_CONVS = ('trained', 'whitened')
FIRST_CONV = 'conv1_1'
# The validation error must fall by more than this to count as an improvement:
# a change of a few examples in 50,000 is noise, not progress.
PLATEAU_MIN_IMPROVEMENT = 1e-4


def learning_rate_fn(cfg, num_steps: int, steps_per_epoch: int,
                     base: float | None = None) -> Callable:
  """The base schedule, from `base` (default: `cfg.learning_rate`) at its peak;
  'plateau' is constant here and scaled by `plateau_rule`."""
  base = cfg.learning_rate if base is None else base
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule in ('plateau', 'constant'):
    main = optax.constant_schedule(base)
  elif cfg.schedule == 'step':
    # Divide by 10 at each listed epoch, e.g. (30, 60) for 90 epochs; counted from
    # the run's start, and this schedule starts after the warm-up.
    boundaries = {int(e * steps_per_epoch) - warmup: 0.1 for e in cfg.step_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, max(1, num_steps - warmup))
  elif cfg.schedule == 'linear':
    # Straight to zero: more of a short run at mid rates than cosine's tail gives.
    main = optax.linear_schedule(base, 0.0, max(1, num_steps - warmup))
  else:
    raise ValueError(f'unknown optimizer.schedule {cfg.schedule!r}: choose one of '
                     f'{", ".join(SCHEDULES)}')
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), main], [warmup])


def _decay_mask(params):
  # Decay kernels only: biases and batch-norm scales are not weights to shrink.
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def create_optimizer(cfg, num_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  tx = _trained_layers_optimizer(cfg, num_steps, steps_per_epoch)
  if first_conv(cfg) == 'trained':
    return tx
  frozen = lambda params: {name: jax.tree.map(lambda _: name == FIRST_CONV, layer)
                           for name, layer in params.items()}
  # Zeroed after the optimizer rather than left out of it: the state keeps one
  # structure whatever `first_conv` says, and conv1_1's share of its work is tiny.
  return optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))


def _trained_layers_optimizer(cfg, num_steps: int,
                              steps_per_epoch: int) -> optax.GradientTransformation:
  lr = learning_rate_fn(cfg, num_steps, steps_per_epoch)
  sgd = optax.chain(
      optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
      optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
  )
  if kernel_optimizer(cfg) == 'sgd':
    return sgd
  # The same schedule's shape, at Muon's own peak: its rate is an angle a step.
  muon_lr = learning_rate_fn(cfg, num_steps, steps_per_epoch, base=cfg.muon_learning_rate)
  muon = optax.chain(
      # optax's Muon without iterations: its Nesterov momentum at unit Frobenius norm.
      contrib.scale_by_muon(
          beta=cfg.muon_momentum, nesterov=True, ns_steps=0,
          weight_dimension_numbers=lambda tree: jax.tree.map(lambda _: _CONV_KERNEL_AXES, tree)),
      orthogonalize(cfg.muon_ns_steps, muon_dtype(cfg)),
      optax.scale_by_learning_rate(muon_lr),
      keep_kernel_norm(),
  )
  # The 4-D kernels: the conv layers' and fc1's (the FC head's first layer is a conv
  # over the last feature map, vgg_jax/model.py; Muon sees the matrix it multiplies by).
  labels = lambda params: jax.tree.map(lambda p: 'muon' if p.ndim == 4 else 'sgd', params)
  return optax.multi_transform({'sgd': sgd, 'muon': muon}, labels)


def _choice(cfg, field: str, choices: tuple[str, ...]) -> str:
  """`cfg.<field>`, checked against `choices` (the first where a config from before
  the field lacks it)."""
  value = cfg.get(field, choices[0])
  if value not in choices:
    raise ValueError(f'unknown optimizer.{field} {value!r}: choose one of '
                     f'{", ".join(choices)}')
  return value


def kernel_optimizer(cfg) -> str:
  """`cfg.kernels`, checked ('sgd' where a config from before the field lacks it)."""
  return _choice(cfg, 'kernels', KERNEL_OPTIMIZERS)


def muon_dtype(cfg) -> str:
  """`cfg.muon_dtype`, checked ('float32' where a config from before the field lacks it)."""
  return _choice(cfg, 'muon_dtype', MUON_DTYPES)


def first_conv(cfg) -> str:
  """`cfg.first_conv`, checked ('trained' where a config from before the field lacks it)."""
  return _choice(cfg, 'first_conv', FIRST_CONVS)


# A conv kernel (h, w, in, out) as the (h * w * in, out) matrix it multiplies by.
_CONV_KERNEL_AXES = contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))


# optax's (Jordan's) quintic Newton-Schulz coefficients.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _products(dtype) -> Callable:
  """op(a) @ op(b) of `dtype` matrices, op a transpose where asked, sums in float32.

  bfloat16 by oneDNN on CPUs that multiply it in hardware: XLA's CPU dot
  computes bfloat16 in float32 and gains nothing. Muon's update in VGG-D's step
  at width 1/2 took 83-87 ms with oneDNN's bfloat16 products, 129-140 in float32
  (2-core AMD EPYC with AVX-512 BF16, `experiments/results/benchmarks/`).
  """
  if jnp.dtype(dtype) == jnp.bfloat16 and cpu_ops.on_cpu() and onednn.bfloat16_available():
    return onednn.matmul

  def product(a, b, transpose_a=False, transpose_b=False):
    return jnp.matmul(a.T if transpose_a else a, b.T if transpose_b else b,
                      preferred_element_type=jnp.float32).astype(dtype)
  return product


def newton_schulz(x: jax.Array, steps: int, dtype=jnp.float32) -> jax.Array:
  """`steps` of optax's Newton-Schulz iteration on the matrix x (rows, cols), for
  an x at unit Frobenius norm: its orthogonalisation, about. Products in `dtype`
  with float32 sums (`_products`), the result float32.

  On x's narrow side: with more rows than columns, the Gram matrix is x^T x
  and x is multiplied by it on the right, which is the iteration on x^T
  transposed (the iteration is an odd polynomial); optax transposes x
  instead, and with its copies and transposed products Muon's update in the
  step above took 159-193 ms.
  """
  a, b, c = NS_COEFFS
  product = _products(dtype)
  x = x.astype(dtype)
  tall = x.shape[0] >= x.shape[1]
  for _ in range(steps):
    gram = product(x, x, transpose_a=tall, transpose_b=not tall)
    poly = (b * gram + c * product(gram, gram)).astype(dtype)
    x = (a * x + (product(x, poly) if tall else product(poly, x))).astype(dtype)
  return x.astype(jnp.float32)


def orthogonalize(steps: int, dtype=jnp.float32) -> optax.GradientTransformation:
  """`newton_schulz` on each update seen as the (h * w * in, out) matrix its
  kernel multiplies by (a free reshape of HWIO)."""
  def update_fn(updates, state, params=None):
    del params
    def one(u):
      return newton_schulz(u.reshape(-1, u.shape[-1]), steps, dtype).reshape(u.shape)
    return jax.tree.map(one, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def keep_kernel_norm() -> optax.GradientTransformation:
  """Updates that land each kernel back on the sphere of norm sqrt(out channels).

  Batch norm makes a conv blind to its kernel's scale, so only its direction
  learns; at a fixed norm (Glorot's expected one, about) an orthogonalised update
  of rate r turns the kernel by about r radians, whatever its shape and however
  long the run (airbench's Muon renormalises its filters the same way). fc1 has
  no batch norm after it, but a ReLU, which passes a scale on to fc2 (trained
  freely by SGD) but for fc1's bias.
  """
  def update_fn(updates, state, params):
    def onto_sphere(update, kernel):
      moved = kernel + update
      norm = jnp.sqrt(jnp.sum(jnp.square(moved)))
      return moved * (np.sqrt(kernel.shape[-1]) / norm) - kernel
    return jax.tree.map(onto_sphere, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def plateau_rule(cfg) -> optax.GradientTransformationExtraArgs:
  """The paper's reduce-on-plateau rule from the optimizer config (see the module)."""
  if cfg.plateau_patience < 1:
    raise ValueError(f'optimizer.plateau_patience={cfg.plateau_patience} must be at least 1 '
                     '(evaluations without improvement before the rate is divided)')
  return contrib.reduce_on_plateau(
      factor=cfg.plateau_factor, patience=cfg.plateau_patience, rtol=0.0,
      atol=PLATEAU_MIN_IMPROVEMENT,
      min_scale=lowest_scale(cfg.plateau_factor, cfg.plateau_max_reductions))


def lowest_scale(factor: float, max_reductions: int) -> float:
  """The scale after `max_reductions` reductions, rounded as the float32 state is."""
  scale = np.float32(1.0)
  for _ in range(max_reductions):
    scale = np.float32(scale * np.float32(factor))
  return float(scale)


def initial_plateau_state(params) -> contrib.ReduceLROnPlateauState:
  """The rule's state before any evaluation: scale 1, no best error yet. The
  same whatever the rule's settings, which only its updates read.

  optax marks "no best yet" with an infinite best error, but a checkpoint
  refuses non-finite values (they mean divergence; `checkpoints.save`), so the
  largest finite number stands in: an error is at most 1, so the first
  evaluation improves on it all the same.
  """
  state = contrib.reduce_on_plateau().init(params)
  dtype = state.best_value.dtype
  return state._replace(best_value=jnp.asarray(jnp.finfo(dtype).max, dtype))


def after_evaluation(rule: optax.GradientTransformationExtraArgs,
                     state: contrib.ReduceLROnPlateauState,
                     top1_error: jax.typing.ArrayLike) -> contrib.ReduceLROnPlateauState:
  """The rule's state once an evaluation measured `top1_error`."""
  _, state = rule.update({}, state, value=top1_error)
  return state
