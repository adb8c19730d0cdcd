"""Tests of the data package: the built-in dataset, the transforms, the pipeline.

Everything runs on the 'tiny' vgg_shapes config (built once per session in a
temporary directory) and on small image folders the tests write themselves.
"""

import collections
import concurrent.futures
import hashlib
import math
import os
import pathlib
import subprocess
import sys
import threading

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from vgg_jax import data, train
from vgg_jax.data import builtin
from vgg_jax.data import pipeline
from vgg_jax.data import sources
from vgg_jax.data import store
from vgg_jax.data import transforms

TINY_TRAIN, TINY_TEST = 300, 100


@pytest.fixture(scope='session')
def tiny_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tfds'))
  builtin.prepare(root, 'tiny')
  return root


def make_cfg(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name='vgg_shapes', folder=None, data_dir=None, builder_config='tiny',
      image_size=32, train_scale=(32, 64), test_scale=48, color_shift=0.1, flip='random',
      mean_rgb=(70.0, 70.0, 70.0), train_split='train', eval_split='test',
      shuffle=True, num_threads=2, prefetch_batches=2, num_workers=0, niceness=-1))
  cfg.update(overrides)
  return cfg


@pytest.fixture
def cfg(tiny_dir):
  return make_cfg(data_dir=tiny_dir)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def digest(image):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


# --------------------------------------------------------------------------
# The built-in dataset.
# --------------------------------------------------------------------------


def test_rendering_is_a_pure_function_of_the_seed():
  a, labels_a, sizes_a = builtin.render_chunk(7, 'train', 0, 40)
  b, labels_b, sizes_b = builtin.render_chunk(7, 'train', 0, 40)
  c, _, _ = builtin.render_chunk(8, 'train', 0, 40)
  assert a.dtype == np.uint8 and a.shape == (40, 64, 64, 3)
  assert a.tobytes() == b.tobytes()
  np.testing.assert_array_equal(labels_a, labels_b)
  np.testing.assert_array_equal(sizes_a, sizes_b)
  assert a.tobytes() != c.tobytes()


def test_prepared_dataset_holds_exactly_the_generated_images(tiny_dir):
  # TFDS stores examples in its own shuffled order, so compare as sets.
  config = next(c for c in builtin.VggShapes.BUILDER_CONFIGS if c.name == 'tiny')
  generated = {(digest(image), label)
               for _, image, label, _ in builtin.generate(config.seed, 'test', TINY_TEST)}
  source = data.open_split(make_cfg(data_dir=tiny_dir), 'test')
  stored = {(digest(source[i][0]), source[i][1]) for i in range(len(source))}
  assert len(generated) == TINY_TEST
  assert stored == generated


def test_dataset_info(cfg):
  info = data.dataset_info(cfg)
  assert info.num_classes == 10
  assert info.class_names == builtin.CLASS_NAMES
  assert info.num_examples['train'] == TINY_TRAIN
  assert info.num_examples['test'] == TINY_TEST


