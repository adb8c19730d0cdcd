"""Image transforms of the paper's training and test protocols, as pure numpy functions.

Training (§3.1): isotropically rescale so the smaller side is S (fixed, or drawn
per image from [S_min, S_max]), take one random crop, flip horizontally at
random, add AlexNet's PCA colour shift, subtract the mean RGB. Testing (§3.2):
rescale so the smaller side is Q and take the centre crop; the dense and
multi-crop protocols reuse `rescale`, `crop` and `flip` on their own.

Images are HxWx3 arrays (or, decoded for training, the Pillow image that
`decode_view` may return): uint8 RGB in 0..255 until they are cast to float32 for
the colour shift, then float32 in the same 0..255 units (the paper's pixels,
hence its mean-RGB values). Every random choice is made from explicit uniforms in
[0, 1) (`UNIFORMS_PER_VIEW` per training view), so a pipeline can make each
example's augmentation a function of (seed, position in the stream) and draw a
whole batch's at once.
"""

from __future__ import annotations

import collections
import functools
import io
import os
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from vgg_jax.data import resample

# AlexNet's PCA lighting noise for RGB pixels in [0, 1] (as in fb.resnet.torch).
# The columns of EIGVEC are the eigenvectors, the first being brightness.
EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                   [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]], np.float32)
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
# Bicubic with Pillow's support scaled by the reduction factor, so downscaling
# is antialiased (no aliasing at S = 256 from a 500-pixel ImageNet image).
RESAMPLE = Image.Resampling.BICUBIC

ImageData = Union[bytes, str, os.PathLike, np.ndarray]

# --------------------------------------------------------------------------
# Decoding.
# --------------------------------------------------------------------------


def decode(data: ImageData, min_side: Optional[int] = None,
           name: Optional[str] = None) -> np.ndarray:
  """Any common image (bytes, a file path, or an array) as uint8 RGB HxWx3.

  Grayscale, palette, CMYK and alpha images are converted to RGB (alpha is
  dropped); 16-bit ones keep their high byte; 32-bit integer or float pixels,
  and arrays other than uint8, are refused (no scale to 0-255 is standard).
  With `min_side`, a JPEG much larger than needed is decoded at a reduced size
  (DCT scaling by 1/2, 1/4 or 1/8) whose smaller side stays >= min_side: a
  large saving on full-size photographs, and the following antialiased rescale
  makes the result nearly the same. `name` (the file) is
  named in the error when the data cannot be read.
  """
  return np.asarray(decode_view(data, min_side, name))


def decode_view(data: ImageData, min_side: Optional[int] = None,
                name: Optional[str] = None) -> Union[np.ndarray, Image.Image]:
  """`decode`'s pixels in whichever form is quicker to get, for `train_view`,
  which resamples either as it is.

  A JPEG read at full size comes from libjpeg-turbo through simplejpeg as an
  array: 16-24 against 111-125 us per CIFAR-10 image with Pillow, whose header
  parsing in Python is most of its time (2,000 CIFAR-10 JPEGs, each decoder
  twice, 2026-12-03, while a training run shared the cores). The pixels are
  Pillow's: the same library, with the same accurate DCT and smooth chroma
  upsampling (tests/test_data.py compares them). Every other image, and a JPEG
  that Pillow should decode at a reduced size, is a loaded Pillow RGB image:
  converting that to numpy and back would cost a quarter of a CIFAR-10 image's
  pipeline time.
  """
  if isinstance(data, np.ndarray):
    return _as_rgb_array(data)
  if isinstance(data, (str, os.PathLike)):
    name = name or os.fspath(data)
    try:
      data = _read_file(data)
    except OSError as e:
      raise ValueError(f'cannot read image {name}: {e}; fix or delete the file') from e
  if is_jpeg(data):
    pixels = _decode_full_size_jpeg(data, min_side)
    if pixels is not None:
      return pixels
  try:
    with Image.open(io.BytesIO(data)) as img:
      w, h = img.size
      if img.format == 'JPEG' and _reduced_decode(min_side, h, w):
        factor = min_side / min(w, h)
        img.draft('RGB', (int(np.ceil(w * factor)), int(np.ceil(h * factor))))
      img.load()
      return _as_rgb(img)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    where = f' {name}' if name else ''
    # Pillow names the in-memory buffer, not the file: say what it means instead.
    why = 'not an image format Pillow reads' if isinstance(e, UnidentifiedImageError) else e
    raise ValueError(f'cannot read image{where}: {why}; fix or delete the file') from e


