"""One-off (2026-12-07): the size `amx,muon` with conv1_1 set to a patch-whitening
filter bank and frozen there, as airbench does with its first layer (a trainable
whitening start gained nothing at the twocore size: ../pilot_levers/).

    PYTHONPATH=. python experiments/results/pilot_muon/frozen_whitening.py ROOT WORKDIR \
        [--config.FIELD=VALUE ...]

ROOT: CIFAR-10 as an image folder (ROOT/train/<class>/*, ROOT/test/<class>/*).
The filters: the top C/2 eigenvectors of the covariance of every 3x3 patch of the
network's inputs in the run's first four training batches (2,048 augmented crops
with their colour shift and mean subtracted, as the step sees them), each divided
by the square root of its eigenvalue plus 1e-3 of the largest, and their
negatives (C = 32 at width 1/2); batch norm follows, so only their directions and
relative scales matter. Muon's and SGD's updates of that kernel are set to zero;
everything else trains as the size says.
"""
if __name__ == '__main__':  # first, as in vgg_jax.train: glibc's tunables need a restart
  from vgg_jax import malloc_tunables
  malloc_tunables.restart_with_tunables()

import ast
import functools
import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import cifar10
from vgg_jax import console, data, optim, train, warm_start

FROZEN = 'conv1_1'


def network_inputs(config, batches=4):
  stream = data.train_batches(config.data, global_batch_size=config.batch_size,
                              seed=config.seed)
  return np.concatenate([b['image'].astype(np.float32) + b['offset'][:, None, None, :]
                         for b in itertools.islice(stream, batches)])


def whitening_kernel(images, channels, size=3, eps=1e-3):
  n, h, w, c = images.shape
  patches = np.stack([images[:, y:y + h - size + 1, x:x + w - size + 1, :]
                      for y in range(size) for x in range(size)], axis=3)
  p = patches.reshape(-1, size * size * c).astype(np.float64)  # (h, w, in): HWIO's order
  p -= p.mean(0)
  lam, vec = np.linalg.eigh(p.T @ p / len(p))
  lam, vec = lam[::-1], vec[:, ::-1]
  k = channels // 2
  filters = vec[:, :k] / np.sqrt(lam[:k] + eps * lam[0])
  return np.concatenate([filters, -filters], axis=1).reshape(size, size, c, channels)


def frozen_first_kernel(create):
  def create_optimizer(cfg, num_steps, steps_per_epoch):
    frozen = lambda params: {k: jax.tree.map(lambda _: k == FROZEN, v)
                             for k, v in params.items()}
    return optax.chain(create(cfg, num_steps, steps_per_epoch),
                       optax.masked(optax.set_to_zero(), frozen))
  return create_optimizer


def main(root, workdir, *overrides):
  config = cifar10.get_config(f'D,amx,muon,folder={root}')
  for override in overrides:  # --config.a.b=literal
    field, value = override.removeprefix('--config.').split('=', 1)
    *path, name = field.split('.')
    setattr(functools.reduce(getattr, path, config), name, ast.literal_eval(value))
  fresh = warm_start.apply_init_from

  def whitened(config, state, model):
    state = fresh(config, state, model)
    kernel = state.params[FROZEN]['kernel']
    w = whitening_kernel(network_inputs(config), kernel.shape[-1])
    w *= np.linalg.norm(np.asarray(kernel)) / np.linalg.norm(w)  # Muon's sphere
    params = dict(state.params)
    params[FROZEN] = dict(params[FROZEN], kernel=jax.device_put(
        jnp.asarray(w, kernel.dtype), kernel.sharding))
    return state.replace(params=params)

  warm_start.apply_init_from = whitened  # train_and_evaluate calls it on a fresh state
  optim.create_optimizer = frozen_first_kernel(optim.create_optimizer)
  console.quiet_libraries()
  start = time.time()
  result = train.train_and_evaluate(config, workdir)
  print('top-1 error', result['top1_error'], 'wall', round(time.time() - start), 's')


if __name__ == '__main__':
  main(*sys.argv[1:])