def test_object_sizes_span_more_than_3x_and_classes_balance():
  _, labels, sizes = builtin.render_chunk(0, 'train', 0, builtin.CHUNK)
  assert sizes.min() >= builtin.OBJECT_SIZES[0]
  assert sizes.max() <= builtin.OBJECT_SIZES[1]
  assert sizes.max() / sizes.min() >= 3.0
  np.testing.assert_array_equal(np.bincount(labels), [builtin.CHUNK // 10] * 10)


def test_shapes_are_drawn_at_their_size():
  # A disc of diameter d on a plain background covers about pi d^2 / 4 pixels.
  for diameter in (12.0, 40.0):
    side = builtin.IMAGE_SIDE
    yy, xx = np.mgrid[:side, :side] + 0.5
    u, v = (xx - side / 2) / (diameter / 2), (yy - side / 2) / (diameter / 2)
    coverage = np.clip(0.5 - builtin.SHAPES[0](u, v) * diameter / 2, 0, 1)
    assert coverage.sum() == pytest.approx(np.pi * diameter**2 / 4, rel=0.02)


def test_racing_prepares_build_once_and_agree(tmp_path):
  # Two preparers at once (threads here; processes use the same file lock).
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    builders = list(pool.map(lambda _: builtin.prepare(str(tmp_path), 'tiny'), range(2)))
  assert all(b.is_prepared() for b in builders)
  versions = os.listdir(tmp_path / 'vgg_shapes' / 'tiny')
  assert versions == [str(builtin.VggShapes.VERSION)]
  sizes = [b.info.splits['train'].num_examples for b in builders]
  assert sizes == [TINY_TRAIN, TINY_TRAIN]


def test_prepare_rejects_unknown_config(tmp_path):
  with pytest.raises(ValueError, match="builder_config 'huge'"):
    builtin.prepare(str(tmp_path), 'huge')


# --------------------------------------------------------------------------
# Transforms.
# --------------------------------------------------------------------------


def random_image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# The paper's steps one at a time, as the oracles the fused library views are
# checked against; the library itself never takes them separately.


def uniforms(seed, n=None):
  shape = (transforms.UNIFORMS_PER_VIEW,) if n is None else (n, transforms.UNIFORMS_PER_VIEW)
  return np.random.default_rng(seed).random(shape)


def random_crop(image, size, u_top, u_left):
  h, w = image.shape[:2]
  top, left = transforms.draw_crop(h, w, min(h, w), size, u_top, u_left)
  return transforms.crop(image, top, left, size)


def pca_colour_shift(image, alphas):
  """Adds the same lighting offset to every pixel of a float image."""
  return image + transforms.pca_colour_offset(alphas)


def subtract_mean(image, mean_rgb):
  return image - np.asarray(mean_rgb, np.float32)


def eval_view(image, *, image_size, scale, mean_rgb):
  """The single-crop test view: smaller side to Q, centre crop, mean subtracted."""
  new_h, new_w = transforms.rescaled_size(*image.shape[:2], scale)
  image = transforms.rescaled_crop(image, scale, (new_h - image_size) // 2,
                                   (new_w - image_size) // 2, image_size)
  return image.astype(np.float32) - np.asarray(mean_rgb, np.float32)


@pytest.mark.parametrize('h, w, scale, expected', [
    (30, 50, 20, (20, 33)),      # landscape: height becomes S
    (50, 30, 20, (33, 20)),      # portrait: width becomes S
    (40, 40, 64, (64, 64)),      # upscaling
    (375, 500, 256, (256, 341)),  # a typical ImageNet photograph
])
def test_rescale_sets_smaller_side_and_keeps_aspect(h, w, scale, expected):
  out = transforms.rescale(random_image(h, w), scale)
  assert out.shape == expected + (3,) and out.dtype == np.uint8
  assert min(out.shape[:2]) == scale
  assert out.shape[0] / out.shape[1] == pytest.approx(h / w, rel=0.02)


def test_rescale_antialiases_when_shrinking():
  # A one-pixel checkerboard averages to grey; nearest-neighbour would keep 0/255.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  out = transforms.rescale(np.repeat(board[..., None], 3, -1), 16)
  assert np.abs(out.astype(float) - 127.5).max() < 8


def test_crops():
  image = random_image(40, 60)
  np.testing.assert_array_equal(transforms.crop(image, 3, 5, 32), image[3:35, 5:37])
  np.testing.assert_array_equal(transforms.centre_crop(image, 32), image[4:36, 14:46])
  for u in uniforms(0, 20):
    out = random_crop(image, 32, u[transforms.TOP], u[transforms.LEFT])
    assert out.shape == (32, 32, 3)
  # The extremes of [0, 1): the first and the last offset.
  np.testing.assert_array_equal(random_crop(image, 32, 0.0, 0.0), image[:32, :32])
  np.testing.assert_array_equal(random_crop(image, 32, 1 - 2**-53, 1 - 2**-53), image[8:, 28:])
  with pytest.raises(ValueError, match='does not fit'):
    transforms.crop(image, 10, 0, 32)
  with pytest.raises(ValueError, match='scale must be at least the crop size'):
    random_crop(image, 41, 0.5, 0.5)


def test_random_crop_reaches_every_offset():
  image = np.arange(6 * 6).reshape(6, 6, 1).repeat(3, -1).astype(np.uint8)
  corners = [int(random_crop(image, 4, *u[1:3])[0, 0, 0]) for u in uniforms(0, 900)]
  counts = collections.Counter(corners)
  assert set(counts) == {r * 6 + c for r in range(3) for c in range(3)}
  assert min(counts.values()) > 70  # 100 expected for each of 9
  # Uniform over the integers: the bins of [0, 1) have equal widths.
  np.testing.assert_array_equal(transforms.uniform_integers(np.arange(12) / 12, 3),
                                [0] * 4 + [1] * 4 + [2] * 4)


def test_flip_is_an_exact_mirror():
  image = random_image(5, 7)
  flipped = transforms.flip(image)
  for j in range(7):
    np.testing.assert_array_equal(flipped[:, j], image[:, 6 - j])
  np.testing.assert_array_equal(transforms.flip(flipped), image)


@pytest.mark.parametrize('scale', [40, 50, 90])  # down, none (the image's side), up
def test_mirrored_rescaled_crop_is_the_flipped_crop(scale):
  image = random_image(50, 64)
  for source in (image, Image.fromarray(image)):
    plain = transforms.rescaled_crop(source, scale, 3, 7, 32)
    mirrored = transforms.rescaled_crop(source, scale, 3, 7, 32, mirrored=True)
    assert mirrored.flags.c_contiguous and mirrored.dtype == np.uint8
    np.testing.assert_array_equal(mirrored, transforms.flip(plain))


def test_crops_resampled_in_groups_equal_the_crops_one_by_one(resampler):
  """Same-size images share Pillow calls (`GroupedCrops`); every crop must
  still be `rescaled_crop`'s, bit for bit: CIFAR-like squares at a fixed and a
  jittered S, images too tall for the grouping (Pillow goes down the columns
  first), ones alone in their size, the unresampled S = side, Pillow images;
  by both resamplers."""
  del resampler
  rng = np.random.default_rng(0)
  shapes = [(32, 32)] * 40 + [(37, 50)] * 12 + [(120, 40)] * 6 + [(90, 30)] * 4 + [(41, 29)]
  views = []
  for i, (h, w) in enumerate(shapes):
    image = random_image(h, w, seed=i)
    scale = int(rng.choice([min(h, w), 37, 37, 40, 45, 64]))
    new_h, new_w = transforms.rescaled_size(h, w, scale)
    top, left = int(rng.integers(0, new_h - 31)), int(rng.integers(0, new_w - 31))
    views.append(transforms.CropView(Image.fromarray(image) if i % 17 == 5 else image,
                                     scale, top, left, bool(rng.random() < 0.5)))
  out = np.zeros((len(views), 32, 32, 3), np.uint8)
  crops = transforms.GroupedCrops(out)
  for i, view in enumerate(views):
    crops.add(i, view)
  crops.finish()
  assert sum(transforms.resampled_in_groups(view, 32) for view in views) > len(views) // 2
  for crop, view in zip(out, views):
    np.testing.assert_array_equal(crop, transforms.rescaled_crop(
        view.image, view.scale, view.top, view.left, 32, view.mirrored))


def test_pillows_pass_order_is_the_one_the_grouping_assumes():
  """`GroupedCrops` groups only images that Pillow resamples along rows
  first; a Pillow that changes its choice fails here, not silently in training."""
  rng = np.random.default_rng(1)
  checked = {True: 0, False: 0}
  while min(checked.values()) < 20:
    h, w = (int(x) for x in rng.integers(8, 100, 2))
    size = int(rng.integers(4, 40))
    image = Image.fromarray(random_image(h, w, seed=int(rng.integers(1 << 30))))
    box = tuple(float(x) for x in (rng.uniform(0, w / 3), rng.uniform(0, h / 3),
                                   rng.uniform(2 * w / 3, w), rng.uniform(2 * h / 3, h)))
    both = np.asarray(image.resize((size, size), transforms.RESAMPLE, box=box))
    rows = image.resize((size, h), transforms.RESAMPLE, box=(box[0], 0, box[2], h))
    rows_first = np.asarray(rows.resize((size, size), transforms.RESAMPLE,
                                        box=(0, box[1], size, box[3])))
    columns = image.resize((w, size), transforms.RESAMPLE, box=(0, box[1], w, box[3]))
    columns_first = np.asarray(columns.resize((size, size), transforms.RESAMPLE,
                                              box=(box[0], 0, box[2], size)))
    if np.array_equal(rows_first, columns_first):
      continue  # this image cannot tell the orders apart
    predicted = transforms._rows_first(h, w, size)  # pylint: disable=protected-access
    np.testing.assert_array_equal(both, rows_first if predicted else columns_first)
    checked[predicted] += 1


def test_pca_colour_shift_matches_closed_form():
  alphas = np.array([0.1, -0.2, 0.3])
  # rgb offset = 255 * sum_j eigvec[:, j] * alpha_j * eigval_j, written out.
  eigval = [0.2175, 0.0188, 0.0045]
  eigvec = [[-0.5675, 0.7192, 0.4009],
            [-0.5808, -0.0045, -0.8140],
            [-0.5836, -0.6948, 0.4203]]
  expected = [255 * sum(eigvec[c][j] * alphas[j] * eigval[j] for j in range(3))
              for c in range(3)]
  image = np.full((4, 4, 3), 100.0, np.float32)
  out = pca_colour_shift(image, alphas)
  np.testing.assert_allclose(out - image, np.broadcast_to(expected, out.shape),
                             rtol=1e-5, atol=1e-5)
  # The first component moves all channels the same way: brightness.
  only_first = transforms.pca_colour_offset([1.0, 0.0, 0.0])
  np.testing.assert_allclose(only_first, 255 * 0.2175 * np.array(
      [-0.5675, -0.5808, -0.5836]), rtol=1e-5)


def test_subtract_mean():
  image = np.full((2, 2, 3), [200.0, 100.0, 50.0], np.float32)
  out = subtract_mean(image, transforms.IMAGENET_MEAN_RGB)
  np.testing.assert_allclose(out[0, 0], [200 - 123.68, 100 - 116.779, 50 - 103.939],
                             rtol=1e-6)


def test_scale_sampling():
  u = uniforms(0, 200)[:, transforms.SCALE]
  assert set(transforms.draw_scales(256, u).tolist()) == {256}
  assert set(transforms.draw_scales((384, 384), u).tolist()) == {384}
  assert set(transforms.draw_scales((32, 35), u).tolist()) == {32, 33, 34, 35}
  np.testing.assert_array_equal(transforms.draw_scales((256, 512), [0.0, 0.5, 1 - 2**-53]),
                                [256, 384, 512])


def test_normals_are_standard_and_independent():
  normals = transforms.standard_normals(uniforms(3, 50_000)[:, :4])
  assert normals.shape == (50_000, 4)
  # 50,000 draws: the mean's standard error is 0.0045, the variance's 0.0063.
  np.testing.assert_allclose(normals.mean(0), 0, atol=0.02)
  np.testing.assert_allclose(normals.var(0), 1, atol=0.03)
  np.testing.assert_allclose(np.corrcoef(normals.T), np.eye(4), atol=0.02)
  assert np.mean(np.abs(normals) > 1.96) == pytest.approx(0.05, abs=0.004)
  alphas = transforms.draw_alphas(uniforms(4, 20_000)[:, transforms.ALPHAS], 0.1)
  assert alphas.shape == (20_000, 3)
  np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.03)
  np.testing.assert_array_equal(transforms.draw_alphas(uniforms(4, 5)[:, 4:], 0.0),
                                np.zeros((5, 3)))


def test_train_view_without_geometry_is_image_or_mirror_minus_mean():
  # S equal to the image side and the crop: only flip and mean remain.
  image = random_image(32, 32)
  mean = (10.0, 20.0, 30.0)
  seen = set()
  for seed in range(20):
    crop, offset = transforms.train_view(image, uniforms(seed), image_size=32,
                                         scale=32, color_shift=0.0, mean_rgb=mean)
    assert crop.dtype == np.uint8 and crop.shape == (32, 32, 3)
    np.testing.assert_array_equal(offset, -np.float32(mean))
    restored = crop
    flipped = np.array_equal(restored, transforms.flip(image))
    assert flipped or np.array_equal(restored, image)
    seen.add(flipped)
  assert seen == {True, False}


def test_train_view_is_determined_by_the_uniforms():
  image = random_image(64, 80)
  kw = dict(image_size=32, scale=48, color_shift=0.1, mean_rgb=(0, 0, 0))
  a = transforms.train_view(image, uniforms(5), **kw)
  b = transforms.train_view(image, uniforms(5), **kw)
  c = transforms.train_view(image, uniforms(6), **kw)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0]) or not np.array_equal(a[1], c[1])