_JPEG_START = b'\xff\xd8\xff'


def is_jpeg(data: bytes) -> bool:
  return data[:3] == _JPEG_START


def _read_file(path: Union[str, os.PathLike]) -> bytes:
  # Fewest system calls: a CIFAR-10 JPEG (1-2 KB) is one open, one read and one
  # close, 4.1 against 8.9 us for open/fstat/read/read-to-EOF (and 7.4-9.5 for
  # `open(path, 'rb').read()`), a quarter of its decode. POSIX reads a regular file
  # in full up to its end, so a read shorter than asked for is the end.
  fd = os.open(path, os.O_RDONLY)
  try:
    data = os.read(fd, _FIRST_READ)
    if len(data) < _FIRST_READ:
      return data
    data += os.read(fd, max(os.fstat(fd).st_size - len(data), 0) + 1)
    while True:  # one read returns at most 2 GiB; a growing file reads to its end
      more = os.read(fd, 1 << 20)
      if not more:
        return data
      data += more
  finally:
    os.close(fd)


_FIRST_READ = 1 << 16


def _reduced_decode(min_side: Optional[int], height: int, width: int) -> bool:
  return min_side is not None and min_side / min(height, width) < 0.5


def decodes_at_full_size(full_size: tuple, smallest_min_side: int) -> bool:
  """Whether `decode_view` gives an image of `full_size` (height, width) at full
  size for every `min_side` >= `smallest_min_side`, so the same pixels at any scale."""
  return not _reduced_decode(smallest_min_side, *full_size)


def _decode_full_size_jpeg(data: bytes, min_side: Optional[int]) -> Optional[np.ndarray]:
  """The JPEG's RGB pixels by simplejpeg; None where Pillow should decode it: a
  reduced-size decode (Pillow's own choice of scale), colour spaces other than
  YCbCr and grey (simplejpeg's CMYK conversion differs from Pillow's by a grey
  level), and damaged data, whose error Pillow then gives."""
  try:
    height, width, colour_space, _ = simplejpeg.decode_jpeg_header(data)
    if colour_space not in ('YCbCr', 'Gray') or _reduced_decode(min_side, height, width):
      return None
    return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=False, fastupsample=False)
  except ValueError:
    return None


def _as_rgb(img: Image.Image) -> Image.Image:
  if img.mode == 'RGB':
    return img
  if img.mode.startswith('I;16'):
    # Pillow's conversion clips 16-bit grey at 255 (a white image): keep the high
    # byte instead, as Pillow itself does when it opens a 16-bit colour PNG.
    grey = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    return Image.fromarray(grey, 'L').convert('RGB')
  if img.mode in ('I', 'F'):
    raise ValueError(f'its pixels are 32-bit {"integers" if img.mode == "I" else "floats"}, '
                     'which have no standard 8-bit scale: save it with 8 or 16 bits per '
                     'channel')
  if img.mode == 'P' and 'transparency' in img.info:
    img = img.convert('RGBA')  # Pillow warns on palette -> RGB with transparency.
  return img.convert('RGB')


def _as_rgb_array(image: np.ndarray) -> np.ndarray:
  if image.dtype != np.uint8:  # a cast would wrap or truncate the values silently
    raise ValueError(f'image arrays must be uint8 (got {image.dtype}): scale them to 0-255 '
                     'first')
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.asarray(image[..., :3], np.uint8)


# --------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------


# Cached: a training image asks three times (its crop, its grouping, its box),
# and CIFAR-10's batches ask one question (32 x 32 at S) 384 times.
@functools.lru_cache(maxsize=4096)
def rescaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
  """(height, width) after an isotropic rescale that makes the smaller side `scale`."""
  if height <= width:
    return scale, max(scale, int(round(width * scale / height)))
  return max(scale, int(round(height * scale / width))), scale


