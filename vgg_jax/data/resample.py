"""Pillow's antialiased bicubic `resize(box=...)` of uint8 RGB arrays, bit for bit,
compiled from resample.cc: a batch's training crops in one call.

Why: Pillow's resize was most of a training image's pipeline time (a 224 crop
of a stored 500x375 photograph: ~800 of ~1,060 us on a 2-core AMD EPYC, its
arithmetic one value at a time, after ~70 us of unpacking into Pillow), and
small images paid Pillow's per-call Python instead (`transforms.GroupedCrops`).
resample.cc ports Pillow 13's algorithm (taps, pass order, rounding between
passes) with vectorised sums (that crop in 213 us, 4.4x faster; a batch's
CIFAR-10 crops 5.6 us each); tests/test_resample.py holds it to Pillow's
pixels on thousands of random shapes, boxes and sizes. Where it cannot be
built or loaded (no C++ compiler, another Pillow), `available()` is False, says
why once, and `vgg_jax.data.transforms` keeps Pillow: the same pixels, slower.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
from typing import Optional, Sequence

import numpy as np
import PIL

from vgg_jax import native

# Set to 0, crops are resampled by Pillow itself (for comparisons).
SWITCH_ENV = 'VGG_JAX_NATIVE_RESAMPLE'
SOURCES = (pathlib.Path(__file__).with_name('resample.cc'),)
# No contraction into FMAs: the taps must round as Pillow's do.
_FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC', '-ffp-contract=off')
# The Pillow whose algorithm resample.cc ports (13 changed the passes' order).
PILLOW_MAJOR = '13'


@functools.cache
def _library() -> ctypes.CDLL:
  lib = ctypes.CDLL(str(native.build('resample', SOURCES, _FLAGS)))
  lib.VggJaxResampleBoxes.restype = None
  lib.VggJaxResampleBoxes.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_int32, ctypes.c_int32]
  return lib


@functools.cache
def unavailable_reason() -> Optional[str]:
  """None where the compiled resize runs in this process, else why not."""
  other_pillow = PIL.__version__.split('.')[0] != PILLOW_MAJOR
  return native.unavailable_reason(
      SWITCH_ENV, _library, 'compiled resampling unavailable, Pillow resamples the crops '
      '(the same pixels, slower)', f'ported from Pillow {PILLOW_MAJOR}, Pillow '
      f'{PIL.__version__} is installed' if other_pillow else None)


def available() -> bool:
  return unavailable_reason() is None


def _readable(image: np.ndarray) -> bool:
  return image.dtype == np.uint8 and image.shape[2:] == (3,) and image.strides[1:] == (3, 1)


def resample_boxes(images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
                   mirrored: Sequence[bool], out: np.ndarray,
                   rows: Optional[Sequence[int]] = None) -> None:
  """out[rows[i]] = Pillow's `fromarray(images[i]).resize(out's image size, BICUBIC,
  box=boxes[i])`, mirrored left-right where mirrored[i]; rows default to 0, 1, ...

  images[i]: uint8 [h, w, 3] with contiguous rows; out: uint8 [n, H, W, 3],
  C-contiguous; boxes[i]: (left, upper, right, lower) within images[i] and not
  empty (unchecked: the caller computed them). The arguments travel as two
  arrays: a batch's conversions cost ~1.5 us per image.
  """
  count = len(images)
  if not count:
    return
  rows = range(count) if rows is None else rows
  if not (out.dtype == np.uint8 and out.ndim == 4 and out.shape[3] == 3
          and out.flags.c_contiguous and len(rows) == count
          and 0 <= min(rows) and max(rows) < len(out)):
    raise ValueError(f'resample_boxes: {count} images into a {out.dtype} {out.shape} output '
                     f'at rows {min(rows)}..{max(rows)}: expected uint8 [n, H, W, 3], '
                     'C-contiguous, with a row for each image')
  if not all(map(_readable, images)):
    bad = next(image for image in images if not _readable(image))
    raise ValueError(f'resample_boxes: a {bad.dtype} {bad.shape} image with strides '
                     f'{bad.strides}: expected uint8 RGB with contiguous rows')
  base, row_bytes = out.__array_interface__['data'][0], out.strides[0]
  if count == 1:  # a photograph's crop: the fewest numpy calls
    image = images[0]
    params = np.array([(image.__array_interface__['data'][0], *image.shape[:2],
                        image.strides[0], mirrored[0], base + rows[0] * row_bytes)], np.int64)
  else:  # a batch's: column by column
    params = np.empty((count, 6), np.int64)
    params[:, 0] = [image.__array_interface__['data'][0] for image in images]
    params[:, 1] = [image.shape[0] for image in images]
    params[:, 2] = [image.shape[1] for image in images]
    params[:, 3] = [image.strides[0] for image in images]
    params[:, 4] = mirrored
    params[:, 5] = base + np.asarray(rows, np.int64) * row_bytes
  boxes = np.array(boxes, np.float64)
  _library().VggJaxResampleBoxes(count, params.ctypes.data, boxes.ctypes.data,
                                 out.shape[1], out.shape[2])
