"""Deterministic, resumable, sharded input pipelines on grain.

The training stream is defined by arithmetic, not by the state of a reader:

  * global example position g = step * global_batch_size + row;
  * epoch e = g // N and slot g % N; the example at that slot is entry g % N of
    a fresh permutation of the N training examples seeded by (seed, e);
  * its augmentation (scale, crop, flip, lighting) is seeded by (seed, g);
  * process p of P receives rows [p*B/P, (p+1)*B/P) of each global batch.

So the global batch at step t is a pure function of (seed, t, cfg), the
processes' batches concatenate to the single-process batch exactly, and
resuming from a checkpoint at step t0 (`start_step=t0`) yields exactly the
batches an uninterrupted run would have produced. Nothing is cached beyond
one permutation per live epoch and a bounded prefetch buffer.

grain runs the per-example work (read, decode, augment) in a pool of threads
(Pillow and numpy release the GIL), or, with worker processes
(`num_workers`, `worker_count`), builds whole batches in the workers, so that
the main process only receives them; both preserve order.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Iterator

from absl import flags
import grain
import numpy as np

from vgg_jax.data import sources
from vgg_jax.data import transforms

# Tags that keep the permutation and augmentation random streams apart.
_PERMUTATION, _AUGMENTATION = 0, 1
# Length of the endless training dataset (grain wants a length).
_ENDLESS = sys.maxsize


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive '
                     f'multiple of the process count ({process_count})')
  return global_batch_size // process_count


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """Example order of one epoch. Cached: consecutive steps share an epoch."""
  rng = np.random.default_rng([seed, _PERMUTATION, epoch])
  return rng.permutation(num_examples)


def train_position(k: int, *, start_step: int, global_batch_size: int,
                   process_index: int, process_count: int) -> int:
  """Global stream position g of this process's k-th training example."""
  local = global_batch_size // process_count
  step, row = divmod(k, local)
  return (start_step + step) * global_batch_size + process_index * local + row


def example_at(g: int, *, seed: int, num_examples: int, shuffle: bool = True) -> int:
  """Index of the training example at global stream position g."""
  epoch, slot = divmod(g, num_examples)
  if not shuffle:
    return slot
  return int(epoch_permutation(seed, epoch, num_examples)[slot])


# --------------------------------------------------------------------------
# Per-example work, as picklable callables (grain may ship them to workers).
# --------------------------------------------------------------------------


class _TrainExample:
  """Stream index k -> dict(image, label), all randomness from (seed, g)."""

  def __init__(self, source, cfg, *, seed, start_step, global_batch_size,
               process_index, process_count):
    self.source = source
    self.seed = seed
    self.num_examples = len(source)
    self.shuffle = bool(cfg.shuffle)
    self.image_size = int(cfg.image_size)
    self.scale_range = transforms.scale_bounds(cfg.train_scale)
    self.color_shift = float(cfg.color_shift)
    self.mean_rgb = tuple(cfg.mean_rgb)
    self.position = functools.partial(
        train_position, start_step=start_step, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count)

  def __call__(self, k: int):
    g = self.position(k)
    index = example_at(g, seed=self.seed, num_examples=self.num_examples,
                       shuffle=self.shuffle)
    data, label = self.source[index]
    rng = np.random.default_rng([self.seed, _AUGMENTATION, g])
    scale = transforms.sample_scale(self.scale_range, rng)
    image = transforms.decode_view(data, min_side=scale)
    image, offset = transforms.train_view(image, rng, image_size=self.image_size,
                                          scale=scale, color_shift=self.color_shift,
                                          mean_rgb=self.mean_rgb)
    return dict(image=image, offset=offset, label=np.int32(label))


def _stack(examples):
  return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


def decode_threads(cfg) -> int:
  """Threads that decode and augment images: `data.num_threads`, 0 for one per CPU."""
  return int(cfg.num_threads or os.cpu_count() or 1)


def worker_count(cfg) -> int:
  """`data.num_workers`, with -1 resolved: CPUs - 2 when JAX computes on an
  accelerator (the host does nothing but feed it), 0 on the CPU, whose cores the
  training step needs."""
  if int(cfg.num_workers) >= 0:
    return int(cfg.num_workers)
  import jax  # pylint: disable=g-import-not-at-top  (the data package needs no jax otherwise)
  if jax.default_backend() == 'cpu':
    return 0
  return max(0, (os.cpu_count() or 1) - 2)


def _iterate(dataset: grain.MapDataset, cfg, local_batch_size: int) -> Iterator[dict]:
  """The examples of `dataset` batched in order: per-example work on threads, or
  whole batches built in worker processes."""
  prefetch = max(1, int(cfg.prefetch_batches))
  workers = worker_count(cfg)
  # Batch k is examples [k*B, (k+1)*B) whoever builds it: a thread (or worker
  # process) makes it whole, stacking included, and grain hands the batches
  # back in order. Per example, grain's threads and queues would cost twice
  # the example's own work on 32x32 images.
  batches = dataset.batch(local_batch_size, drop_remainder=True, batch_fn=_stack)
  if workers == 0:
    read = grain.ReadOptions(num_threads=decode_threads(cfg), prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(read))
  # grain's workers read absl flags; outside an absl app nobody parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # Worker k % W makes batch k; the main process only receives finished batches.
  stream = batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return iter(stream.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=prefetch)))


def check_scales(cfg) -> None:
  """The crop must fit in the rescaled image, at training and at test scale."""
  if np.ndim(cfg.train_scale) != 0 and int(cfg.train_scale[0]) > int(cfg.train_scale[1]):
    raise ValueError(f'data.train_scale={tuple(cfg.train_scale)} must be (min, max) '
                     'with min <= max')
  s_min, _ = transforms.scale_bounds(cfg.train_scale)
  if cfg.image_size > s_min:
    raise ValueError(
        f'data.image_size={cfg.image_size} is larger than the smallest training '
        f'scale S={s_min}: crops must fit in the rescaled image; raise '
        f'data.train_scale or lower data.image_size')
  if cfg.image_size > cfg.test_scale:
    raise ValueError(
        f'data.image_size={cfg.image_size} is larger than data.test_scale='
        f'{cfg.test_scale}: the centre crop must fit; raise data.test_scale')


def train_batches(cfg, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Endless training batches from `start_step` on, this process's rows only.

  Yields dict(image=uint8 [B/P, s, s, 3], offset=float32 [B/P, 3], label=int32
  [B/P]), s = image_size: the network's input is image + offset per image
  (colour shift minus mean), made on the device (`vgg_jax.train.network_input`).
  """
  local = _local_batch_size(global_batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  check_scales(cfg)
  source = sources.open_split(cfg, cfg.train_split)
  example = _TrainExample(source, cfg, seed=seed, start_step=start_step,
                          global_batch_size=global_batch_size,
                          process_index=process_index, process_count=process_count)
  dataset = grain.MapDataset.range(0, _ENDLESS).map(example)
  return _iterate(dataset, cfg, local)

