"""Optimiser and learning-rate schedules, the paper's and modern ones.

§3.1: SGD with momentum 0.9, L2 weight decay 5e-4, learning rate 1e-2 divided
by 10 whenever validation accuracy stops improving. The plateau rule depends on
evaluations made outside the compiled step, so its state (`Plateau`) lives in
the train state as a learning-rate multiplier that the host updates after each
evaluation; it is checkpointed, so a resumed run decays exactly as the
uninterrupted one would.
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('plateau', 'step', 'cosine', 'constant')


def learning_rate_fn(cfg, num_steps: int, steps_per_epoch: int) -> Callable:
  """The base schedule; 'plateau' is constant here and scaled by `Plateau`."""
  base = cfg.learning_rate
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
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
      optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
  )


@flax.struct.dataclass
class Plateau:
  """Reduce-on-plateau bookkeeping: multiplier, best accuracy, evals since best."""
  scale: jax.Array
  best: jax.Array
  bad_evals: jax.Array
  reductions: jax.Array

  @classmethod
  def create(cls) -> 'Plateau':
    return cls(scale=jnp.ones((), jnp.float32), best=jnp.full((), -1.0, jnp.float32),
               bad_evals=jnp.zeros((), jnp.int32), reductions=jnp.zeros((), jnp.int32))


def plateau_update(plateau: Plateau, accuracy: float, *, patience: int,
                   factor: float, max_reductions: int, min_delta: float = 1e-4) -> Plateau:
  """After an evaluation: divide the rate when accuracy stopped improving."""
  accuracy = float(accuracy)
  if accuracy > float(plateau.best) + min_delta:
    return plateau.replace(best=jnp.asarray(accuracy, jnp.float32),
                           bad_evals=jnp.zeros((), jnp.int32))
  bad = int(plateau.bad_evals) + 1
  if bad >= patience and int(plateau.reductions) < max_reductions:
    return plateau.replace(scale=plateau.scale * factor, bad_evals=jnp.zeros((), jnp.int32),
                           reductions=plateau.reductions + 1)
  return plateau.replace(bad_evals=jnp.asarray(bad, jnp.int32))
