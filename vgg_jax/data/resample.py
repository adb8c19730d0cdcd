"""Pillow's antialiased bicubic `resize(box=...)` of uint8 RGB arrays, bit for bit,
compiled from resample.cc: a batch's training crops in one call.

Why: Pillow's resize was most of a training image's pipeline time (a 224 crop
of a stored 500x375 photograph: ~800 of ~1,060 us on a 2-core AMD EPYC, its
arithmetic one value at a time, after ~70 us of unpacking into Pillow), and
small images paid Pillow's per-call Python instead (`transforms.GroupedCrops`).
resample.cc ports Pillow 13's algorithm (taps, pass order, rounding between
passes) with vectorised sums; tests/test_resample.py holds it to Pillow's
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


def _address(array: np.ndarray) -> int:
  return array.__array_interface__['data'][0]


def resample_boxes(images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
                   mirrored: Sequence[bool], outs: Sequence[np.ndarray]) -> None:
  """outs[i][...] = Pillow's `fromarray(images[i]).resize(outs[i]'s size, BICUBIC,
  box=boxes[i])`, mirrored left-right where mirrored[i].

  images[i]: uint8 [h, w, 3] with contiguous rows; outs[i]: uint8 [H, W, 3]
  C-contiguous, all of one shape; boxes[i]: (left, upper, right, lower) within
  images[i] and not empty (unchecked: the caller computed them). The arguments
  travel as two arrays, one call's conversions costing a few microseconds.
  """
  if not images:
    return
  shape = outs[0].shape
  for image, out in zip(images, outs):
    if not (image.dtype == np.uint8 and image.shape[2:] == (3,) and image.strides[1:] == (3, 1)
            and out.dtype == np.uint8 and out.shape == shape and out.flags.c_contiguous):
      raise ValueError(f'resample_boxes: a {image.dtype} {image.shape} image with strides '
                       f'{image.strides} into a {out.dtype} {out.shape} output; expected '
                       f'uint8 RGB with contiguous rows into uint8 {shape}, C-contiguous')
  params = np.array([(_address(image), image.shape[0], image.shape[1], image.strides[0],
                      flag, _address(out))
                     for image, flag, out in zip(images, mirrored, outs)], np.int64)
  boxes = np.array(boxes, np.float64)
  _library().VggJaxResampleBoxes(len(params), params.ctypes.data, boxes.ctypes.data,
                                 shape[0], shape[1])