def assert_within_one_grey_level(out, expected):
  # Resampling only the crop rounds a few pixels the other way (`rescaled_crop`).
  np.testing.assert_allclose(out, expected, atol=1 + 1e-4)
  assert np.mean(np.abs(out - expected) > 1e-4) < 0.01


def test_train_view_is_the_composition_of_the_paper_steps():
  image = random_image(70, 90)
  mean = (120.0, 110.0, 100.0)
  # Down- and upsampling, and no resampling at all (S = 70 is the image's side).
  for seed, scale in zip(range(6), (40, 40, 70, 100, 100, 33)):
    u = uniforms(seed)
    crop, offset = transforms.train_view(image, u, image_size=32, scale=scale,
                                         color_shift=0.1, mean_rgb=mean)
    out = crop.astype(np.float32) + offset
    expected = random_crop(transforms.rescale(image, scale), 32, u[1], u[2])
    if u[3] < 0.5:
      expected = transforms.flip(expected)
    # Box-Muller by hand: radius from the first of each pair, angle from the second.
    radius = [math.sqrt(-2 * math.log(1 - u[i])) for i in (4, 6)]
    normals = [radius[0] * math.cos(2 * math.pi * u[5]),
               radius[0] * math.sin(2 * math.pi * u[5]),
               radius[1] * math.cos(2 * math.pi * u[7])]
    expected = pca_colour_shift(expected.astype(np.float32), 0.1 * np.array(normals))
    expected = subtract_mean(expected, mean)
    assert_within_one_grey_level(out, expected)


def test_decode_converts_every_mode_to_rgb(tmp_path):
  rgb = random_image(9, 11)
  cases = {
      'gray.png': Image.fromarray(rgb[..., 0]),
      'rgba.png': Image.fromarray(np.dstack([rgb, np.full((9, 11), 128, np.uint8)])),
      'palette.gif': Image.fromarray(rgb).convert('P'),
      'photo.bmp': Image.fromarray(rgb),
  }
  for name, img in cases.items():
    img.save(tmp_path / name)
    out = transforms.decode(str(tmp_path / name))
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8, name
  gray = transforms.decode(str(tmp_path / 'gray.png'))
  np.testing.assert_array_equal(gray[..., 0], rgb[..., 0])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  np.testing.assert_array_equal(transforms.decode(str(tmp_path / 'rgba.png')), rgb)
  np.testing.assert_array_equal(transforms.decode(str(tmp_path / 'photo.bmp')), rgb)


def test_decode_keeps_the_high_byte_of_16_bit_images_and_refuses_32_bit_ones(tmp_path):
  """Pillow reads a 16-bit colour PNG as its high bytes but converts 16-bit grey
  by clipping at 255 (a white image): grey must scale like colour."""
  grey16 = np.arange(0, 65536, 257, dtype=np.uint16)[None, :].repeat(3, axis=0)  # 0..255 x 257
  grey16[1] += 200  # the low byte does not round up
  Image.fromarray(grey16).save(tmp_path / 'grey16.png')
  out = transforms.decode(str(tmp_path / 'grey16.png'))
  np.testing.assert_array_equal(out, np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1))
  Image.fromarray(np.ones((4, 4), np.float32), 'F').save(tmp_path / 'float.tif')
  with pytest.raises(ValueError, match=r'^cannot read image .*float\.tif: its pixels are '
                     r'32-bit floats.*; fix or delete the file$'):
    transforms.decode(str(tmp_path / 'float.tif'))
  with pytest.raises(ValueError, match='image arrays must be uint8'):
    transforms.decode(grey16)


def test_decode_reduces_large_jpegs_but_keeps_the_scale(tmp_path):
  Image.fromarray(random_image(600, 800)).save(tmp_path / 'big.jpg')
  path = str(tmp_path / 'big.jpg')
  assert transforms.decode(path).shape == (600, 800, 3)
  small = transforms.decode(path, min_side=140)
  assert min(small.shape[:2]) >= 140 and small.shape[:2] == (150, 200)


