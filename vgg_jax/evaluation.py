"""Exact evaluation: every example counted once, whatever the batch or device count.

`evaluate_protocol` runs the paper's test protocols (§3.2): 'single' (centre
crop of the image rescaled to Q), 'dense' (the whole rescaled image, any
aspect ratio, through the fully convolutional net, class scores averaged over
the map), 'multicrop' (5x5 grid of crops x 2 flips per scale) and
'dense+multicrop', over one or several scales Q. An image's posterior is the
mean of the softmax outputs of all its views; views are batched by shape,
padded batches carry zero-weight rows, and each process scores its own share
of the examples on its local devices before the totals are summed.
`evaluate_protocols` scores several protocols in one pass, each view run once
for all that take it (Table 5's dense, multi-crop and both).
`python -m vgg_jax.evaluate` is its command line; the training loop evaluates
with it too.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vgg_jax import data, parallel
from vgg_jax.data import transforms


# --------------------------------------------------------------------------
# The paper's test protocols (§3.2): views, scales, and an exact evaluation
# that averages softmax outputs per image.
# --------------------------------------------------------------------------

PROTOCOLS = ('single', 'dense', 'multicrop', 'dense+multicrop')
# What the training loop evaluates with: quick, and the same every epoch.
TRAINING_PROTOCOL = 'single'
# Multi-crop takes a GRID x GRID grid of crops per scale, each with its mirror.
GRID = 5
# The paper's offset between test scales for a fixed S, at its 224 crop.
PAPER_SCALE_OFFSET, PAPER_CROP = 32, 224


def protocol_parts(protocol: str) -> tuple[str, ...]:
  """The protocols whose softmax outputs a protocol averages."""
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {protocol!r}: choose one of {", ".join(PROTOCOLS)}')
  return tuple(protocol.split('+'))


def parse_eval_spec(spec: str) -> tuple[str, Optional[str]]:
  """An evaluation of `config.evals`, 'protocol[:scales]': 'dense:auto' ->
  ('dense', 'auto'); 'single' -> ('single', None)."""
  protocol, _, scales = spec.partition(':')
  if protocol.strip() not in PROTOCOLS:
    raise ValueError(f'evaluation {spec!r}: unknown protocol {protocol.strip()!r}; write '
                     f'PROTOCOL[:SCALES] with PROTOCOL one of {", ".join(PROTOCOLS)}')
  return protocol.strip(), (scales.strip() or None)


def resolve_flip(protocol: str, flip: Optional[bool] = None) -> bool:
  """Whether each single/dense view is averaged with its mirror image.

  None takes the paper's choice: dense evaluation averages each image with
  its flip (§3.2), the single-crop numbers of Tables 3-4 use none. Multi-crop
  always takes both flips of its 25 crops, so it only accepts True.
  """
  parts = protocol_parts(protocol)
  if flip is None:
    return parts != ('single',)
  if not flip and parts == ('multicrop',):
    raise ValueError('multicrop always averages both flips of its 25 crops (50 views '
                     'per scale): drop --noflip')
  return bool(flip)


def auto_scales(train_scale, image_size: int) -> tuple[int, ...]:
  """Test scales Q by the paper's rule (§4.2) for a run trained at `train_scale`.

  Jittered S in [S_min, S_max]: {S_min, (S_min + S_max) / 2, S_max}.
  Fixed S: {S - d, S, S + d}, where the paper's d = 32 is for a 224 crop; with
  other crops d = round(32 * image_size / 224) keeps the same relative spacing
  (d = 5 for this project's 32 crop), so S - d stays a sensible scale.
  """
  lo, hi = transforms.scale_bounds(train_scale)
  if lo != hi:
    return tuple(dict.fromkeys((lo, (lo + hi) // 2, hi)))  # [S, S + 1]: two scales
  offset = int(round(PAPER_SCALE_OFFSET * image_size / PAPER_CROP))
  return lo - offset, lo, lo + offset


def parse_scales(scales, data_cfg) -> tuple[int, ...]:
  """Test scales from None (the run's test_scale), 'auto', '256,384' or ints."""
  if scales is None:
    resolved = (int(data_cfg.test_scale),)
  elif isinstance(scales, str) and scales.strip() == 'auto':
    resolved = auto_scales(data_cfg.train_scale, int(data_cfg.image_size))
  else:
    items = scales.split(',') if isinstance(scales, str) else np.atleast_1d(scales)
    try:
      resolved = tuple(int(str(s).strip()) for s in items if str(s).strip())
    except ValueError:
      raise ValueError(f'scales={scales!r} must be comma-separated integers (e.g. '
                       "256,384,512) or 'auto'") from None
    if not resolved:
      raise ValueError(f'scales={scales!r} is empty: give at least one Q or auto')
    if len(set(resolved)) < len(resolved):
      # One set of views per scale: a repeated Q would be counted in the mean's
      # divisor but its views made once.
      raise ValueError(f'scales={scales!r} repeats a scale: give each Q once')
  check_scales(resolved, int(data_cfg.image_size))
  return resolved


def check_scales(scales, image_size: int) -> None:
  small = [q for q in scales if q < image_size]
  if small:
    raise ValueError(
        f'test scale Q={small[0]} is smaller than the {image_size}x{image_size} crop the '
        f'network was trained on: use scales of at least {image_size} (e.g. '
        f'--scales={image_size},{image_size + image_size // 2},{2 * image_size})')


def grid_offsets(length: int, size: int, n: int = GRID) -> list[int]:
  """n evenly spaced crop offsets from one edge to the other; the middle one is
  the centre crop's offset, so the grid contains the single-crop view."""
  return [i * (length - size) // (n - 1) for i in range(n)]


def view_groups(protocol: str, scales) -> list[tuple[str, int]]:
  """(part, Q) pairs: the posterior is the plain mean over groups of each
  group's mean softmax, so every protocol and scale weighs the same."""
  return [(part, q) for part in protocol_parts(protocol) for q in scales]


def views_per_group(part: str, flip: bool) -> int:
  if part == 'multicrop':
    return GRID * GRID * 2
  return 2 if flip else 1


def part_views(rescaled: np.ndarray, part: str, *, image_size: int,
               flip: bool) -> list[np.ndarray]:
  """The views one protocol takes of an image already rescaled to Q.

  single: the centre crop. dense: the whole image, any aspect ratio (the 'fc'
  head slides FC1 over it and averages the class score map). multicrop: a 5x5
  grid of crops, each with its mirror, always 50. With `flip`, single and dense
  add the mirror image.
  """
  if part == 'single':
    views = [transforms.centre_crop(rescaled, image_size)]
  elif part == 'dense':
    views = [rescaled]
  elif part == 'multicrop':
    h, w = rescaled.shape[:2]
    crops = [transforms.crop(rescaled, top, left, image_size)
             for top in grid_offsets(h, image_size) for left in grid_offsets(w, image_size)]
    return [v for c in crops for v in (c, transforms.flip(c))]
  else:
    raise ValueError(f'unknown protocol part {part!r}')
  return views + [transforms.flip(v) for v in views] if flip else views


def example_views(image: np.ndarray, groups, *, image_size: int,
                  flip: bool) -> list[tuple[int, np.ndarray]]:
  """(group number, uint8 view) for every view of one decoded image."""
  rescaled = {q: transforms.rescale(image, q) for q in dict.fromkeys(q for _, q in groups)}
  return [(g, view) for g, (part, q) in enumerate(groups)
          for view in part_views(rescaled[q], part, image_size=image_size, flip=flip)]


class _Posteriors:
  """Running per-example softmax sums for the examples still missing views.

  Rows of preallocated arrays are reused once an example is complete, so host
  memory is bounded by the examples in flight, not by the split's size (a
  full ImageNet posterior table would be 50,000 x 1,000 doubles).
  """

  def __init__(self, num_classes: int, capacity: int = 64):
    self.num_classes = num_classes
    self.prob = np.zeros((capacity, num_classes))
    # log of the weighted sum of the true class's probability: exact NLL even
    # where float32 softmax outputs underflow.
    self.loglik = np.full(capacity, -np.inf)
    self.remaining = np.zeros(capacity, np.int64)
    self.label = np.zeros(capacity, np.int64)
    self.index = np.zeros(capacity, np.int64)
    self.free = list(range(capacity - 1, -1, -1))

  def _grow(self) -> None:
    n = len(self.index)
    self.prob = np.concatenate([self.prob, np.zeros_like(self.prob)])
    self.loglik = np.concatenate([self.loglik, np.full(n, -np.inf)])
    for name in ('remaining', 'label', 'index'):
      setattr(self, name, np.concatenate([getattr(self, name), np.zeros(n, np.int64)]))
    self.free.extend(range(2 * n - 1, n - 1, -1))

  def open(self, index: int, label: int, num_views: int) -> int:
    if not 0 <= label < self.num_classes:
      raise ValueError(f'example {index} has label {label}, but the model scores '
                       f'{self.num_classes} classes: evaluate on the dataset the run '
                       'was trained on')
    if not self.free:
      self._grow()
    row = self.free.pop()
    self.index[row], self.label[row], self.remaining[row] = index, label, num_views
    return row

  def add(self, rows: np.ndarray, weights: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """Adds weighted softmax outputs; returns the rows that are now complete."""
    # exp in float64: no underflow for any float32 log-probability that matters.
    np.add.at(self.prob, rows, weights[:, None] * np.exp(log_probs.astype(np.float64)))
    true = log_probs[np.arange(len(rows)), self.label[rows]].astype(np.float64)
    np.logaddexp.at(self.loglik, rows, np.log(weights) + true)
    np.subtract.at(self.remaining, rows, 1)
    rows = np.unique(rows)
    return rows[self.remaining[rows] == 0]

  def close(self, rows: np.ndarray) -> dict:
    """Scores complete examples and frees their rows."""
    prob, labels = self.prob[rows], self.label[rows]
    true = prob[np.arange(len(rows)), labels]
    # Rank of the true class as argmax and top_k order classes: those scored
    # higher, and those scored the same with a lower index. Ties are real: an
    # untrained deep net's float32 softmax ties hundreds of classes.
    before = np.arange(self.num_classes) < labels[:, None]
    rank = np.sum((prob > true[:, None]) | ((prob == true[:, None]) & before), axis=-1)
    out = dict(top1_errors=rank >= 1, top5_errors=rank >= 5, nll=-self.loglik[rows],
               posterior=prob.astype(np.float32), index=self.index[rows].copy())
    self.prob[rows] = 0.0
    self.loglik[rows] = -np.inf
    self.free.extend(int(r) for r in rows)
    return out


# Compiled predictors by (apply_fn, mesh, batch shape, variables' shapes):
# periodic evaluations in the training loop reuse them instead of recompiling.
# Dense evaluation of ImageNet meets hundreds of image shapes per scale; a
# smaller cache would evict and recompile them within one evaluation.
_COMPILED: 'collections.OrderedDict[tuple, Any]' = collections.OrderedDict()
_MAX_COMPILED = 2048


def _predict(apply_fn, variables, images, mean_rgb):
  """Log-softmax of one batch of uint8 views; the mean is subtracted on the
  device, so the host ships 4x fewer bytes than float32 images."""
  x = images.astype(jnp.float32) - mean_rgb
  logits = apply_fn(variables, x, train=False)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _variables_signature(variables) -> tuple:
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def _compiled_predictor(apply_fn, mesh, shape: tuple, variables,
                        signature: Optional[tuple] = None) -> tuple[Any, float]:
  """(executable, seconds spent compiling it now: 0 if it was cached)."""
  signature = _variables_signature(variables) if signature is None else signature
  key = (apply_fn, mesh, shape, signature)
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
    return _COMPILED[key], 0.0
  start = time.perf_counter()
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  fn = jax.jit(functools.partial(_predict, apply_fn),
               in_shardings=(replicated, sharded, replicated), out_shardings=sharded)
  abstract_vars = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), variables)
  compiled = fn.lower(abstract_vars, jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=sharded),
                      jax.ShapeDtypeStruct((3,), jnp.float32, sharding=replicated)).compile()
  _COMPILED[key] = compiled
  if len(_COMPILED) > _MAX_COMPILED:
    _COMPILED.popitem(last=False)
  return compiled, time.perf_counter() - start


def place_variables(variables, mesh):
  """Variables replicated on `mesh`: numpy from a checkpoint, or the training
  loop's replicated arrays (reused as they are when already on the mesh)."""
  sharding = parallel.replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array):
      if x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
      if not x.is_fully_addressable:
        if not x.is_fully_replicated:
          raise ValueError('evaluation needs replicated variables; got an array '
                           f'sharded as {x.sharding}')
        x = x.addressable_data(0)  # this process's full copy
    return jax.device_put(x, sharding)

  return jax.tree_util.tree_map(put, variables)