def rescale(image: np.ndarray, scale: int) -> np.ndarray:
  """Isotropic rescale of a uint8 image so that its smaller side is `scale`."""
  new_size = rescaled_size(*image.shape[:2], scale)
  if new_size == image.shape[:2]:
    return image
  if _is_rgb_array(image) and resample.available():
    out = np.empty((*new_size, 3), np.uint8)
    whole = (0, 0, image.shape[1], image.shape[0])  # Pillow's box when none is given
    resample.resample_boxes([_with_contiguous_rows(image)], [whole], [False], out[None])
    return out
  return np.asarray(_rescaled_pil(image, scale))


def _rescaled_pil(image: np.ndarray, scale: int) -> Image.Image:
  # Stays a Pillow image so that a following crop copies only the crop out:
  # converting a whole 512-pixel rescale to numpy costs more than the crop.
  h, w = image.shape[:2]
  new_h, new_w = rescaled_size(h, w, scale)
  pil = Image.fromarray(image)
  if (new_h, new_w) == (h, w):
    return pil
  return pil.resize((new_w, new_h), RESAMPLE)


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  """The size x size window whose top-left corner is (top, left)."""
  h, w = image.shape[:2]
  if not (0 <= top <= h - size and 0 <= left <= w - size):
    raise ValueError(f'a {size}x{size} crop at ({top}, {left}) does not fit in a '
                     f'{h}x{w} image')
  return image[top:top + size, left:left + size]


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  return crop(image, (h - size) // 2, (w - size) // 2, size)


def flip(image: np.ndarray) -> np.ndarray:
  """Horizontal (left-right) mirror image."""
  return image[:, ::-1]


def scale_bounds(scale_range: Union[int, Sequence[int]]) -> tuple[int, int]:
  if not isinstance(scale_range, (tuple, list)) and np.ndim(scale_range) == 0:
    return int(scale_range), int(scale_range)
  lo, hi = scale_range
  lo, hi = int(lo), int(hi)
  if lo > hi:
    raise ValueError(f'scale range {tuple(scale_range)} has min > max: give it as (min, max)')
  return lo, hi


# --------------------------------------------------------------------------
# Random draws, from uniforms in [0, 1).
# --------------------------------------------------------------------------

# A training view's uniforms, by column: S, the crop's top and left, the mirror,
# and four for the three lighting alphas (two Box-Muller pairs).
UNIFORMS_PER_VIEW = 8
SCALE, TOP, LEFT, MIRROR = 0, 1, 2, 3
ALPHAS = slice(4, 8)


def uniform_integers(u, count) -> np.ndarray:
  """Integers uniform over [0, count) from uniforms u (arrays broadcast). In
  float64, u < 1 gives u * count < count for every count below 2^52."""
  return np.floor(np.asarray(u) * count).astype(np.int64)


def draw_scales(scale_range: Union[int, Sequence[int]], u) -> np.ndarray:
  """S per image from its uniform: fixed, or uniform over the integers in [S_min, S_max]."""
  lo, hi = scale_bounds(scale_range)
  return lo + uniform_integers(u, hi - lo + 1)


def draw_crop(height: int, width: int, scale: int, size: int, u_top: float,
              u_left: float) -> tuple[int, int]:
  """(top, left) of a uniformly random size x size window of a height x width
  image rescaled to S = `scale`."""
  new_h, new_w = rescaled_size(height, width, scale)
  if min(new_h, new_w) < size:
    raise ValueError(f'cannot take a {size}x{size} crop of a {new_h}x{new_w} '
                     'image: the scale must be at least the crop size')
  return int(u_top * (new_h - size + 1)), int(u_left * (new_w - size + 1))


def draw_mirrors(u) -> np.ndarray:
  """Whether each crop is flipped: with probability 1/2."""
  return np.asarray(u) < 0.5


def standard_normals(u: np.ndarray) -> np.ndarray:
  """[..., 2k] uniforms -> [..., 2k] independent standard normals (Box-Muller,
  pairs of columns). numpy's log and cos may round the last of float64's bits
  differently on another CPU; float32 offsets almost never see it."""
  u = np.asarray(u, np.float64)
  radius = np.sqrt(-2.0 * np.log1p(-u[..., 0::2]))  # 1 - u > 0: never log(0)
  angle = 2.0 * np.pi * u[..., 1::2]
  normals = np.empty_like(u)
  normals[..., 0::2] = radius * np.cos(angle)
  normals[..., 1::2] = radius * np.sin(angle)
  return normals


def draw_alphas(u: np.ndarray, color_shift: float) -> np.ndarray:
  """[..., 3] lighting alphas, normal with standard deviation `color_shift`, from
  the [..., 4] uniforms of `ALPHAS`."""
  if color_shift == 0:
    return np.zeros(np.shape(u)[:-1] + (3,))
  return standard_normals(u)[..., :3] * color_shift


# --------------------------------------------------------------------------
# Colour.
# --------------------------------------------------------------------------


def pca_colour_offset(alphas: np.ndarray, pixel_scale: float = 255.0) -> np.ndarray:
  """The RGB offset of AlexNet's lighting noise: EIGVEC @ (alphas * EIGVAL), for
  [3] alphas or a batch of them.

  The eigen-decomposition is for pixels in [0, 1]; `pixel_scale` converts the
  offset to the image's units (255 for 0..255 pixels).
  """
  weights = np.asarray(alphas, np.float32) * EIGVAL  # [..., 3]
  # Summed term by term, not by a matmul: a row's offset is the same bits in
  # any batch (BLAS rounds by the batch's shape).
  offset = weights[..., :1] * EIGVEC[:, 0]
  offset = offset + weights[..., 1:2] * EIGVEC[:, 1]
  offset = offset + weights[..., 2:3] * EIGVEC[:, 2]
  return offset * np.float32(pixel_scale)


# --------------------------------------------------------------------------
# The two protocols.
# --------------------------------------------------------------------------


def height_width(image: Union[np.ndarray, Image.Image]) -> tuple[int, int]:
  if isinstance(image, Image.Image):
    return image.height, image.width
  return image.shape[0], image.shape[1]


def rescaled_crop(image: Union[np.ndarray, Image.Image], scale: int, top: int, left: int,
                  size: int, mirrored: bool = False) -> np.ndarray:
  """`crop(rescale(image, scale), top, left, size)`, resampling the crop only;
  `flip`ped too where `mirrored`.

  Pillow's `resize(box=...)` computes the full resize's filter taps for the
  crop's pixels alone: at S = 512 for a 224 crop a fifth of the resampling. The
  box's float coordinates round a few pixels to the neighbouring grey level
  (at most 1 of 255, under 1 % of pixels; tests/test_data.py bounds both).
  """
  out = np.empty((size, size, 3), np.uint8)
  rescaled_crop_into(out, image, scale, top, left, mirrored)
  return out


def rescaled_crop_into(out: np.ndarray, image: Union[np.ndarray, Image.Image], scale: int,
                       top: int, left: int, mirrored: bool = False) -> None:
  """`rescaled_crop`, written into `out` (uint8 [size, size, 3], C-contiguous, e.g.
  a row of a batch).

  RGB arrays go to the compiled port of Pillow's resize where it is available
  (`resample`: the same pixels, 4x faster on a 224 crop). With Pillow itself,
  Pillow mirrors the resampled crop in a quarter of the time numpy takes to copy
  a reversed 224x224x3 view (75 against 270 us, timed while a training run
  shared the cores, 2026-12-03). Arrays enter and leave Pillow as raw bytes:
  `frombytes` and `tobytes` skip the array-interface round trips of `fromarray`
  and `asarray` (3 of a CIFAR-10 image's ~30 us).
  """
  size = out.shape[0]
  height, width = height_width(image)
  new_h, new_w = rescaled_size(height, width, scale)
  if not (0 <= top <= new_h - size and 0 <= left <= new_w - size):
    raise ValueError(f'cannot take a {size}x{size} crop at ({top}, {left}) of a '
                     f'{new_h}x{new_w} image: the scale must be at least the crop size')
  if (new_h, new_w) == (height, width):
    crop = np.asarray(image)[top:top + size, left:left + size]
    out[...] = flip(crop) if mirrored else crop
    return
  box = crop_box(height, width, scale, top, left, size)
  if isinstance(image, Image.Image) and image.mode == 'RGB' and resample.available():
    # A photograph Pillow decoded at a reduced size: unpacking it to an array
    # costs a tenth of what the compiled resize saves.
    image = np.asarray(image)
  if _is_rgb_array(image) and resample.available():
    resample.resample_boxes([_with_contiguous_rows(image)], [box], [mirrored], out[None])
    return
  if _is_rgb_array(image):
    image = Image.frombytes('RGB', (width, height), np.ascontiguousarray(image))
  elif not isinstance(image, Image.Image):
    image = Image.fromarray(image)
  crop = image.resize((size, size), RESAMPLE, box=box)
  if mirrored:
    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  out[...] = np.frombuffer(crop.tobytes(), np.uint8).reshape(out.shape)


def crop_box(height: int, width: int, scale: int, top: int, left: int,
             size: int) -> tuple[float, float, float, float]:
  """The region of a height x width image that becomes the size x size crop at
  (top, left) of its rescale to S = `scale`, as Pillow's `resize(box=...)` takes it."""
  new_h, new_w = rescaled_size(height, width, scale)
  sx, sy = width / new_w, height / new_h
  return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def _with_contiguous_rows(image: np.ndarray) -> np.ndarray:
  return image if image.strides[1:] == (3, 1) else np.ascontiguousarray(image)


class CropView(NamedTuple):
  """Where one training crop comes from: `rescaled_crop`'s arguments but the size."""
  image: Union[np.ndarray, Image.Image]
  scale: int
  top: int
  left: int
  mirrored: bool


class GroupedCrops:
  """Fills out[i] with rescaled_crop(*view) for each `add(i, view)`, by `finish`.

  Small rescaled RGB arrays (CIFAR-10's; not decoded photographs, which are not
  kept for the batch) wait for `finish`, which resamples them together: a
  call's Python, not the arithmetic, was most of a 32x32 crop's time. The
  compiled `resample` takes them all in one call. Pillow alone resamples in two
  passes, each rounding to uint8: along rows to the crop's width, then along
  columns; images of one size and scale whose crops share a column offset
  `left` share the first pass, so stacked top to bottom they take it in one
  call, and side by side, those sharing `top` take the second in one: 12
  resizes for a batch of 128 CIFAR-10 images at S = 37. Other views are
  resampled as they are added.
  """

  def __init__(self, out: np.ndarray):
    self.out = out
    self.compiled = resample.available()  # one resampler for the whole batch
    self.views = {}
    self.groups = collections.defaultdict(list)

  def add(self, i: int, view: CropView) -> None:
    size = self.out.shape[1]
    if self.compiled and _small_and_rescaled(view, size):
      self.views[i] = view
    elif not self.compiled and resampled_in_groups(view, size):
      self.views[i] = view
      self.groups[(*view.image.shape[:2], view.scale)].append(i)
    else:
      rescaled_crop_into(self.out[i], *view)

  def finish(self) -> None:
    if self.compiled and self.views:
      self._resample_compiled()
    for (height, width, scale), members in self.groups.items():
      if len(members) == 1:
        rescaled_crop_into(self.out[members[0]], *self.views[members[0]])
      else:
        _grouped_rescaled_crops_into(self.out, self.views, members, height, width, scale)
    self.views.clear()
    self.groups.clear()

  def _resample_compiled(self) -> None:
    size = self.out.shape[1]
    rows = list(self.views)
    views = [self.views[i] for i in rows]
    boxes = [crop_box(*v.image.shape[:2], v.scale, v.top, v.left, size) for v in views]
    resample.resample_boxes([_with_contiguous_rows(v.image) for v in views], boxes,
                            [v.mirrored for v in views], self.out, rows)


# Grouping saves a call's Python, ~10 us, which matters for small images only
# (a 224 crop of a photograph resamples in 0.3-2 ms), while holding a batch's
# decoded photographs for it would cost memory (144 MB for 256 of 500x375 per
# pipeline thread).
_GROUPED_MAX_PIXELS = 96 * 96


def _small_and_rescaled(view: CropView, size: int) -> bool:
  image = view.image
  if not _is_rgb_array(image) or image.shape[0] * image.shape[1] > _GROUPED_MAX_PIXELS:
    return False
  height, width = image.shape[:2]
  return rescaled_size(height, width, view.scale) != (height, width)


def resampled_in_groups(view: CropView, size: int) -> bool:
  """Whether `GroupedCrops` resamples `view` (for a size x size crop) in Pillow
  together with others: a small RGB array that is rescaled, and that Pillow
  resamples along rows first."""
  return _small_and_rescaled(view, size) and _rows_first(*view.image.shape[:2], size)


def _is_rgb_array(image) -> bool:
  return (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
          and image.dtype == np.uint8)


def _rows_first(height: int, width: int, size: int) -> bool:
  """Whether Pillow resamples a height x width image to size x size along rows
  first. Pillow 13 goes down the columns first where the height shrinks by more
  than twice what the width does (found by comparing its resize with both
  single-pass orders on 3,000 random shapes, boxes and sizes; tested);
  earlier versions always go along rows first."""
  return not (height > size and height - size > 2 * (width - size))


def _grouped_rescaled_crops_into(out, views, members, height, width, scale) -> None:
  size = out.shape[1]
  new_h, new_w = rescaled_size(height, width, scale)
  sx, sy = width / new_w, height / new_h
  along_rows = {}
  for left, rows in _by(views, members, 'left').items():
    tall = np.concatenate([views[i].image for i in rows])  # (n * height, width, 3)
    pil = Image.frombytes('RGB', (width, len(rows) * height), tall)
    pil = pil.resize((size, len(rows) * height), RESAMPLE,
                     box=(left * sx, 0, (left + size) * sx, len(rows) * height))
    resampled = np.frombuffer(pil.tobytes(), np.uint8).reshape(len(rows), height, size, 3)
    along_rows.update(zip(rows, resampled))
  for top, rows in _by(views, members, 'top').items():
    wide = np.stack([along_rows[i] for i in rows], axis=1).reshape(height, len(rows) * size, 3)
    pil = Image.frombytes('RGB', (len(rows) * size, height), wide)
    pil = pil.resize((len(rows) * size, size), RESAMPLE,
                     box=(0, top * sy, len(rows) * size, (top + size) * sy))
    crops = np.frombuffer(pil.tobytes(), np.uint8).reshape(size, len(rows), size, 3)
    for j, i in enumerate(rows):
      out[i] = flip(crops[:, j]) if views[i].mirrored else crops[:, j]


def _by(views, members, field):
  groups = collections.defaultdict(list)
  for i in members:
    groups[getattr(views[i], field)].append(i)
  return groups


def train_view(image: Union[np.ndarray, Image.Image], uniforms: np.ndarray, *,
               image_size: int, scale: int, color_shift: float,
               mean_rgb: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """One augmented training crop: uint8 [image_size, image_size, 3] pixels and the
  float32 [3] offset to add to them.

  `crop.astype(float32) + offset` (which the training step computes on the
  device, see `vgg_jax.train.network_input`) equals the paper's steps one after
  the other (rescale to S, a random crop, a flip at random, the PCA colour
  shift, the mean subtracted; tests/test_data.py composes them) to within one
  grey level (see `rescaled_crop`), without resampling the pixels outside the
  crop. Shipping uint8 takes a quarter of float32's bytes and no float work
  on the host. `scale` is this image's S (`draw_scales` of `uniforms[SCALE]`,
  drawn first so that decoding can use it); the other choices come from the
  other columns of `uniforms` ([UNIFORMS_PER_VIEW]).
  """
  top, left = draw_crop(*height_width(image), scale, image_size, uniforms[TOP], uniforms[LEFT])
  mirrored = bool(draw_mirrors(uniforms[MIRROR]))
  crop = rescaled_crop(image, scale, top, left, image_size, mirrored)
  return crop, colour_offset(draw_alphas(uniforms[ALPHAS], color_shift), mean_rgb)


def colour_offset(alphas: np.ndarray, mean_rgb: Sequence[float]) -> np.ndarray:
  """float32 [..., 3]: the PCA colour shift of `alphas` minus the mean, both being
  per-channel offsets: one add on the device."""
  return pca_colour_offset(alphas) - np.asarray(mean_rgb, np.float32)