def test_train_view_of_the_decoded_pillow_image_equals_that_of_the_array(tmp_path):
  """The pipeline resamples `decode_view`'s image as it is, a Pillow image or an
  array: the same pixels as from `decode`'s array, in every mode and from a
  reduced-size JPEG decode."""
  rgb = random_image(48, 60)
  cases = {'photo.jpg': Image.fromarray(rgb), 'gray.png': Image.fromarray(rgb[..., 0]),
           'palette.gif': Image.fromarray(rgb).convert('P')}
  for name, img in cases.items():
    img.save(tmp_path / name)
    for seed, scale in enumerate((32, 40, 48, 70)):
      path = str(tmp_path / name)
      views = [transforms.train_view(image, uniforms(seed), image_size=32,
                                     scale=scale, color_shift=0.1, mean_rgb=(1, 2, 3))
               for image in (transforms.decode(path, min_side=scale),
                             np.asarray(transforms.decode_view(path, min_side=scale)),
                             transforms.decode_view(path, min_side=scale))]
      for from_array, *others in zip(*views):
        for other in others:
          np.testing.assert_array_equal(other, from_array)
  Image.fromarray(random_image(600, 800)).save(tmp_path / 'big.jpg')
  big = transforms.decode_view(str(tmp_path / 'big.jpg'), min_side=140)
  assert (big.height, big.width, big.mode) == (150, 200, 'RGB')


