"""The compiled resize (vgg_jax/data/resample.cc) against Pillow's, pixel for pixel."""

import ctypes
import mmap
import os
import shutil
import sys

import numpy as np
from PIL import Image
import PIL
import pytest

from vgg_jax import native
from vgg_jax.data import resample, transforms

# Where a C++ compiler and the Pillow it ports are at hand (CI, developers'
# machines), the compiled path must be there: a broken build fails here
# instead of falling back to Pillow unnoticed.
_EXPECTED = (bool(os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++'))
             and PIL.__version__.split('.')[0] == resample.PILLOW_MAJOR
             and os.environ.get(resample.SWITCH_ENV, '1') not in ('0', ''))


def test_available_where_a_compiler_is():
  if not _EXPECTED:
    pytest.skip('no C++ compiler or another Pillow: Pillow resamples')
  assert resample.unavailable_reason() is None


needs_compiled = pytest.mark.skipif(not _EXPECTED, reason='no C++ compiler or another Pillow')


def pillow_resize(image, size, box, mirrored):
  out = Image.fromarray(image).resize(size, transforms.RESAMPLE, box=box)
  if mirrored:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(out)


def picture(rng, h, w):
  """Noise, hard edges or smooth ramps: each rounds differently in the passes."""
  kind = rng.integers(3)
  if kind == 0:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  if kind == 1:
    return (rng.random((h, w, 3)) < 0.5).astype(np.uint8) * 255
  steps = np.cumsum(rng.integers(-20, 21, (h, w, 3)), axis=1) + 128
  return np.clip(steps, 0, 255).astype(np.uint8)


@needs_compiled
def test_random_boxes_equal_pillow():
  """Up- and downscaling, either pass first (Pillow goes down the columns first
  where the height shrinks most), one pass only, whole images, integer boxes of
  the output's size (a plain crop in Pillow), mirrored or not."""
  rng = np.random.default_rng(0)
  cases = 0
  while cases < 1500:
    h, w = (int(x) for x in rng.integers(1, 120, 2))
    out_w, out_h = (int(x) for x in rng.integers(1, 100, 2))
    x0, y0 = rng.random() * w * 0.9, rng.random() * h * 0.9
    x1, y1 = x0 + rng.random() * (w - x0), y0 + rng.random() * (h - y0)
    draw = rng.random()
    if draw < 0.15:
      x0, y0, x1, y1 = 0, 0, w, h
    elif draw < 0.25:
      x0, y0 = int(x0), int(y0)
      x1, y1 = x0 + out_w, y0 + out_h
    elif draw < 0.35:
      out_h, y0, y1 = h, 0, h  # rows only
    elif draw < 0.45:
      out_w, x0, x1 = w, 0, w  # columns only
    if not (x1 <= w and y1 <= h and x1 > x0 and y1 > y0):
      continue
    image, box, mirrored = picture(rng, h, w), (x0, y0, x1, y1), bool(rng.random() < 0.5)
    out = np.empty((out_h, out_w, 3), np.uint8)
    resample.resample_boxes([image], [box], [mirrored], out[None])
    np.testing.assert_array_equal(out, pillow_resize(image, (out_w, out_h), box, mirrored),
                                  err_msg=f'{h}x{w} box {box} -> {out_h}x{out_w}')
    cases += 1


@needs_compiled
def test_one_call_for_many_images_equals_pillow_image_by_image():
  """A call computes each distinct (size, box edge) axis's taps once: boxes that
  repeat, and more distinct ones than the call keeps (it starts afresh)."""
  rng = np.random.default_rng(6)
  images, boxes = [], []
  for i in range(300):
    h, w = (32, 32) if i % 2 else tuple(int(x) for x in rng.integers(20, 60, 2))
    if i % 2:
      top, left = (int(x) for x in rng.integers(0, 6, 2))
      box = transforms.crop_box(h, w, 37, top, left, 16)
    else:
      x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
      box = (x0, y0, rng.uniform(x0 + 1, w), rng.uniform(y0 + 1, h))
    images.append(picture(rng, h, w))
    boxes.append(box)
  flags = [bool(x) for x in rng.integers(0, 2, len(images))]
  outs = np.empty((len(images), 16, 16, 3), np.uint8)
  resample.resample_boxes(images, boxes, flags, outs)
  for image, box, mirrored, out in zip(images, boxes, flags, outs):
    np.testing.assert_array_equal(out, pillow_resize(image, (16, 16), box, mirrored))


@needs_compiled
def test_training_crops_of_photographs_equal_pillow():
  """224 crops at S in [256, 512] of a 500x375 photograph, a portrait and a
  strip (its height shrinks most: columns first), as one batch call."""
  rng = np.random.default_rng(1)
  images, boxes, flags, expected = [], [], [], []
  for h, w in [(375, 500)] * 8 + [(500, 375)] * 4 + [(900, 260)] * 4:
    image = picture(rng, h, w)
    scale = int(rng.integers(256, 513))
    new_h, new_w = transforms.rescaled_size(h, w, scale)
    top, left = int(rng.integers(0, new_h - 223)), int(rng.integers(0, new_w - 223))
    box = transforms.crop_box(h, w, scale, top, left, 224)
    mirrored = bool(rng.random() < 0.5)
    images.append(image)
    boxes.append(box)
    flags.append(mirrored)
    expected.append(pillow_resize(image, (224, 224), box, mirrored))
  outs = np.empty((len(images), 224, 224, 3), np.uint8)
  resample.resample_boxes(images, boxes, flags, outs)
  np.testing.assert_array_equal(outs, np.stack(expected))


@needs_compiled
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='mprotect through libc')
def test_reads_nothing_past_the_image():
  """The row pass loads four bytes per pixel: at the last pixel of an image
  whose bytes end where readable memory ends, it must not read the next byte."""
  h, w = 64, 64  # 12,288 bytes: three whole pages
  page = mmap.PAGESIZE
  assert (h * w * 3) % page == 0
  image = picture(np.random.default_rng(2), h, w)
  mapped = mmap.mmap(-1, image.nbytes + page)
  mapped.write(image.tobytes())
  start = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
  libc = ctypes.CDLL(None, use_errno=True)
  assert libc.mprotect(ctypes.c_void_p(start + image.nbytes), page, 0) == 0  # PROT_NONE
  view = np.ctypeslib.as_array((ctypes.c_uint8 * image.nbytes).from_address(start))
  view = view.reshape(h, w, 3)
  for box in [(w - 9.5, h - 9.5, float(w), float(h)),  # the bottom-right corner
              (0.0, h - 3.5, float(w), float(h))]:  # the last rows, whole
    out = np.empty((13, 13, 3), np.uint8)
    resample.resample_boxes([view], [box], [False], out[None])
    np.testing.assert_array_equal(out, pillow_resize(image, (13, 13), box, False))
  libc.mprotect(ctypes.c_void_p(start + image.nbytes), page, 3)  # readable again


