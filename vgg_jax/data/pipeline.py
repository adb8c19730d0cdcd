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

grain builds whole batches (read, decode, augment, written into the batch's
arrays) in a pool of threads (Pillow's resampling releases the GIL) or, with
worker processes (`num_workers`, `worker_count`), in the workers, so that the
main process only receives them; both preserve order.
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


def augmentation_rngs(seed: int, positions: range) -> Iterator[np.random.Generator]:
  """For each position g, a generator in the state of
  `np.random.default_rng([seed, _AUGMENTATION, g])`, valid until the next is drawn
  (it is one generator, re-seeded).

  Constructing a generator costs 8 us, a tenth of a CIFAR-10 image's pipeline;
  numpy's seeding arithmetic (SeedSequence, then PCG64's), done here for the
  whole batch at once, gives the same states in 2 (tests/test_data.py compares
  them). Numbers past 32 bits, which SeedSequence reads as several words, take
  numpy's own path.
  """
  if not (0 <= seed < 2**32 and 0 <= positions.start and positions.stop <= 2**32):
    for g in positions:
      yield np.random.default_rng([seed, _AUGMENTATION, g])
    return
  words = np.empty((len(positions), 3), np.uint32)
  words[:] = seed, _AUGMENTATION, 0
  words[:, 2] = positions
  bit_generator = np.random.PCG64(0)
  rng = np.random.Generator(bit_generator)
  for state, inc in _pcg64_states(words):
    bit_generator.state = {'bit_generator': 'PCG64', 'state': {'state': state, 'inc': inc},
                           'has_uint32': 0, 'uinteger': 0}
    yield rng


# numpy's constants (numpy/random/bit_generator.pyx, pcg64.h).
_MASK32 = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_PCG64_MULT = 0x2360ED051FC65DA44385DF649FCCF645
_MASK128 = (1 << 128) - 1


def _pcg64_states(words: np.ndarray) -> list[tuple[int, int]]:
  """(state, inc) of PCG64(SeedSequence(row)) for each row of uint32 [n, 3] words:
  SeedSequence's pool of 4 words (mix_entropy), 8 words of generate_state, and
  PCG64's srandom, vectorised over the rows."""
  hash_a = _INIT_A

  def hashmix(value):
    nonlocal hash_a
    value = value ^ np.uint32(hash_a)
    hash_a = (hash_a * _MULT_A) & _MASK32
    value = value * np.uint32(hash_a)
    return value ^ (value >> np.uint32(16))

  with np.errstate(over='ignore'):  # uint32 arithmetic wraps, as in C
    pool = [hashmix(words[:, i]) for i in range(3)]
    pool.append(hashmix(np.zeros(len(words), np.uint32)))
    for src in range(4):
      for dst in range(4):
        if src != dst:
          mixed = np.uint32(_MIX_MULT_L) * pool[dst] - np.uint32(_MIX_MULT_R) * hashmix(pool[src])
          pool[dst] = mixed ^ (mixed >> np.uint32(16))
    hash_b, state_words = _INIT_B, []
    for i in range(8):
      value = pool[i % 4] ^ np.uint32(hash_b)
      hash_b = (hash_b * _MULT_B) & _MASK32
      value = value * np.uint32(hash_b)
      state_words.append((value ^ (value >> np.uint32(16))).astype(np.uint64))
  seed_hi, seed_lo, inc_hi, inc_lo = (
      (state_words[2 * j] | (state_words[2 * j + 1] << np.uint64(32))).tolist() for j in range(4))
  states = []
  for a, b, c, d in zip(seed_hi, seed_lo, inc_hi, inc_lo):
    # pcg_setseq_128_srandom_r: state 0, step, add the seed, step.
    inc = ((((c << 64) | d) << 1) | 1) & _MASK128
    states.append((((((a << 64) | b) + inc) * _PCG64_MULT + inc) & _MASK128, inc))
  return states


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
  once, on Linux, where niceness is per thread. Never the main process's main
  thread, which runs the step; never lower than the thread already has (that
  needs privileges)."""
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
  `example_at` and `transforms.train_view` define them, written straight into the
  batch's arrays, with the generators seeded for the batch at once and small
  images' crops resampled in groups. On 32x32 images a per-example map with its
  dict and stacking, a generator built per image and Pillow called per crop
  cost more than the decoding (experiments/PERFORMANCE.md)."""

  def __init__(self, source, cfg, *, seed, start_step, global_batch_size,
               process_index, process_count, kept_bytes=0):
    self.seed = seed
    self.num_examples = len(source)
    self.shuffle = bool(cfg.shuffle)
    self.image_size = int(cfg.image_size)
    self.scale_range = transforms.scale_bounds(cfg.train_scale)
    self.color_shift = float(cfg.color_shift)
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
    offsets = np.empty((self.local, 3), np.float32)
    labels = np.empty(self.local, np.int32)
    crops = transforms.GroupedCrops(images)
    positions = self.positions(batch)
    rngs = augmentation_rngs(self.seed, positions)
    for row, (g, rng) in enumerate(zip(positions, rngs)):
      index = example_at(g, seed=self.seed, num_examples=self.num_examples,
                         shuffle=self.shuffle)
      scale = transforms.sample_scale(self.scale_range, rng)
      image, labels[row] = self.decoded(index, scale)
      top, left, mirrored, alphas = transforms.train_draws(
          *transforms.height_width(image), rng, image_size=size, scale=scale,
          color_shift=self.color_shift)
      offsets[row] = transforms.colour_offset(alphas, self.mean_rgb)
      crops.add(row, transforms.CropView(image, scale, top, left, mirrored))
    crops.finish()
    return dict(image=images, offset=offsets, label=labels)


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

