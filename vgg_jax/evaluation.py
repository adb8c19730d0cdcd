"""Exact evaluation: every example counted once, whatever the batch or device count.

Batches arrive padded with `mask=False` rows (the data pipeline never drops a
remainder); the compiled step returns masked *sums* over the global batch, and
the host adds them up, so the result is the same for any batch size and any
number of devices.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import parallel


def classification_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
  """Masked sums of top-1/top-5 errors and NLL for one batch."""
  logits = logits.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  # Rank of the true class: the number of classes scored strictly higher.
  true_score = jnp.take_along_axis(logits, labels[:, None], -1)
  rank = jnp.sum(logits > true_score, axis=-1)
  return {
      'top1_errors': jnp.sum((rank >= 1) * mask),
      'top5_errors': jnp.sum((rank >= 5) * mask),
      'nll': jnp.sum(nll * mask),
      'count': jnp.sum(mask),
  }


def make_eval_step(apply_fn: Callable, mesh) -> Callable:
  """A compiled step: (variables, batch) -> masked sums over the global batch."""

  def step(variables, batch):
    logits = apply_fn(variables, batch['image'], train=False)
    return classification_sums(logits, batch['label'], batch['mask'])

  return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))


def evaluate(eval_step: Callable, variables, batches: Iterable[dict], mesh) -> dict:
  """Top-1/top-5 error and mean NLL over all (unmasked) examples of `batches`."""
  totals = None
  for local_batch in batches:
    sums = eval_step(variables, parallel.global_batch(local_batch, mesh))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('the evaluation split is empty')
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {
      'top1_error': float(totals['top1_errors']) / count,
      'top5_error': float(totals['top5_errors']) / count,
      'nll': float(totals['nll']) / count,
      'num_examples': int(round(count)),
  }