def test_crops_are_the_same_either_way(resampler):
  """transforms' crops through whichever resampler the fixture selects equal
  Pillow's own resize of the box (and its mirror)."""
  del resampler
  rng = np.random.default_rng(3)
  for h, w, scale in [(32, 32, 37), (32, 32, 73), (375, 500, 300), (60, 20, 40)]:
    image = picture(rng, h, w)
    new_h, new_w = transforms.rescaled_size(h, w, scale)
    top, left, size = new_h - 32, new_w - 32, 32
    box = transforms.crop_box(h, w, scale, top, left, size)
    for mirrored in (False, True):
      for source in (image, Image.fromarray(image)):  # an array, or what Pillow decoded
        np.testing.assert_array_equal(
            transforms.rescaled_crop(source, scale, top, left, size, mirrored),
            pillow_resize(image, (size, size), box, mirrored))


def test_rescales_are_the_same_either_way(resampler):
  """Whole images rescaled to Q (the test protocols, the store's max_side)."""
  del resampler
  rng = np.random.default_rng(5)
  for h, w, scale in [(32, 32, 42), (375, 500, 256), (500, 375, 384), (40, 90, 20)]:
    image = picture(rng, h, w)
    new_h, new_w = transforms.rescaled_size(h, w, scale)
    expected = np.asarray(Image.fromarray(image).resize((new_w, new_h), transforms.RESAMPLE))
    np.testing.assert_array_equal(transforms.rescale(image, scale), expected)


@needs_compiled
def test_arrays_it_cannot_read_are_refused():
  image, out = np.zeros((8, 8, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8)
  box = (0.0, 0.0, 8.0, 8.0)
  for bad_image in (image[:, ::-1], image.astype(np.float32), image[..., :2]):
    with pytest.raises(ValueError, match='expected uint8 RGB with contiguous rows'):
      resample.resample_boxes([bad_image], [box], [False], out)
  for bad_out, rows in [(out[:, :, ::2], None), (out[0], None), (out, [1])]:
    with pytest.raises(ValueError, match=r'expected uint8 \[n, H, W, 3\]'):
      resample.resample_boxes([image], [box], [False], bad_out, rows)


def test_the_switch_turns_it_off(monkeypatch):
  monkeypatch.setenv(resample.SWITCH_ENV, '0')
  resample.unavailable_reason.cache_clear()
  try:
    assert resample.unavailable_reason() == f'{resample.SWITCH_ENV}=0'
    assert not resample.available()
  finally:
    monkeypatch.undo()
    resample.unavailable_reason.cache_clear()


@needs_compiled
def test_a_failed_build_leaves_pillow_resampling(monkeypatch, tmp_path):
  monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path))
  monkeypatch.setenv('CXX', 'false')
  resample.unavailable_reason.cache_clear()
  resample._library.cache_clear()  # pylint: disable=protected-access
  try:
    assert 'failed' in resample.unavailable_reason()
    assert not list(tmp_path.glob('*.so'))  # nothing half-built left to load
    image = picture(np.random.default_rng(4), 32, 32)
    box = transforms.crop_box(32, 32, 37, 2, 3, 32)
    np.testing.assert_array_equal(transforms.rescaled_crop(image, 37, 2, 3, 32),
                                  pillow_resize(image, (32, 32), box, False))
  finally:
    monkeypatch.undo()
    resample._library.cache_clear()  # pylint: disable=protected-access
    resample.unavailable_reason.cache_clear()
