"""`vgg_shapes`: a procedurally generated image-classification dataset, shipped as code.

Ten classes of geometric shapes (`CLASS_NAMES`) drawn at a random position,
tilt, colour and size on a textured, noisy, lightly cluttered background. It exists
so that the whole project (training, resume, evaluation protocols, scale
ablations) runs and *learns* on a laptop CPU in minutes with no download, and so
that tests have real data. The object's diameter varies log-uniformly over
`OBJECT_SIZES` (more than 3x), so, as on ImageNet, the training scale S and the
test scale Q matter.

Every image is a pure function of (config seed, split, index): preparing twice
gives the same bytes. Rendering is vectorised numpy over chunks of `CHUNK`
images, stored as raw uint8 pixels; the default config prepares in seconds.

It is a regular TFDS builder (registered as 'vgg_shapes' when this module is
imported), written as ArrayRecord so it can be read by random access
(`tfds.data_source`, grain). `prepare` builds it once per data_dir, safely when
several processes on one machine race to do so.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import os
from typing import Callable, Iterator, Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# The constants below define the data: changing any of them changes every
# image, so bump `VggShapes.VERSION` with them (prepared copies are reused by
# version). Their values make the task learnable by a narrow VGG-A on a CPU in
# minutes while leaving real work for the network: colour-invariant shapes at
# a 3x range of sizes among texture, noise and clutter.
CLASS_NAMES = ('disc', 'ring', 'square', 'frame', 'triangle', 'cross', 'star',
               'crescent', 'bar', 'heart')
IMAGE_SIDE = 64
# Diameter of the shape's bounding circle, in pixels of the stored image: a
# 3.2x range. The smallest still shows its outline after the 2x downscale at
# S = 32; the largest overflows a 32 crop at S = 64.
OBJECT_SIZES = (15.0, 48.0)
# The shape's centre stays within this many pixels of the image centre, so a
# random crop at the largest training scale usually still contains most of it.
CENTRE_JITTER = 4.0
# Nuisances: background noise std range (0..255 units), clutter segments per
# image, and the least RGB distance between the shape and its background.
NOISE_SIGMAS = (2.0, 12.0)
# Shapes are rotated uniformly within +-ROTATION degrees of upright.
ROTATION = 30.0
CLUTTER = 3
MIN_CONTRAST = 120.0
# Images rendered per vectorised chunk: a chunk's random stream is seeded by
# (seed, split, chunk), so this constant is part of the dataset's definition.
CHUNK = 500
SPLITS = ('train', 'test')

# --------------------------------------------------------------------------
# Shapes as signed distance functions.
#
# Each takes canonical coordinates (the shape's circumradius is 1, so the
# drawn object fills a circle of the chosen diameter) and returns the signed
# distance to the outline in the same units, negative inside. Multiplied by
# the radius in pixels it gives a one-pixel antialiased edge for free.
# --------------------------------------------------------------------------


def _box(x, y, half_x, half_y):
  qx, qy = np.abs(x) - half_x, np.abs(y) - half_y
  outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
  return outside + np.minimum(np.maximum(qx, qy), 0)


def _disc(x, y):
  return np.hypot(x, y) - 1


def _ring(x, y):
  return np.abs(np.hypot(x, y) - 0.72) - 0.28


def _square(x, y):
  return _box(x, y, 0.71, 0.71)


def _frame(x, y):
  # A hollow square: outer half-side 0.71, inner 0.41.
  return np.abs(_box(x, y, 0.56, 0.56)) - 0.15


def _triangle(x, y):
  # Equilateral, circumradius 1, so its edges sit at distance 0.5 (the apothem).
  normals = np.deg2rad([30.0, 150.0, 270.0])
  return np.max([x * np.cos(a) + y * np.sin(a) for a in normals], axis=0) - 0.5


def _cross(x, y):
  return np.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95))


def _star(x, y, points=5, inner=0.45):
  # Fold the plane into one half-spike wedge [0, pi/points]; there the outline
  # is the segment from the tip A = (1, 0) to the inner corner B.
  sector = 2 * np.pi / points
  phi = np.abs(np.mod(np.arctan2(y, x) + sector / 2, sector) - sector / 2)
  r = np.hypot(x, y)
  qx, qy = r * np.cos(phi), r * np.sin(phi)
  bx, by = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
  ex, ey = bx - 1, by
  t = np.clip(((qx - 1) * ex + qy * ey) / (ex * ex + ey * ey), 0, 1)
  dist = np.hypot(qx - 1 - t * ex, qy - t * ey)
  inside = ex * qy - ey * (qx - 1) > 0  # same side of AB as the centre
  return np.where(inside, -dist, dist)


def _crescent(x, y):
  return np.maximum(np.hypot(x, y) - 1, 0.8 - np.hypot(x - 0.45, y))


def _bar(x, y):
  return _box(x, y, 0.97, 0.26)


def _heart(x, y):
  # Inigo Quilez's exact heart SDF; his heart spans y in [0, 1.1] and
  # x in [-0.6, 0.6], so rescale it to fill the unit circle.
  scale = 0.55
  x, y = np.abs(x) * scale, y * scale + 0.53
  upper = np.hypot(x - 0.25, y - 0.75) - np.sqrt(2) / 4
  m = 0.5 * np.maximum(x + y, 0)
  lower = np.sqrt(np.minimum(x**2 + (y - 1)**2, (x - m)**2 + (y - m)**2))
  lower = lower * np.sign(x - y)
  return np.where(x + y > 1, upper, lower) / scale


SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _disc, _ring, _square, _frame, _triangle, _cross, _star, _crescent, _bar,
    _heart)
assert len(SHAPES) == len(CLASS_NAMES)

# --------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------


def _smooth_noise(rng, n, side, cells):
  """Per-image low-frequency noise in [0, 1]: a random grid upsampled bilinearly."""
  grid = rng.uniform(0, 1, (n, cells, cells)).astype(np.float32)
  # Bilinear interpolation is linear, so it is one matrix on each axis.
  pos = (np.arange(side) + 0.5) / side * (cells - 1)
  lo = np.minimum(np.floor(pos).astype(int), cells - 2)
  frac = (pos - lo).astype(np.float32)
  up = np.zeros((side, cells), np.float32)
  up[np.arange(side), lo] = 1 - frac
  up[np.arange(side), lo + 1] = frac
  rows = (grid.reshape(n * cells, cells) @ up.T).reshape(n, cells, side)
  return np.einsum('hi,niw->nhw', up, rows)


def _contrasting_colours(rng, background, min_distance, candidates=8):
  """A random colour per image at least `min_distance` (RGB, 0..255) from its background.

  Without this a few percent of images would hide their shape in the
  background and cap the achievable accuracy for no instructive reason.
  """
  n = len(background)
  colours = rng.uniform(90, 255, (n, candidates, 3)).astype(np.float32)
  dist = np.linalg.norm(colours - background[:, None], axis=-1)
  ok = dist >= min_distance
  # The first acceptable candidate, or the farthest when none is.
  pick = np.where(ok.any(axis=1), ok.argmax(axis=1), dist.argmax(axis=1))
  return colours[np.arange(n), pick]


def _segments_alpha(rng, n, side, count, samples=25):
  """Coverage of up to `count` random thin line segments per image (clutter).

  Each segment is splatted as `samples` bilinear points rather than evaluated
  at every pixel: clutter touches a few dozen pixels, so this is ~100x cheaper.
  """
  start = rng.uniform(0, side, (n, count, 1, 2))
  angle = rng.uniform(0, 2 * np.pi, (n, count, 1))
  length = rng.uniform(4, 12, (n, count, 1))
  present = rng.uniform(0, 1, (n, count, 1)) < 0.6
  t = np.linspace(0, 1, samples)
  # Pixel centres sit at i + 0.5, so shift by half a pixel before flooring.
  x = start[..., 0] + t * np.cos(angle) * length - 0.5
  y = start[..., 1] + t * np.sin(angle) * length - 0.5
  x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
  fx, fy = x - x0, y - y0
  # Spread each point's share of the segment's length over its 4 neighbours.
  weight = np.broadcast_to(present * length * 1.6 / samples, x.shape)
  image = np.arange(n)[:, None, None] * side * side
  flat, mass = [], []
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi < side) & (yi >= 0) & (yi < side)
      flat.append((image + yi * side + xi)[inside])
      mass.append((weight * wy * wx)[inside])
  alpha = np.bincount(np.concatenate(flat), np.concatenate(mass),
                      minlength=n * side * side)
  return np.minimum(alpha, 1).astype(np.float32).reshape(n, side, side)


def render(rng: np.random.Generator, labels: np.ndarray, side: int = IMAGE_SIDE):
  """Draws one image per label.

  Returns (images uint8 [n, side, side, 3], object diameters float32 [n]).
  Written as few passes over the [n, side, side, 3] canvas as possible: they
  dominate the time to prepare the dataset.
  """
  n = len(labels)
  f32 = np.float32
  yy, xx = np.meshgrid(np.arange(side, dtype=f32) + 0.5,
                       np.arange(side, dtype=f32) + 0.5, indexing='ij')

  # Background: two nearby colours mixed by smooth noise, plus thin clutter.
  # Backgrounds are dark and objects light (see _contrasting_colours): with
  # both drawn from the whole colour cube a narrow VGG needed thousands of
  # steps to find colour-invariant edges, far past a 10-minute CPU budget.
  base = rng.uniform(0, 110, (n, 1, 1, 3)).astype(f32)
  other = np.clip(base + rng.normal(0, 45, (n, 1, 1, 3)), 0, 255).astype(f32)
  mix = _smooth_noise(rng, n, side, cells=6)[..., None]
  image = base + (other - base) * mix
  clutter = _segments_alpha(rng, n, side, CLUTTER)[..., None]
  clutter_colour = rng.uniform(0, 255, (n, 1, 1, 3)).astype(f32)
  image += (clutter_colour - image) * clutter

  # The object: size log-uniform, so every octave of scale is equally common.
  lo, hi = np.log(OBJECT_SIZES[0]), np.log(OBJECT_SIZES[1])
  diameter = np.exp(rng.uniform(lo, hi, n)).astype(f32)
  radius = diameter[:, None, None] / 2
  centre = side / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, (n, 2))
  theta = np.deg2rad(rng.uniform(-ROTATION, ROTATION, (n, 1, 1)))
  cos, sin = np.cos(theta).astype(f32), np.sin(theta).astype(f32)
  dx = xx - centre[:, 0, None, None].astype(f32)
  dy = yy - centre[:, 1, None, None].astype(f32)
  u = (cos * dx + sin * dy) / radius
  v = (cos * dy - sin * dx) / radius
  sdf = np.empty((n, side, side), f32)
  for label, shape in enumerate(SHAPES):
    idx = labels == label
    if idx.any():
      sdf[idx] = shape(u[idx], v[idx])
  coverage = np.clip(0.5 - sdf * radius, 0, 1)

  # Colour far from the background, shaded by a random linear light.
  colour = _contrasting_colours(rng, ((base + other) / 2)[:, 0, 0], MIN_CONTRAST)
  light = rng.uniform(0, 2 * np.pi, (n, 1, 1))
  shade = 1 + 0.25 * (np.cos(light).astype(f32) * u
                      + np.sin(light).astype(f32) * v)
  image += (colour[:, None, None] * (shade * coverage)[..., None]
            - image * coverage[..., None])

  # Sensor noise, the same on the three channels (a third of the cost).
  sigma = rng.uniform(*NOISE_SIGMAS, (n, 1, 1, 1)).astype(f32)
  image += sigma * rng.standard_normal((n, side, side, 1), dtype=f32) + 0.5
  return np.clip(image, 0, 255, out=image).astype(np.uint8), diameter


def render_chunk(seed: int, split: str, chunk: int, count: int,
                 side: int = IMAGE_SIDE):
  """Images `chunk * CHUNK ... + count` of a split: (images, labels, diameters).

  Classes are exactly balanced within every full chunk.
  """
  rng = np.random.default_rng([seed, SPLITS.index(split), chunk])
  labels = rng.permutation(np.arange(CHUNK) % len(CLASS_NAMES))[:count]
  images, diameters = render(rng, labels, side)
  return images, labels, diameters


def generate(seed: int, split: str,
             num_examples: int) -> Iterator[tuple[int, np.ndarray, int, float]]:
  """Yields (index, image, label, diameter) for a whole split, in order.

  Chunks are rendered two at a time in threads (numpy releases the GIL); each
  chunk depends only on its own seed, so the result is that of a plain loop.
  """
  pending = collections.deque()

  def emit(start, future):
    images, labels, diameters = future.result()
    for i, image in enumerate(images):
      yield start + i, image, int(labels[i]), float(diameters[i])

  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    for chunk, start in enumerate(range(0, num_examples, CHUNK)):
      count = min(CHUNK, num_examples - start)
      pending.append((start, pool.submit(render_chunk, seed, split, chunk, count)))
      if len(pending) > 2:  # Bounded lookahead: memory stays a few chunks.
        yield from emit(*pending.popleft())
    while pending:
      yield from emit(*pending.popleft())


# --------------------------------------------------------------------------
# The TFDS builder.
# --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class VggShapesConfig(tfds.core.BuilderConfig):
  num_train: int = 0
  num_test: int = 0
  seed: int = 0


class VggShapes(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes for VGG experiments; prepared locally, no download."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': 'Light objects on dark backgrounds, tilt within 30 degrees, '
                            'sizes 15-48 px: learnable in minutes.'}
  BUILDER_CONFIGS = [
      VggShapesConfig(name='default', num_train=16_000, num_test=2_000, seed=0,
                      description='Default size: trains a narrow VGG-A on CPU.'),
      VggShapesConfig(name='tiny', num_train=300, num_test=100, seed=1,
                      description='A few hundred images, for tests.'),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup imports `importlib_resources`, which it does not declare
    # as a dependency on Python >= 3.9 (tensorflow/datasets#11212).
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Raw pixels rather than PNG: encoding and decoding 64x64 noisy
            # images would cost more than rendering and augmenting them.
            'image': tfds.features.Tensor(
                shape=(IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
            # Diameter of the shape in pixels: lets analyses bin accuracy by scale.
            'object_size': tfds.features.Scalar(np.float32),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split, num_examples):
    for index, image, label, diameter in generate(
        self.builder_config.seed, split, num_examples):
      yield f'{split}-{index:07d}', {'image': image, 'label': label,
                                     'object_size': np.float32(diameter)}


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive advisory lock, so racing processes prepare only once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(data_dir: Optional[str] = None, config: Optional[str] = None) -> VggShapes:
  """The prepared builder for `config` ('default' or 'tiny') under data_dir.

  The first call generates the data (seconds); later calls only read metadata.
  Processes racing on one machine serialise on a lock file next to the data,
  and TFDS's write-then-rename keeps readers from seeing a partial dataset.
  """
  config = config or VggShapes.DEFAULT_CONFIG_NAME
  names = [c.name for c in VggShapes.BUILDER_CONFIGS]
  if config not in names:
    raise ValueError(f'unknown vgg_shapes builder_config {config!r}: choose one '
                     f'of {names}')
  make = lambda: VggShapes(config=config, data_dir=data_dir,
                           file_format='array_record')
  builder = make()
  if builder.is_prepared():
    return builder
  lock = os.path.join(os.fspath(builder.data_dir_root),
                      f'.vgg_shapes-{config}.lock')
  with file_lock(lock):
    builder = make()  # Another process may have finished while we waited.
    if not builder.is_prepared():
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return make()
