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
on the small CIFAR-10 budgets (configs/cifar10.py, size `muon`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

SCHEDULES = ('plateau', 'step', 'cosine', 'constant')
# What trains the conv kernels: the paper's SGD, or Muon (the momentum's
# direction orthogonalised, kernels kept at a fixed norm) with SGD for the rest.
KERNEL_OPTIMIZERS = ('sgd', 'muon')
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
    # Divide by 10 at each listed epoch, e.g. (30, 60) for 90 epochs.
    boundaries = {int(e * steps_per_epoch): 0.1 for e in cfg.step_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, max(1, num_steps - warmup))
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
      contrib.scale_by_muon(
          beta=cfg.muon_momentum, nesterov=True, ns_steps=cfg.muon_ns_steps,
          weight_dimension_numbers=lambda tree: jax.tree.map(lambda _: _CONV_KERNEL_AXES, tree)),
      optax.scale_by_learning_rate(muon_lr),
      keep_kernel_norm(),
  )
  # The 4-D kernels: the conv layers' and fc1's (the FC head's first layer is a conv
  # over the last feature map, vgg_jax/model.py; Muon sees the matrix it multiplies by).
  labels = lambda params: jax.tree.map(lambda p: 'muon' if p.ndim == 4 else 'sgd', params)
  return optax.multi_transform({'sgd': sgd, 'muon': muon}, labels)


def kernel_optimizer(cfg) -> str:
  """`cfg.kernels`, checked ('sgd' where a config from before the field lacks it)."""
  kernels = cfg.get('kernels', 'sgd')
  if kernels not in KERNEL_OPTIMIZERS:
    raise ValueError(f'unknown optimizer.kernels {kernels!r}: choose one of '
                     f'{", ".join(KERNEL_OPTIMIZERS)}')
  return kernels


# A conv kernel (h, w, in, out) as the (h * w * in, out) matrix it multiplies by.
_CONV_KERNEL_AXES = contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))


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
