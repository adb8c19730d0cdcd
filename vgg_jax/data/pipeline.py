"""Deterministic, resumable, sharded input pipelines on grain.

The training stream is defined by arithmetic, not by the state of a reader:

  * global example position g = step * global_batch_size + row;
  * epoch e = g // N and slot g % N; the example at that slot is entry g % N of
    a fresh permutation of the N training examples seeded by (seed, e);
  * its augmentation (scale, crop, flip, lighting) comes from eight uniforms,
    outputs 8g .. 8g+7 of a counter-based generator keyed by the seed (with
    `flip='alternating'`, the flip from the example's own coin and e's parity);
  * process p of P receives rows [p*B/P, (p+1)*B/P) of each global batch.

So the global batch at step t is a pure function of (seed, t, cfg), the
processes' batches concatenate to the single-process batch exactly, and
resuming from a checkpoint at step t0 (`start_step=t0`) yields exactly the
batches an uninterrupted run would have produced. Nothing is cached beyond
one permutation per live epoch and a bounded prefetch buffer.

grain builds whole batches (read, decode, augment, written into the batch's
arrays) in a pool of threads (the resampling, compiled or Pillow's, releases
the GIL) or, with worker processes (`num_workers`, `worker_count`), in the
workers, so that the main process only receives them; both preserve order.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
from typing import Iterator

from absl import flags
import grain
import numpy as np

from vgg_jax.data import sources
from vgg_jax.data import transforms

# Tags that keep the permutation and augmentation random streams apart.
_PERMUTATION, _AUGMENTATION = 0, 1
# data.flip's values (vgg_jax.config_schema says what each does).
FLIPS = ('random', 'alternating')
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


def examples_at(positions: range, *, seed: int, num_examples: int,
                shuffle: bool = True) -> np.ndarray:
  """Indices of the training examples at global stream positions `positions`."""
  epochs, slots = np.divmod(np.arange(positions.start, positions.stop, dtype=np.int64),
                            num_examples)
  if not shuffle:
    return slots
  indices = np.empty_like(slots)
  for epoch in np.unique(epochs).tolist():  # a batch spans one epoch or two
    here = epochs == epoch
    indices[here] = epoch_permutation(seed, epoch, num_examples)[slots[here]]
  return indices


def example_at(g: int, *, seed: int, num_examples: int, shuffle: bool = True) -> int:
  """Index of the training example at global stream position g."""
  return int(examples_at(range(g, g + 1), seed=seed, num_examples=num_examples,
                         shuffle=shuffle)[0])


# SplitMix64 (Steele, Lea and Flood 2014; Vigna's splitmix64.c): output n of the
# stream seeded with x is mix(x + (n + 1) * _GAMMA), any n at once.
_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(seed: int, outputs: np.ndarray) -> np.ndarray:
  """uint64: outputs number `outputs` (uint64 array) of SplitMix64 seeded with `seed`."""
  with np.errstate(over='ignore'):  # uint64 arithmetic wraps, as in C
    z = np.uint64(seed) + (outputs + np.uint64(1)) * np.uint64(_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def augmentation_uniforms(seed: int, positions: range) -> np.ndarray:
  """float64 [len(positions), UNIFORMS_PER_VIEW] in [0, 1): the uniforms that
  `transforms.train_view` turns into position g's augmentation.

  Counter-based, so a batch's come in a few array operations (a numpy generator
  seeded per position cost ~20 us of a CIFAR-10 image's ~75): position g's row
  holds outputs 8g .. 8g+7 of the SplitMix64 stream whose seed is the first
  output of SplitMix64 seeded with 2 * seed + the augmentation tag (1), each
  output's top 53 bits as a fraction.
  """
  if not 0 <= seed < 2**63:
    raise ValueError(f'seed={seed} must be in [0, 2**63): choose a seed in that range')
  key = int(splitmix64((seed << 1) | _AUGMENTATION, np.zeros(1, np.uint64))[0])
  width = transforms.UNIFORMS_PER_VIEW
  outputs = np.arange(positions.start * width, positions.stop * width, dtype=np.uint64)
  words = splitmix64(key, outputs).reshape(len(positions), width)
  return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def alternating_mirrors(seed: int, positions: range, indices: np.ndarray,
                        num_examples: int) -> np.ndarray:
  """bool per position in `positions`: whether its crop is flipped under
  `flip='alternating'`. Example i's own coin (the top bit of output i of the
  SplitMix64 stream keyed by the second output of the one that keys the
  uniforms) decides its epoch 0; every later epoch flips it the other way."""
  key = int(splitmix64((seed << 1) | _AUGMENTATION, np.ones(1, np.uint64))[0])
  coins = (splitmix64(key, np.asarray(indices, np.uint64)) >> np.uint64(63)).astype(np.int64)
  epochs = np.arange(positions.start, positions.stop, dtype=np.int64) // num_examples
  return (coins ^ (epochs & 1)).astype(bool)


# --------------------------------------------------------------------------
# Per-batch work, as a picklable callable (grain may ship it to workers).
# --------------------------------------------------------------------------


# Decoded images a process's training pipeline keeps in memory, at most: CIFAR-10's
# 50,000 training images take 154 MB. Photographs (over 96x96) are never kept.
KEPT_DECODES_BYTES = 1 << 30
KEPT_IMAGE_MAX_BYTES = 96 * 96 * 3


class KeptDecodes:
  """source[index] -> (image as `transforms.decode_view` gives it at `scale`, label),
  the images of small examples decoded once and kept, within `max_bytes`.

  On 32x32 JPEGs the decoding, with the file's read, is about 40 % of the pipeline's
  time per image: an epoch after the first would repeat it for nothing. An image
  is kept only where it is the same at every scale of the range (decoded at full
  size, `transforms.decodes_at_full_size`), so the stream is the same with or
  without this. Threads share it; two may decode one image at once, and the bound
  may be passed by one image per thread, no more.
  """

  def __init__(self, source, smallest_scale: int, max_bytes: int):
    self.source = source
    self.smallest_scale = smallest_scale
    self.max_bytes = max_bytes
    self.kept: dict[int, tuple] = {}
    self.kept_bytes = 0

  def __call__(self, index: int, scale: int) -> tuple:
    kept = self.kept.get(index)
    if kept is not None:
      return kept
    data, label = self.source[index]
    image = transforms.decode_view(data, min_side=scale)
    height, width = transforms.height_width(image)
    nbytes = height * width * 3
    # Arrays are full-size decodes, whose size says if a smaller scale would reduce
    # them; Pillow reduces JPEGs only, so a Pillow image is kept where the encoded
    # bytes at hand are no JPEG (TFDS's PNGs), kept as its array: the same crops
    # (tests/test_data.py). Files' bytes are read by decode_view, unseen here.
    never_reduced = isinstance(data, bytes) and not transforms.is_jpeg(data)
    if ((isinstance(image, np.ndarray) or never_reduced) and nbytes <= KEPT_IMAGE_MAX_BYTES
        and self.kept_bytes + nbytes <= self.max_bytes
        and transforms.decodes_at_full_size((height, width), self.smallest_scale)):
      image = np.asarray(image)
      image.flags.writeable = False  # every later epoch reads it: nothing may change it
      self.kept[index] = (image, label)
      self.kept_bytes += nbytes
    return image, label


_PRIORITY = threading.local()  # per thread: its niceness was set


def yield_to_the_step(niceness: int) -> None:
  """Gives the calling pipeline thread (or worker process's thread) `niceness`,
  once, on Linux, where niceness is per thread; at 19, the lowest, also the
  SCHED_IDLE policy, below every niceness: the thread runs only on a core that
  nothing else wants (a nice-19 thread still took timeslices from the step's
  threads: end to end from CIFAR-10 JPEGs, a median 0.86 of the step alone
  against 0.90 with it in epoch 1, experiments/PERFORMANCE.md). Never the main process's main thread, which runs
  the step; never lower than the thread already has (that needs privileges)."""
  if (niceness <= 0 or getattr(_PRIORITY, 'set', False)
      or not sys.platform.startswith('linux')
      or (threading.current_thread() is threading.main_thread()
          and multiprocessing.parent_process() is None)):
    return
  _PRIORITY.set = True
  thread = threading.get_native_id()
  try:
    os.setpriority(os.PRIO_PROCESS, thread,
                   max(niceness, os.getpriority(os.PRIO_PROCESS, thread)))
    if niceness >= 19:
      os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
  except OSError:  # a sandbox that forbids it: decoding just keeps its priority
    pass


def _step_runs_on_cpu() -> bool:
  import jax  # pylint: disable=g-import-not-at-top  (the data package needs no jax otherwise)
  return jax.default_backend() == 'cpu'


def pipeline_niceness(cfg) -> int:
  """`data.niceness`, with -1 resolved: 19 when JAX computes on the CPU, else 0."""
  if int(cfg.niceness) >= 0:
    return int(cfg.niceness)
  return 19 if _step_runs_on_cpu() else 0


class _TrainBatch:
  """Batch number b of this process's stream -> dict(image, offset, label), built
  whole: each row's example and augmentation come from its stream position g as
  `examples_at`, `augmentation_uniforms` and `transforms.train_view` define them,
  written straight into the batch's arrays, with the batch's random draws made at
  once and small images' crops resampled in groups. On 32x32 images a per-example
  map with its dict and stacking, a generator per image and Pillow called per
  crop cost more than the decoding (experiments/PERFORMANCE.md)."""

  def __init__(self, source, cfg, *, seed, start_step, global_batch_size,
               process_index, process_count, kept_bytes=0):
    self.seed = seed
    self.num_examples = len(source)
    self.shuffle = bool(cfg.shuffle)
    self.image_size = int(cfg.image_size)
    self.scale_range = transforms.scale_bounds(cfg.train_scale)
    self.color_shift = float(cfg.color_shift)
    self.flip = check_flip(cfg)
    self.mean_rgb = np.asarray(cfg.mean_rgb, np.float32)
    self.local = global_batch_size // process_count
    self.niceness = pipeline_niceness(cfg)  # resolved here: workers need no jax
    self.decoded = KeptDecodes(source, self.scale_range[0], kept_bytes)
    self.position = functools.partial(
        train_position, start_step=start_step, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count)

  def positions(self, batch: int) -> range:
    """Global stream positions g of batch `batch`'s rows: consecutive."""
    first = self.position(batch * self.local)
    return range(first, first + self.local)

  def __call__(self, batch: int) -> dict:
    yield_to_the_step(self.niceness)
    size = self.image_size
    images = np.empty((self.local, size, size, 3), np.uint8)
    labels = np.empty(self.local, np.int32)
    positions = self.positions(batch)
    uniforms = augmentation_uniforms(self.seed, positions)
    indices = examples_at(positions, seed=self.seed, num_examples=self.num_examples,
                          shuffle=self.shuffle)
    scales = transforms.draw_scales(self.scale_range, uniforms[:, transforms.SCALE])
    if self.flip == 'alternating':
      mirrored = alternating_mirrors(self.seed, positions, indices, self.num_examples)
    else:
      mirrored = transforms.draw_mirrors(uniforms[:, transforms.MIRROR])
    # Each image is decoded, placed and given to `crops` before the next is read:
    # a batch's decoded photographs are never held at once.
    crops = transforms.GroupedCrops(images)
    for row, (index, scale, u_top, u_left, mirror) in enumerate(zip(
        indices.tolist(), scales.tolist(), uniforms[:, transforms.TOP].tolist(),
        uniforms[:, transforms.LEFT].tolist(), mirrored.tolist())):
      image, labels[row] = self.decoded(index, scale)
      top, left = transforms.draw_crop(*transforms.height_width(image), scale, size,
                                       u_top, u_left)
      crops.add(row, transforms.CropView(image, scale, top, left, mirror))
    crops.finish()
    alphas = transforms.draw_alphas(uniforms[:, transforms.ALPHAS], self.color_shift)
    return dict(image=images, offset=transforms.colour_offset(alphas, self.mean_rgb),
                label=labels)


def decode_threads(cfg) -> int:
  """Threads that decode and augment images: `data.num_threads`, 0 for one per CPU."""
  return int(cfg.num_threads or os.cpu_count() or 1)


def worker_count(cfg) -> int:
  """`data.num_workers`, with -1 resolved: CPUs - 2 when JAX computes on an
  accelerator (the host does nothing but feed it), 0 on the CPU, whose cores the
  training step needs."""
  if int(cfg.num_workers) >= 0:
    return int(cfg.num_workers)
  return 0 if _step_runs_on_cpu() else max(0, (os.cpu_count() or 1) - 2)


def iterate_batches(batches: grain.MapDataset, cfg) -> Iterator[dict]:
  """The batches of `batches`, in order, each built whole by one of the pipeline's
  threads or, with worker processes, by a worker (the main process only receives
  them). Per example, grain's threads and queues would cost twice the example's
  own work on 32x32 images."""
  prefetch = max(1, int(cfg.prefetch_batches))
  workers = worker_count(cfg)
  if workers == 0:
    # grain reads at most prefetch_buffer_size batches at once: one per thread at least.
    threads = decode_threads(cfg)
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads))
    return iter(batches.to_iter_dataset(read))
  # grain's workers read absl flags; outside an absl app nobody parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # Worker k % W makes batch k; the main process only receives finished batches.
  stream = batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return iter(stream.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=workers, per_worker_buffer_size=prefetch)))


def check_flip(cfg) -> str:
  """`cfg.flip`, one of FLIPS."""
  if cfg.flip not in FLIPS:
    raise ValueError(f'unknown data.flip {cfg.flip!r}: choose one of {", ".join(FLIPS)}')
  return cfg.flip


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
  _local_batch_size(global_batch_size, process_count)  # raises where B/P is not whole
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  check_scales(cfg)
  source = sources.open_split(cfg, cfg.train_split)
  # Each worker process keeps its own decodes: the budget is shared among them.
  batch = _TrainBatch(source, cfg, seed=seed, start_step=start_step,
                      global_batch_size=global_batch_size, process_index=process_index,
                      process_count=process_count,
                      kept_bytes=KEPT_DECODES_BYTES // max(1, worker_count(cfg)))
  return iterate_batches(grain.MapDataset.range(0, _ENDLESS).map(batch), cfg)