def smooth_image(h, w, seed=0):
  # Photograph-like (smooth, so that JPEG keeps detail in every DCT band).
  y, x = np.mgrid[0:h, 0:w]
  phase = np.random.default_rng(seed).uniform(0, 6, 3)
  channels = [127 + 100 * np.sin(x / (5 + 3 * c) + y / (7 + c) + phase[c]) for c in range(3)]
  noise = np.random.default_rng(seed).normal(0, 12, (h, w, 3))
  return np.clip(np.stack(channels, -1) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize('size', [(32, 32), (37, 53), (375, 500)])
def test_jpegs_decode_to_pillows_pixels(tmp_path, size):
  """simplejpeg's decode (full-size JPEGs) equals Pillow's, for every chroma
  subsampling, progressive and grayscale files; CMYK and reduced-size decodes
  are Pillow's own."""
  rgb = smooth_image(*size)
  saves = {'420.jpg': dict(subsampling=2, quality=75), '422.jpg': dict(subsampling=1),
           '444.jpg': dict(subsampling=0, quality=95),
           'progressive.jpg': dict(progressive=True, quality=85),
           'optimized.jpg': dict(optimize=True, quality=60)}
  files = {}
  for name, options in saves.items():
    Image.fromarray(rgb).save(tmp_path / name, **options)
    files[name] = Image.open(tmp_path / name)
  Image.fromarray(rgb[..., 1]).save(tmp_path / 'gray.jpg')
  Image.fromarray(rgb).convert('CMYK').save(tmp_path / 'cmyk.jpg')
  for name in (*saves, 'gray.jpg', 'cmyk.jpg'):
    path = str(tmp_path / name)
    with Image.open(path) as img:
      pillow = np.asarray(img.convert('RGB'))
    decoded = transforms.decode_view(path)
    assert isinstance(decoded, np.ndarray) == (name != 'cmyk.jpg'), name
    np.testing.assert_array_equal(np.asarray(decoded), pillow, err_msg=name)
    with open(path, 'rb') as f:
      np.testing.assert_array_equal(transforms.decode(f.read()), pillow, err_msg=name)
  # Twice the size needed or more: Pillow's reduced-size decode, as before.
  scale = min(size) // 2 - 1
  with Image.open(tmp_path / '420.jpg') as img:
    img.draft('RGB', (int(np.ceil(size[1] * scale / min(size))),
                      int(np.ceil(size[0] * scale / min(size)))))
    reduced = np.asarray(img.convert('RGB'))
  assert reduced.shape[0] < size[0]
  np.testing.assert_array_equal(transforms.decode(str(tmp_path / '420.jpg'), min_side=scale),
                                reduced)


def test_files_are_read_whole_at_every_size_around_the_first_read(tmp_path):
  first = transforms._FIRST_READ
  for size in (0, 1, first - 1, first, first + 1, 2 * first, 3 * first + 5):
    data = np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()
    (tmp_path / f'{size}.bin').write_bytes(data)
    assert transforms._read_file(tmp_path / f'{size}.bin') == data, size


def test_decode_names_unreadable_files(tmp_path):
  bad = tmp_path / 'broken.jpg'
  bad.write_bytes(b'not an image at all')
  with pytest.raises(ValueError, match='broken.jpg'):
    transforms.decode(str(bad))


# --------------------------------------------------------------------------
# Training pipeline: determinism, resume, sharding.
# --------------------------------------------------------------------------


def test_epoch_order_is_a_fresh_permutation_each_epoch():
  n = 50
  first = [pipeline.example_at(g, seed=3, num_examples=n) for g in range(n)]
  second = [pipeline.example_at(g, seed=3, num_examples=n) for g in range(n, 2 * n)]
  assert sorted(first) == sorted(second) == list(range(n))
  assert first != second
  other_seed = [pipeline.example_at(g, seed=4, num_examples=n) for g in range(n)]
  assert first != other_seed
  in_order = [pipeline.example_at(g, seed=3, num_examples=n, shuffle=False)
              for g in range(n, 2 * n)]
  assert in_order == list(range(n))


def test_train_positions_tile_the_global_batch():
  rows = [pipeline.train_position(k, start_step=5, global_batch_size=8,
                                  process_index=p, process_count=4)
          for p in range(4) for k in range(2)]
  assert rows == list(range(40, 48))
  assert pipeline.train_position(2, start_step=5, global_batch_size=8,
                                 process_index=0, process_count=4) == 48


def test_train_batches_shapes_and_labels(cfg):
  batch = next(data.train_batches(cfg, global_batch_size=16, seed=0))
  assert batch['image'].shape == (16, 32, 32, 3)
  assert batch['image'].dtype == np.uint8  # a quarter of float32's bytes to the device
  assert batch['offset'].shape == (16, 3) and batch['offset'].dtype == np.float32
  assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
  assert batch['label'].min() >= 0 and batch['label'].max() < 10
  # Mean-subtracted 0..255 pixels: centred near zero, spread like pixels.
  pixels = np.asarray(train.network_input(batch))
  assert abs(pixels.mean()) < 40 and 20 < pixels.std() < 120


def test_the_step_makes_the_float_pixels_the_host_made_before_bit_for_bit(cfg):
  """uint8 + offset on the device equals the float32 crop the host used to ship:
  `out = crop.astype(float32); out += offset` (the pipeline's code until #14)."""
  batch = next(data.train_batches(cfg, global_batch_size=16, seed=3))
  on_device = np.asarray(jax.jit(train.network_input)(batch))
  for image, offset, pixels in zip(batch['image'], batch['offset'], on_device):
    before = image.astype(np.float32)
    before += offset
    np.testing.assert_array_equal(pixels, before)


@pytest.mark.parametrize('flip', pipeline.FLIPS)
def test_each_row_is_its_positions_example_and_augmentation(cfg, flip):
  """The stream as the module defines it, row by row: the example at position g
  (`example_at`) seen through `transforms.train_view` with position g's uniforms,
  which the pipeline draws for a whole batch at once; with alternating flips,
  the mirror is `alternating_mirrors`'."""
  cfg = _with(cfg, flip=flip)
  source = data.open_split(cfg, 'train')
  for start_step, process_index in ((0, 0), (9, 1), (19, 0)):  # 19: epoch 1
    batch = next(data.train_batches(cfg, global_batch_size=16, seed=7, start_step=start_step,
                                    process_index=process_index, process_count=2))
    for row in range(8):
      g = pipeline.train_position(row, start_step=start_step, global_batch_size=16,
                                  process_index=process_index, process_count=2)
      index = pipeline.example_at(g, seed=7, num_examples=TINY_TRAIN)
      encoded, label = source[index]
      u = pipeline.augmentation_uniforms(7, range(g, g + 1))[0]
      if flip == 'alternating':
        mirrored, = pipeline.alternating_mirrors(7, range(g, g + 1), [index], TINY_TRAIN)
        u[transforms.MIRROR] = 0.0 if mirrored else 0.75
      scale = int(transforms.draw_scales(cfg.train_scale, u[transforms.SCALE]))
      crop, offset = transforms.train_view(transforms.decode(encoded, min_side=scale), u,
                                           image_size=32, scale=scale,
                                           color_shift=cfg.color_shift, mean_rgb=cfg.mean_rgb)
      np.testing.assert_array_equal(batch['image'][row], crop)
      np.testing.assert_array_equal(batch['offset'][row], offset)
      assert batch['label'][row] == label


def test_alternating_flips_show_each_example_both_ways_every_two_epochs():
  n, epochs = 1000, 4
  positions = range(0, n * epochs)
  indices = pipeline.examples_at(positions, seed=3, num_examples=n)
  mirrored = pipeline.alternating_mirrors(3, positions, indices, n)
  by_epoch = np.empty((epochs, n), bool)  # [epoch, example]
  for e in range(epochs):
    by_epoch[e, indices[e * n:(e + 1) * n]] = mirrored[e * n:(e + 1) * n]
  assert 400 < by_epoch[0].sum() < 600  # epoch 0: a fair coin per example
  assert np.all(by_epoch[1:] != by_epoch[:-1])  # then the other way each epoch
  # A pure function of (seed, position): any split of the positions agrees.
  part = range(1500, 1600)
  np.testing.assert_array_equal(
      pipeline.alternating_mirrors(3, part, indices[1500:1600], n), mirrored[1500:1600])
  other = pipeline.alternating_mirrors(4, range(0, n), indices[:n], n)
  assert 400 < np.sum(other != mirrored[:n]) < 600  # another seed, other coins


def test_unknown_flip_is_a_clear_error(cfg):
  with pytest.raises(ValueError, match="unknown data.flip 'sometimes': choose one of random"):
    data.train_batches(_with(cfg, flip='sometimes'), global_batch_size=16, seed=0)


def test_splitmix64_is_the_published_generator():
  """Vigna's splitmix64.c seeded with 1234567 (the sequence Rosetta Code lists),
  and any output reached directly."""
  first = [6457827717110365317, 3203168211198807973, 9817491932198370423,
           4593380528125082431, 16408922859458223821]
  assert pipeline.splitmix64(1234567, np.arange(5, dtype=np.uint64)).tolist() == first
  assert pipeline.splitmix64(1234567, np.array([3, 1], np.uint64)).tolist() == first[3:0:-2]


def test_augmentation_uniforms_depend_on_seed_and_position_alone():
  whole = pipeline.augmentation_uniforms(5, range(100, 164))
  assert whole.shape == (64, transforms.UNIFORMS_PER_VIEW) and whole.dtype == np.float64
  assert 0 <= whole.min() and whole.max() < 1
  # The same rows however the positions are split (batches, processes, a resume).
  np.testing.assert_array_equal(pipeline.augmentation_uniforms(5, range(130, 140)),
                                whole[30:40])
  # Another seed, another stream; the uniforms are uniform.
  other = pipeline.augmentation_uniforms(6, range(100, 164))
  assert not np.any(whole == other)
  many = pipeline.augmentation_uniforms(0, range(0, 20_000)).ravel()
  assert np.histogram(many, bins=10, range=(0, 1))[0].min() > 15_000  # 16,000 each expected
  with pytest.raises(ValueError, match='seed=-1 must be in'):
    pipeline.augmentation_uniforms(-1, range(0, 4))


def test_same_seed_same_stream_other_seed_other_stream(cfg):
  a = take(data.train_batches(cfg, global_batch_size=16, seed=1), 2)
  b = take(data.train_batches(cfg, global_batch_size=16, seed=1), 2)
  c = take(data.train_batches(cfg, global_batch_size=16, seed=2), 1)
  for x, y in zip(a, b):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_resume_reproduces_the_uninterrupted_stream_across_epochs(cfg):
  # 300 examples in batches of 64: the first epoch ends inside step 4.
  batch = 64
  full = take(data.train_batches(cfg, global_batch_size=batch, seed=0), 7)
  resumed = take(data.train_batches(cfg, global_batch_size=batch, seed=0,
                                    start_step=3), 4)
  for want, got in zip(full[3:], resumed):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(want[key], got[key])


def test_shards_concatenate_to_the_single_process_batch(cfg):
  whole = take(data.train_batches(cfg, global_batch_size=24, seed=0, start_step=11), 2)
  parts = [take(data.train_batches(cfg, global_batch_size=24, seed=0, start_step=11,
                                   process_index=p, process_count=2), 2)
           for p in range(2)]
  for step in range(2):
    assert parts[0][step]['image'].shape == (12, 32, 32, 3)
    for key in ('image', 'offset', 'label'):
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, whole[step][key])


