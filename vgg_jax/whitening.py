"""conv1_1 as a patch-whitening filter bank of the training images, never trained
(`optimizer.first_conv='whitened'`; airbench's first layer, Jordan 2024).

Not the paper's: its conv1_1 is trained like every layer. On short CIFAR-10
budgets the first layer's directions are worth more fixed at the images' own
principal directions from the first step than learnt over epochs
(experiments/results/pilot_muon/). The filters: the top C/2 eigenvectors of the
covariance of every k x k patch of the network's inputs in the run's first
WHITENING_BATCHES training batches (augmented, colour-shifted, mean subtracted: what
the step sees), each divided by the square root of its eigenvalue plus
`WHITENING_EPS` of the largest, and their negatives, scaled to the fresh kernel's
norm (Muon holds each kernel on its sphere; batch norm follows, so only directions
and relative scales matter). Channels beyond twice the patch's dimension (k * k * 3)
keep their random start, frozen too. A warm start (`init_from`) keeps the conv1_1
it copies, frozen as well.
"""

from __future__ import annotations

import itertools
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import data
from vgg_jax.optim import FIRST_CONV

# Training batches whose patches give the covariance (2,048 crops at batch 512).
WHITENING_BATCHES = 4
# Added to each eigenvalue, relative to the largest: bounds the gain given to the
# faintest directions.
WHITENING_EPS = 1e-3


class _Moments:
  """Running sums of patches and of their outer products, in float64."""

  def __init__(self, size: int, channels: int):
    self.size = size
    dim = size * size * channels
    self.count, self.total, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))

  def add(self, images: np.ndarray) -> None:
    n, h, w, c = images.shape
    k = self.size
    patches = np.stack([images[:, y:y + h - k + 1, x:x + w - k + 1, :]
                        for y in range(k) for x in range(k)], axis=3)
    p = patches.reshape(-1, k * k * c).astype(np.float64)
    self.count += len(p)
    self.total += p.sum(0)
    self.outer += p.T @ p

  def covariance(self) -> np.ndarray:
    mean = self.total / self.count
    return self.outer / self.count - np.outer(mean, mean)


def whitening_filters(covariance: np.ndarray, channels: int,
                      eps: float = WHITENING_EPS) -> np.ndarray:
  """[dim, min(channels, 2 * dim) rounded down to even]: the top eigenvectors of
  `covariance` over sqrt(eigenvalue + eps * largest), then their negatives."""
  lam, vec = np.linalg.eigh(covariance)
  lam, vec = lam[::-1], vec[:, ::-1]
  k = min(channels // 2, len(lam))
  filters = vec[:, :k] / np.sqrt(lam[:k] + eps * lam[0])
  return np.concatenate([filters, -filters], axis=1)


def whitening_kernel(images, fresh_kernel: np.ndarray) -> np.ndarray:
  """`fresh_kernel` (HWIO [k, k, 3, C]) with its first channels replaced by the
  whitening filters of the patches of `images` (an iterable of float [n, h, w, 3]
  batches), scaled so that the kernel keeps its norm."""
  k, _, c, channels = fresh_kernel.shape
  moments = _Moments(k, c)
  for batch in images:
    moments.add(batch)
  filters = whitening_filters(moments.covariance(), channels)
  kernel = np.array(fresh_kernel, np.float64).reshape(-1, channels)
  made = filters.shape[1]
  # The random channels' share of the norm stays theirs; the filters take the rest.
  rest = np.linalg.norm(kernel[:, made:])
  target = np.sqrt(max(np.linalg.norm(kernel) ** 2 - rest ** 2, 0.0))
  kernel[:, :made] = filters * (target / np.linalg.norm(filters))
  return kernel.reshape(fresh_kernel.shape).astype(fresh_kernel.dtype)


def network_inputs(config, batches: int = WHITENING_BATCHES):
  """The float network inputs of the run's first `batches` global training batches,
  read whole by every process so that all of them compute the same filters."""
  stream = data.train_batches(config.data, global_batch_size=config.batch_size,
                              seed=config.seed)
  for batch in itertools.islice(stream, batches):
    yield batch['image'].astype(np.float32) + batch['offset'][:, None, None, :]


def whiten_first_conv(config, state):
  """`state` with conv1_1's kernel set to the whitening filters of `config`'s run."""
  start = time.perf_counter()
  kernel = state.params[FIRST_CONV]['kernel']
  fresh = np.asarray(kernel.addressable_data(0))  # replicated: any copy
  whitened = whitening_kernel(network_inputs(config), fresh)
  params = dict(state.params)
  params[FIRST_CONV] = dict(params[FIRST_CONV], kernel=jax.device_put(
      jnp.asarray(whitened), kernel.sharding))
  logging.info('%s set to the whitening filters of %d training batches in %.1f s',
               FIRST_CONV, WHITENING_BATCHES, time.perf_counter() - start)
  return state.replace(params=params)