def _ordered_map(fn: Callable, items: Iterable, threads: int, window: int) -> Iterator:
  """fn over items on a thread pool, results in order, at most `window` ahead.

  Decoding and Pillow's resizing release the GIL, so threads scale; the window
  bounds host memory (multi-crop makes 50 views per image and scale).
  """
  pool = concurrent.futures.ThreadPoolExecutor(max(1, threads))
  try:
    items = iter(items)
    pending = collections.deque(pool.submit(fn, x) for x in itertools.islice(items, window))
    while pending:
      result = pending.popleft().result()
      for x in itertools.islice(items, 1):
        pending.append(pool.submit(fn, x))
      yield result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


class _Evaluation:
  """Buckets views by shape, runs full batches, and scores finished examples.

  Views of equal shape share a bucket; a bucket runs when it holds a batch,
  and the rest run padded (mask weight 0) at the end. Images of any aspect
  ratio therefore go through the dense protocol at their own shape, never
  resized or padded, at the price of one compilation per distinct shape.

  Each view feeds several scorers (protocols) at once, with one weight per
  scorer (0 where the view is not the protocol's): the views that protocols
  share, such as dense + multi-crop's and each part's own, run once.
  """

  def __init__(self, apply_fn, variables, mesh, *, batch_size: int, mean_rgb,
               num_classes: int, keep_posteriors: bool, max_buffered: int,
               num_scorers: int = 1):
    self.apply_fn, self.variables, self.mesh = apply_fn, variables, mesh
    self.signature = _variables_signature(variables)
    self.batch_size, self.max_buffered = batch_size, max_buffered
    self.mean = jax.device_put(np.asarray(mean_rgb, np.float32), parallel.replicated(mesh))
    self.posteriors = [_Posteriors(num_classes) for _ in range(num_scorers)]
    self.keep_posteriors = keep_posteriors
    self.kept: list[list[dict]] = [[] for _ in range(num_scorers)]
    self.buckets: dict[tuple, list] = collections.defaultdict(list)
    self.buffered = 0
    self.in_flight: collections.deque = collections.deque()
    # Per scorer: top-1 errors, top-5 errors, NLL, examples, views.
    self.totals = np.zeros((num_scorers, 5))
    self.compile_seconds = 0.0

  def add_example(self, index: int, label: int, weighted_views) -> None:
    """weighted_views: [(weights, uint8 view)], one weight per scorer; each
    scorer's weights sum to one over the example's views."""
    # Every scorer opens and completes the same examples together, so their
    # free rows, and the row each gives an example, are the same.
    rows = [p.open(index, label, len(weighted_views)) for p in self.posteriors]
    if len(set(rows)) != 1:
      raise RuntimeError(f'the scorers gave example {index} different rows {rows}: a bug')
    row = rows[0]
    for weight, view in weighted_views:
      bucket = self.buckets[view.shape]
      bucket.append((row, weight, view))
      self.buffered += 1
      if len(bucket) == self.batch_size:
        self._run(view.shape)
    # Many partly filled buckets (many aspect ratios): run the fullest early.
    while self.buffered > self.max_buffered:
      self._run(max(self.buckets, key=lambda s: len(self.buckets[s])))

  def _run(self, shape: tuple) -> None:
    entries = self.buckets.pop(shape)
    self.buffered -= len(entries)
    pad = self.batch_size - len(entries)
    images = np.stack([v for _, _, v in entries] + [np.zeros(shape, np.uint8)] * pad)
    compiled, seconds = _compiled_predictor(self.apply_fn, self.mesh, images.shape,
                                            self.variables, self.signature)
    self.compile_seconds += seconds
    out = compiled(self.variables, jax.device_put(images, parallel.batch_sharded(self.mesh)),
                   self.mean)
    rows = np.array([r for r, _, _ in entries], np.int64)
    weights = np.array([w for _, w, _ in entries], np.float64).reshape(len(entries), -1)
    # The device works on this batch while the host prepares the next one.
    self.in_flight.append((out, rows, weights))
    if len(self.in_flight) > 2:
      self._collect()

  def _collect(self) -> None:
    out, rows, weights = self.in_flight.popleft()
    log_probs = np.asarray(out)[:len(rows)]
    for k, posteriors in enumerate(self.posteriors):
      with np.errstate(divide='ignore'):  # log(0): a view another scorer's only
        done = posteriors.add(rows, weights[:, k], log_probs)
      self.totals[k, 4] += np.count_nonzero(weights[:, k])
      if len(done):
        scored = posteriors.close(done)
        self.totals[k, :4] += (scored['top1_errors'].sum(), scored['top5_errors'].sum(),
                               scored['nll'].sum(), len(done))
        if self.keep_posteriors:
          self.kept[k].append({key: scored[key] for key in ('index', 'posterior')})

  def finish(self) -> None:
    for shape in sorted(self.buckets):
      self._run(shape)
    while self.in_flight:
      self._collect()