def test_an_epoch_sees_every_example_once(tmp_path):
  # One distinct image per example, in a folder: identify them by content.
  root = tmp_path / 'numbers'
  for split in ('train', 'test'):
    for i in range(12):
      os.makedirs(root / split / f'c{i % 2}', exist_ok=True)
      Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(
          root / split / f'c{i % 2}' / f'{i:02d}.png')
  cfg = make_cfg(name='image_folder', folder=str(root), image_size=8,
                 train_scale=(8, 8), test_scale=8, color_shift=0.0, mean_rgb=(0, 0, 0))
  batches = take(data.train_batches(cfg, global_batch_size=4, seed=0), 6)
  values = [int(b['image'][r, 0, 0, 0]) for b in batches for r in range(4)]
  assert sorted(values[:12]) == sorted(values[12:]) == [20 * i for i in range(12)]
  assert values[:12] != values[12:]
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(labels, [v // 20 % 2 for v in values])


def test_batch_must_split_evenly_over_processes(cfg):
  with pytest.raises(ValueError, match='multiple of the process count'):
    data.train_batches(cfg, global_batch_size=10, seed=0, process_count=3)


def test_scales_smaller_than_the_crop_are_rejected(cfg):
  # The same checks (and messages) as `vgg_jax.train`'s, for direct callers.
  good = (tuple(cfg.train_scale), cfg.test_scale)
  for train_scale, test_scale, message in [
      ((24, 64), good[1], 'larger than the smallest training scale S=24'),
      ((64, 40), good[1], r'must be \(min, max\) with min <= max'),
      (good[0], 24, 'larger than data.test_scale=24: the centre crop must fit')]:
    cfg.train_scale, cfg.test_scale = train_scale, test_scale
    with pytest.raises(ValueError, match=message):
      next(data.train_batches(cfg, global_batch_size=8, seed=0))
    with pytest.raises(ValueError, match=message):
      next(eval_batches(cfg, global_batch_size=8))


# --------------------------------------------------------------------------
# A padded single-crop evaluation stream: the plain reference that
# vgg_jax.evaluation's exact protocols are checked against (test_evaluate.py).
# --------------------------------------------------------------------------


class _EvalExample:
  """Local index k -> dict(image, label, mask); rows past the split are padding."""

  def __init__(self, source, cfg, *, global_batch_size, process_index, process_count):
    self.source = source
    self.num_examples = len(source)
    self.image_size = int(cfg.image_size)
    self.scale = int(cfg.test_scale)
    self.mean_rgb = tuple(cfg.mean_rgb)
    self.local = global_batch_size // process_count
    self.global_batch_size = global_batch_size
    self.process_index = process_index

  def __call__(self, k):
    step, row = divmod(k, self.local)
    index = step * self.global_batch_size + self.process_index * self.local + row
    if index >= self.num_examples:
      image = np.zeros((self.image_size, self.image_size, 3), np.float32)
      return dict(image=image, label=np.int32(0), mask=np.bool_(False))
    encoded, label = self.source[index]
    image = transforms.decode(encoded, min_side=self.scale)
    image = eval_view(image, image_size=self.image_size, scale=self.scale,
                      mean_rgb=self.mean_rgb)
    return dict(image=image, label=np.int32(label), mask=np.bool_(True))


def num_eval_batches(num_examples, global_batch_size):
  """Batches needed to see every example once; the last one is padded."""
  return -(-num_examples // global_batch_size)


def eval_batches(cfg, split=None, *, global_batch_size, process_index=0, process_count=1):
  """Every example of `split` (default cfg.eval_split) exactly once, over all processes.

  Yields dict(image=float32 [B/P, s, s, 3], label=int32 [B/P], mask=bool [B/P]):
  the single-crop view at scale Q = test_scale. Global batch j holds examples
  j*B ... j*B + B - 1 in split order; rows past the end are zeros with
  mask=False, so no remainder is dropped and every process yields
  ceil(N / B) batches.
  """
  local = global_batch_size // process_count
  data.check_scales(cfg)
  source = data.open_split(cfg, split or cfg.eval_split)
  example = _EvalExample(source, cfg, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count)
  steps = num_eval_batches(len(source), global_batch_size)
  batches = grain.MapDataset.range(0, steps * local).map(example).batch(
      local, drop_remainder=True,
      batch_fn=lambda rows: {key: np.stack([r[key] for r in rows]) for key in rows[0]})
  return pipeline.iterate_batches(batches, cfg)


def test_eval_view_is_rescaled_centre_crop_of_the_full_rescale():
  image = random_image(60, 90)
  for scale in (40, 60, 77):
    out = eval_view(image, image_size=32, scale=scale, mean_rgb=(1, 2, 3))
    expected = transforms.centre_crop(transforms.rescale(image, scale), 32)
    assert_within_one_grey_level(out, expected.astype(np.float32) - [1, 2, 3])


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_covers_each_example_exactly_once(cfg, process_count):
  batch = 24  # does not divide the 100 test examples
  streams = [list(eval_batches(cfg, 'test', global_batch_size=batch,
                               process_index=p, process_count=process_count))
             for p in range(process_count)]
  lengths = {len(s) for s in streams}
  assert lengths == {num_eval_batches(TINY_TEST, batch)} == {5}
  merged = {key: np.concatenate([np.concatenate([s[j][key] for s in streams])
                                 for j in range(5)])
            for key in ('image', 'label', 'mask')}
  assert merged['mask'].dtype == np.bool_
  assert merged['mask'].sum() == TINY_TEST
  # Global order is split order, padding comes last and is blank.
  np.testing.assert_array_equal(merged['mask'], np.arange(5 * batch) < TINY_TEST)
  assert not merged['image'][TINY_TEST:].any()
  source = data.open_split(cfg, 'test')
  for i in (0, 37, TINY_TEST - 1):
    image, label = source[i]
    expected = eval_view(image, image_size=32, scale=48, mean_rgb=cfg.mean_rgb)
    np.testing.assert_array_equal(merged['image'][i], expected)
    assert merged['label'][i] == label
  labels = [source[i][1] for i in range(TINY_TEST)]
  np.testing.assert_array_equal(merged['label'][:TINY_TEST], labels)


def test_eval_defaults_to_the_configured_split(cfg):
  batches = list(eval_batches(cfg, global_batch_size=64))
  assert sum(int(b['mask'].sum()) for b in batches) == TINY_TEST


# --------------------------------------------------------------------------
# Image folders and errors.
# --------------------------------------------------------------------------

COLOURS = {'cat': (220, 30, 30), 'dog': (30, 30, 220)}


def write_folder(root, sizes_by_split):
  """Solid-colour images per class, as JPEG, PNG and a grayscale PNG."""
  for split, sizes in sizes_by_split.items():
    for name, colour in COLOURS.items():
      os.makedirs(root / split / name, exist_ok=True)
      for i, (h, w) in enumerate(sizes):
        image = Image.fromarray(np.full((h, w, 3), colour, np.uint8))
        if i % 2:
          image.save(root / split / name / f'{i}.png')
        else:
          image.save(root / split / name / f'{i}.JPG', quality=95)
    gray = Image.fromarray(np.full((40, 30), 90, np.uint8))
    gray.save(root / split / 'dog' / 'gray.png')
    (root / split / 'dog' / 'notes.txt').write_text('ignored: not an image')


def folder_cfg(root, **kw):
  return make_cfg(name='image_folder', folder=root and str(root), image_size=16,
                  train_scale=(16, 24), test_scale=20, color_shift=0.0,
                  mean_rgb=(0.0, 0.0, 0.0), **kw)


def test_image_folder_round_trip(tmp_path):
  write_folder(tmp_path, {'train': [(30, 40), (50, 20), (16, 16)],
                          'test': [(64, 48), (21, 33)]})
  cfg = folder_cfg(tmp_path)
  info = data.dataset_info(cfg)
  assert info.class_names == ('cat', 'dog')
  assert info.num_examples == {'train': 7, 'test': 5}
  batches = list(eval_batches(cfg, global_batch_size=4))
  images = np.concatenate([b['image'] for b in batches])[:5]
  labels = np.concatenate([b['label'] for b in batches])[:5]
  # Sorted by class then file name: cat/0.JPG, cat/1.png, dog/0.JPG, dog/1.png, dog/gray.png.
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])
  for image, colour in zip(images, [COLOURS['cat']] * 2 + [COLOURS['dog']] * 2):
    np.testing.assert_allclose(image.mean((0, 1)), colour, atol=6)
  np.testing.assert_allclose(images[4], 90.0)  # grayscale became equal RGB
  batch = next(data.train_batches(cfg, global_batch_size=14, seed=0))
  assert batch['image'].shape == (14, 16, 16, 3)
  for image, label in zip(batch['image'], batch['label']):
    centre = image[4:12, 4:12].mean((0, 1))
    if np.allclose(centre, 90.0, atol=1):
      assert label == 1
    else:
      np.testing.assert_allclose(centre, COLOURS[info.class_names[label]], atol=6)


def test_image_folder_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    data.dataset_info(folder_cfg(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='needs data.folder'):
    data.dataset_info(folder_cfg(None))
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  with pytest.raises(ValueError, match='no class subfolders'):
    data.dataset_info(folder_cfg(tmp_path / 'empty'))
  write_folder(tmp_path / 'mismatch', {'train': [(20, 20)], 'test': [(20, 20)]})
  os.rename(tmp_path / 'mismatch' / 'test' / 'dog', tmp_path / 'mismatch' / 'test' / 'wolf')
  with pytest.raises(ValueError, match=r"classes not in the training split: \['wolf'\]"):
    data.dataset_info(folder_cfg(tmp_path / 'mismatch'))
  write_folder(tmp_path / 'notest', {'train': [(20, 20)]})
  with pytest.raises(ValueError, match="no 'test' subfolder"):
    data.dataset_info(folder_cfg(tmp_path / 'notest'))


def test_unreadable_image_is_named(tmp_path):
  write_folder(tmp_path, {'train': [(20, 20)], 'test': [(20, 20)]})
  (tmp_path / 'test' / 'cat' / 'corrupt.jpg').write_bytes(b'\xff\xd8 truncated')
  with pytest.raises(Exception, match='corrupt.jpg'):
    list(eval_batches(folder_cfg(tmp_path), global_batch_size=4))


def test_unknown_tfds_name_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset name 'no_such_dataset_xyz'"):
    data.dataset_info(make_cfg(name='no_such_dataset_xyz', data_dir=str(tmp_path)))


@pytest.mark.slow  # starts worker processes
def test_batches_built_in_worker_processes_equal_the_threads_and_resume_exactly(cfg):
  workers_cfg = _with(cfg, num_workers=2)
  assert pipeline.worker_count(workers_cfg) == 2
  threads = take(data.train_batches(cfg, global_batch_size=16, seed=4), 5)
  workers = take(data.train_batches(workers_cfg, global_batch_size=16, seed=4), 5)
  resumed = take(data.train_batches(workers_cfg, global_batch_size=16, seed=4, start_step=3), 2)
  for want, got in zip(threads + threads[3:], workers + resumed):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(want[key], got[key])


def test_worker_count_defaults_to_none_on_the_cpu(cfg):
  assert pipeline.worker_count(_with(cfg, num_workers=-1)) == 0  # the tests run on the CPU
  assert pipeline.worker_count(_with(cfg, num_workers=3)) == 3


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='niceness per thread: Linux')
def test_pipeline_threads_yield_to_the_step_and_the_main_thread_does_not(cfg):
  assert pipeline.pipeline_niceness(_with(cfg, niceness=-1)) == 19  # the tests run on the CPU
  assert pipeline.pipeline_niceness(_with(cfg, niceness=0)) == 0
  main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
  pipeline.yield_to_the_step(7)
  assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
  main_policy = os.sched_getscheduler(threading.get_native_id())
  seen, policies = {}, {}

  def in_a_thread(niceness):
    tid = threading.get_native_id()
    pipeline.yield_to_the_step(niceness)
    seen[niceness] = os.getpriority(os.PRIO_PROCESS, tid)
    policies[niceness] = os.sched_getscheduler(tid)
    pipeline.yield_to_the_step(niceness + 5)  # once per thread
    seen[niceness, 'again'] = os.getpriority(os.PRIO_PROCESS, tid)

  for niceness in (0, 7, 19):
    thread = threading.Thread(target=in_a_thread, args=(niceness,))
    thread.start()
    thread.join()
  assert seen == {0: main_before, (0, 'again'): max(main_before, 5),
                  7: max(main_before, 7), (7, 'again'): max(main_before, 7),
                  19: 19, (19, 'again'): 19}
  # The lowest niceness also idles: below every niceness.
  assert policies == {0: main_policy, 7: main_policy, 19: os.SCHED_IDLE}
  assert os.sched_getscheduler(threading.get_native_id()) == main_policy
  # Batches are the same whatever the threads' priority.
  plain = take(data.train_batches(_with(cfg, niceness=0), global_batch_size=8, seed=1), 2)
  yielding = take(data.train_batches(_with(cfg, niceness=19), global_batch_size=8, seed=1), 2)
  for want, got in zip(plain, yielding):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(want[key], got[key])


def test_small_decoded_images_are_kept_and_the_stream_stays_the_same(tmp_path, monkeypatch):
  """Small images are decoded once per process and kept: JPEGs, and other formats
  where the source gives bytes (below); photographs, JPEGs that a smaller scale of
  the range decodes at reduced size, and a folder's PNG (a file unread here) are
  not; the batches, over epochs that reuse the kept images, are those without them."""
  rng = np.random.default_rng(0)
  # Sorted by class, then file name: the source's indices 0..4.
  files = {'cat/a.jpg': (20, 30), 'cat/b.jpg': (120, 100), 'cat/c.png': (30, 30),
           'dog/a.jpg': (70, 80), 'dog/b.jpg': (24, 24)}
  for name, (h, w) in files.items():
    os.makedirs(tmp_path / 'train' / os.path.dirname(name), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / 'train' / name)
  cfg = _with(folder_cfg(tmp_path), train_scale=(16, 40), color_shift=0.1)
  source = data.open_split(cfg, 'train')

  kept = pipeline.KeptDecodes(source, smallest_scale=16, max_bytes=1 << 30)
  for scale in (40, 16, 23):
    for index in range(5):
      image, label = kept(index, scale)
      encoded, expected_label = source[index]
      np.testing.assert_array_equal(image, transforms.decode(encoded, min_side=scale))
      assert label == expected_label
  # 120x100 is a photograph; 70x80 decodes at half size for S < 35.
  assert sorted(kept.kept) == [0, 4] and kept.kept_bytes == (20 * 30 + 24 * 24) * 3
  assert not kept(0, 16)[0].flags.writeable
  # The same images as bytes, as TFDS gives them: now the PNG is kept too, as the
  # array of Pillow's pixels, whose crops are the Pillow image's.
  as_bytes = [(pathlib.Path(path).read_bytes(), label) for path, label in
              (source[i] for i in range(5))]
  from_bytes = pipeline.KeptDecodes(as_bytes, smallest_scale=16, max_bytes=1 << 30)
  for scale in (40, 16):
    for index in range(5):
      image, _ = from_bytes(index, scale)
      np.testing.assert_array_equal(image, transforms.decode(as_bytes[index][0], min_side=scale))
  assert sorted(from_bytes.kept) == [0, 2, 4]
  small_budget = pipeline.KeptDecodes(source, smallest_scale=16, max_bytes=20 * 30 * 3)
  for index in range(5):
    small_budget(index, 16)
  assert sorted(small_budget.kept) == [0]

  def first_batches(kept_bytes):
    monkeypatch.setattr(pipeline, 'KEPT_DECODES_BYTES', kept_bytes)
    return take(data.train_batches(cfg, global_batch_size=5, seed=3), 4)  # 4 epochs

  for with_kept, without in zip(first_batches(1 << 30), first_batches(0)):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(with_kept[key], without[key])


def test_a_tfds_datasets_pixels_are_kept_and_its_stream_stays_the_same(cfg, monkeypatch):
  """The built-in dataset's raw pixels, read from its ArrayRecord files each time
  otherwise: over two epochs, the same batches with and without keeping them."""
  def batches(kept_bytes):
    monkeypatch.setattr(pipeline, 'KEPT_DECODES_BYTES', kept_bytes)
    return take(data.train_batches(cfg, global_batch_size=64, seed=1), 2 * TINY_TRAIN // 64)

  for with_kept, without in zip(batches(1 << 30), batches(0)):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(with_kept[key], without[key])


def _with(cfg, **fields):
  copy = ml_collections.ConfigDict(cfg.to_dict())
  copy.update(fields)
  return copy


# --------------------------------------------------------------------------
# Image stores: the folder decoded and pre-resized (vgg_jax.data.store).
# --------------------------------------------------------------------------


def noisy_folder(root):
  """Random pixels, so that a changed pixel anywhere shows: JPEG, PNG, grayscale."""
  rng = np.random.default_rng(0)
  for split, count in (('train', 6), ('test', 3)):
    for c, name in enumerate(('cat', 'dog')):
      os.makedirs(root / split / name)
      for i in range(count):
        h, w = 24 + 7 * i, 40 - 3 * i
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3 - 2 * (i == 1)), np.uint8)
                                .squeeze())
        image.save(root / split / name / f'{i}.{"jpg" if (i + c) % 2 else "png"}')
  return root


def store_cfg(store):
  return make_cfg(name='image_store', folder=str(store), image_size=16, train_scale=(16, 40),
                  test_scale=20, color_shift=0.1, mean_rgb=(1.0, 2.0, 3.0))


def test_an_image_store_holds_the_folders_pixels_and_trains_on_them_bit_for_bit(tmp_path):
  folder = noisy_folder(tmp_path / 'folder')
  manifest = store.write(str(folder), str(tmp_path / 'store'), threads=2)
  assert manifest['num_examples'] == {'train': 12, 'test': 6}
  assert oct(os.stat(tmp_path / 'store').st_mode & 0o777) == '0o755'
  in_store = store_cfg(tmp_path / 'store')
  in_folder = make_cfg(**{**in_store.to_dict(), 'name': 'image_folder', 'folder': str(folder)})
  assert data.dataset_info(in_store).class_names == data.dataset_info(in_folder).class_names
  assert data.dataset_info(in_store).num_examples == data.dataset_info(in_folder).num_examples
  for split in ('train', 'test'):
    stored, files = data.open_split(in_store, split), data.open_split(in_folder, split)
    for i in range(len(files)):
      (pixels, label), (path, file_label) = stored[i], files[i]
      np.testing.assert_array_equal(pixels, transforms.decode(path))
      assert label == file_label
  batches = [take(data.train_batches(cfg, global_batch_size=4, seed=3, start_step=2), 4)
             for cfg in (in_store, in_folder)]
  for a, b in zip(*batches):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
  ours = list(eval_batches(in_store, global_batch_size=4))
  theirs = list(eval_batches(in_folder, global_batch_size=4))
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_an_image_store_keeps_smaller_sides_at_most_max_side(tmp_path):
  folder = noisy_folder(tmp_path / 'folder')
  store.write(str(folder), str(tmp_path / 'store'), max_side=30, splits=('train',))
  source = sources.StoreSource(str(tmp_path / 'store'), 'train')
  paths, _ = sources.scan_split(str(folder), 'train', ('cat', 'dog'))
  for i, path in enumerate(paths):
    image = transforms.decode(path)
    if min(image.shape[:2]) > 30:
      image = transforms.rescale(image, 30)
    np.testing.assert_array_equal(source[i][0], image)
  assert max(min(source[i][0].shape[:2]) for i in range(len(source))) == 30
  with pytest.raises(ValueError, match=r"has no split 'test' \(it has train\)"):
    sources.StoreSource(str(tmp_path / 'store'), 'test')