def _num_classes(model, variables, image_size: int) -> int:
  """The model's output width, from shapes alone (nothing is compiled or run)."""
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return int(jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                            variables, image).shape[-1])


def evaluate_protocol(model, variables, data_cfg, *, protocol: str = 'single',
                      **kwargs) -> dict:
  """Exact evaluation of `model` on a split under one of the paper's test
  protocols: `evaluate_protocols` with one protocol."""
  return evaluate_protocols(model, variables, data_cfg, protocols=(protocol,), **kwargs)[0]


def evaluate_protocols(model, variables, data_cfg, *, protocols: Sequence[str],
                       split: Optional[str] = None, scales=None,
                       flip: Optional[bool] = None, batch_size: int = 64, mesh=None,
                       keep_posteriors: bool = False, process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> list[dict]:
  """Exact evaluation of `model` on a split under several of the paper's test
  protocols at once, one result each, in one pass over the split: each view
  runs once for every protocol that takes it (Table 5's dense, multi-crop and
  dense + multi-crop cost what multi-crop and dense cost alone).

  Each image's posterior is the mean of the softmax outputs of all its views
  (over flips, crops, scales and, for 'dense+multicrop', both protocols, each
  protocol and scale weighing the same), as the paper averages softmax
  outputs; NLL is -log posterior[label]. Every example of the split counts
  once, whatever `batch_size` and the device count: views are batched by
  shape and the last batches are padded with masked rows.

  Args:
    model: a Flax module (its `apply(variables, images, train=False)` gives
      logits); `check_input` is called when it has one.
    variables: {'params', 'batch_stats'}, numpy (from a checkpoint) or the
      training loop's replicated arrays.
    data_cfg: the run's `data` config (image_size, mean_rgb, test_scale,
      train_scale, name, ...).
    split: default data_cfg.eval_split.
    protocols: each 'single', 'dense', 'multicrop' or 'dense+multicrop'; those
      sharing a part must take it with the same flip ('single' has none by
      default, 'dense' has it).
    scales: test scales Q: None (data_cfg.test_scale), 'auto', '256,384' or a
      sequence of ints; none may be smaller than the crop.
    flip: also average the mirror image in 'single' and 'dense'; None takes
      the paper's choice (`resolve_flip`). Multi-crop always flips.
    batch_size: views per compiled step (not images); a multiple of the
      local device count.
    mesh: a mesh of *this process's* devices (default: all local devices).
      Each process evaluates the examples i with i % process_count ==
      process_index on its own devices, and the totals are summed at the
      end, so processes need not step in lockstep.
    keep_posteriors: also return this process's `index` and `posterior`
      arrays (split order), for analysis and tests.

  Returns:
    Per protocol: top1_error, top5_error, nll, num_examples, num_views (the
    protocol's views, padding excluded), views_per_image, images_per_sec
    (excluding compilation), seconds (wall time) and compile_seconds, the
    last three of the shared pass: numbers only, so a training loop can log
    them as scalars.
  """
  start = time.perf_counter()
  parts = tuple(dict.fromkeys(p for protocol in protocols for p in protocol_parts(protocol)))
  flips = {protocol: resolve_flip(protocol, flip) for protocol in protocols}
  if len({flips[p] for p in protocols if protocol_parts(p) != ('multicrop',)}) > 1:
    raise ValueError(f'protocols {", ".join(protocols)} take their views with and without '
                     'flips: evaluate them separately')
  flip = any(flips.values())
  scales = parse_scales(scales, data_cfg)
  image_size = int(data_cfg.image_size)
  mesh = parallel.make_mesh(jax.local_devices()) if mesh is None else mesh
  devices = mesh.devices.size
  if batch_size <= 0 or batch_size % devices:
    raise ValueError(f'batch_size={batch_size} is not a positive multiple of the {devices} '
                     f'local devices: use e.g. '
                     f'--batch_size={max(1, -(-batch_size // devices)) * devices}')
  check = getattr(model, 'check_input', None)
  if check is not None:
    for part in parts:
      side = min(scales) if part == 'dense' else image_size
      check(side, side)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  split = split or data_cfg.eval_split

  source = data.open_split(data_cfg, split)
  # The union of the protocols' view groups; weights[g, k]: the weight of a
  # view of group g in protocol k's posterior (0 if k does not take it).
  groups = list(dict.fromkeys(g for p in protocols for g in view_groups(p, scales)))
  weights = np.zeros((len(groups), len(protocols)))
  for k, protocol in enumerate(protocols):
    own = view_groups(protocol, scales)
    for g, (part, q) in enumerate(groups):
      if (part, q) in own:
        weights[g, k] = 1.0 / (len(own) * views_per_group(part, flip))
  views_per_image = sum(views_per_group(part, flip) for part, _ in groups)
  largest = max(scales)

  def prepare(index: int):
    raw, label = source[index]
    # Decode at no less than the largest scale: a JPEG drafted down to the
    # smallest one would be upsampled for the others.
    image = transforms.decode(raw, min_side=largest)
    views = example_views(image, groups, image_size=image_size, flip=flip)
    return index, label, [(weights[g], v) for g, v in views]

  threads = data.decode_threads(data_cfg)
  window = max(2 * threads, 2 * -(-batch_size // views_per_image))
  run = _Evaluation(model.apply, place_variables(variables, mesh), mesh,
                    batch_size=batch_size, mean_rgb=data_cfg.mean_rgb,
                    num_classes=_num_classes(model, variables, image_size),
                    keep_posteriors=keep_posteriors,
                    max_buffered=4 * batch_size + views_per_image,
                    num_scorers=len(protocols))
  indices = range(process_index, len(source), process_count)
  # closing: an error stops the decoding threads at once, not at garbage collection.
  with contextlib.closing(_ordered_map(prepare, indices, threads, window)) as prepared:
    for index, label, views in prepared:
      run.add_example(index, label, views)
  run.finish()

  totals = run.totals
  if process_count > 1:
    # Each process scored its own examples; add the sums (float32 unless
    # jax_enable_x64: ample for counts and NLL sums).
    totals = np.sum(np.asarray(multihost_utils.process_allgather(totals), np.float64),
                    axis=0)
  seconds = time.perf_counter() - start
  results = []
  for k, protocol in enumerate(protocols):
    top1, top5, nll, count, views = totals[k]
    if count == 0:
      raise ValueError(f'split {split!r} has no examples to evaluate: choose another split '
                       '(vgg_jax.evaluate --split, or the config\'s data.eval_split)')
    result = {
        'top1_error': float(top1 / count),
        'top5_error': float(top5 / count),
        'nll': float(nll / count),
        'num_examples': int(round(count)),
        'num_views': int(round(views)),
        'views_per_image': int(sum(views_per_group(part, flip)
                                   for part, _ in view_groups(protocol, scales))),
        'images_per_sec': float(count / max(seconds - run.compile_seconds, 1e-9)),
        'seconds': seconds,
        'compile_seconds': run.compile_seconds,
    }
    if keep_posteriors:
      kept = run.kept[k] or [{'index': np.zeros(0, np.int64),
                              'posterior': np.zeros((0, run.posteriors[k].num_classes),
                                                    np.float32)}]
      index = np.concatenate([c['index'] for c in kept])
      order = np.argsort(index)
      result['index'] = index[order]
      result['posterior'] = np.concatenate([c['posterior'] for c in kept])[order]
    # The callers report the result; the details are for --v=1.
    logging.debug('%s at Q=%s%s: top-1 error %.4f, top-5 error %.4f, NLL %.4f over %d '
                  'examples (%d views), %.1f img/s (%.1f s compiling excluded)', protocol,
                  ','.join(map(str, scales)), ' with flips' if flips[protocol] else '',
                  result['top1_error'], result['top5_error'], result['nll'],
                  result['num_examples'], result['num_views'], result['images_per_sec'],
                  run.compile_seconds)
    results.append(result)
  return results