def test_an_existing_store_is_never_overwritten_and_bad_stores_are_named(tmp_path):
  folder = noisy_folder(tmp_path / 'folder')
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'results.json').write_text('{}')
  with pytest.raises(ValueError, match='taken already exists: choose another --output'):
    store.write(str(folder), str(tmp_path / 'taken'))
  assert os.listdir(tmp_path / 'taken') == ['results.json']
  with pytest.raises(ValueError, match='does not exist'):
    store.write(str(tmp_path / 'nowhere'), str(tmp_path / 'new'))
  assert sorted(os.listdir(tmp_path)) == ['folder', 'taken']  # no half-written store left
  with pytest.raises(ValueError, match=r'needs data.folder to be a store written by '
                                       r'`python -m vgg_jax.data.store`'):
    data.dataset_info(store_cfg(folder))


@pytest.mark.slow  # starts worker processes
def test_an_image_store_feeds_worker_processes(tmp_path):
  """The source pickles without its memory map; each worker maps the file."""
  store.write(str(noisy_folder(tmp_path / 'folder')), str(tmp_path / 'store'))
  in_threads = store_cfg(tmp_path / 'store')
  batches = [take(data.train_batches(cfg, global_batch_size=4, seed=3, start_step=1), 3)
             for cfg in (in_threads, _with(in_threads, num_threads=1, num_workers=2))]
  for a, b in zip(*batches):
    for key in ('image', 'offset', 'label'):
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow  # starts the command
def test_the_store_command_writes_once_and_refuses_an_existing_output(tmp_path):
  folder = noisy_folder(tmp_path / 'folder')
  command = [sys.executable, '-m', 'vgg_jax.data.store', f'--folder={folder}',
             f'--output={tmp_path / "store"}', '--max_side=30']
  proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith(f'wrote {tmp_path / "store"}: 12 train, 6 test images')
  before = os.stat(tmp_path / 'store' / 'train.pixels').st_mtime_ns
  proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      f'vgg_jax.data.store: error: {tmp_path / "store"} already exists: choose another '
      '--output or delete it')
  assert os.stat(tmp_path / 'store' / 'train.pixels').st_mtime_ns == before
