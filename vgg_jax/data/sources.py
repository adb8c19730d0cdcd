"""Where images come from: the built-in dataset, any TFDS dataset, an image folder,
or an image store (an image folder decoded and pre-resized by `vgg_jax.data.store`).

Each split is opened as a random-access `Source` (len, and index -> (encoded
image or path, label)), because deterministic, resumable, sharded streams need
to fetch example i directly rather than replay a sequential reader. Decoding
stays with the caller, which knows the target scale and can decode large JPEGs
at reduced size.

`cfg` is the `data` part of the experiment config; see `vgg_jax.data` for the
fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional, Protocol, Sequence

import numpy as np
import tensorflow_datasets as tfds

from vgg_jax.data import builtin
from vgg_jax.data import transforms

BUILTIN = 'vgg_shapes'
IMAGE_FOLDER = 'image_folder'
IMAGE_STORE = 'image_store'
# Files read from an image folder; anything else (README, .DS_Store) is ignored.
IMAGE_EXTENSIONS = frozenset((
    '.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.bmp', '.dib', '.gif', '.webp',
    '.tif', '.tiff', '.ppm', '.pgm', '.pbm', '.pnm', '.tga', '.ico', '.avif',
    '.qoi'))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the training loop need to know about a dataset.

  `num_examples` maps split names (the dataset's own, plus the configured
  train and eval splits, which may be TFDS slices such as 'train[:90%]') to
  their sizes.
  """
  name: str
  class_names: tuple[str, ...]
  num_examples: Mapping[str, int]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


class Source(Protocol):
  """One split, by random access: index -> (image data, integer label)."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> tuple[transforms.ImageData, int]:
    ...


def dataset_info(cfg) -> DatasetInfo:
  """Classes and split sizes; prepares the built-in dataset on first use."""
  name = cfg.name
  splits = [cfg.train_split, cfg.eval_split]
  if name == IMAGE_FOLDER:
    root = folder_root(cfg.folder)
    class_names = folder_classes(root, splits[0])
    sizes = {s: len(scan_split(root, s, class_names)[0]) for s in dict.fromkeys(splits)}
    return DatasetInfo(name, class_names, sizes)
  if name == IMAGE_STORE:
    manifest = read_store_manifest(cfg.folder)
    sizes = {s: store_split_size(manifest, cfg.folder, s) for s in dict.fromkeys(splits)}
    return DatasetInfo(name, tuple(manifest['class_names']), sizes)
  builder = _tfds_builder(cfg)
  sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
  for split in splits:
    if split not in sizes:
      sizes[split] = len(_tfds_source(cfg, split, builder))
  _, label_key = _supervised_keys(builder)
  class_names = tuple(builder.info.features[label_key].names)
  return DatasetInfo(name, class_names, sizes)


def open_split(cfg, split: str) -> Source:
  """The split as a random-access `Source`."""
  if cfg.name == IMAGE_FOLDER:
    root = folder_root(cfg.folder)
    class_names = folder_classes(root, cfg.train_split)
    return FolderSource(*scan_split(root, split, class_names))
  if cfg.name == IMAGE_STORE:
    return StoreSource(cfg.folder, split)
  return _tfds_source(cfg, split, _tfds_builder(cfg))


def mean_rgb(cfg, split: Optional[str] = None,
             max_examples: int = 5000) -> tuple[float, float, float]:
  """Mean pixel (0..255 RGB) of a split, from up to `max_examples` evenly spaced images.

  Every image weighs the same whatever its size, like the per-image crops the
  network sees. Use it to fill `mean_rgb` for a new dataset.
  """
  source = open_split(cfg, split or cfg.train_split)
  step = max(1, len(source) // max_examples)
  means = [transforms.decode(source[i][0]).reshape(-1, 3).mean(0)
           for i in range(0, len(source), step)]
  return tuple(float(m) for m in np.mean(means, axis=0))


# --------------------------------------------------------------------------
# TFDS (the built-in dataset is one too).
# --------------------------------------------------------------------------


class TfdsSource:
  """A TFDS ArrayRecord split: (encoded image bytes or uint8 pixels, label)."""

  def __init__(self, data_source, image_key: str, label_key: str):
    self._data = data_source
    self._image_key = image_key
    self._label_key = label_key

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int):
    example = self._data[index]
    return example[self._image_key], int(example[self._label_key])


def _tfds_builder(cfg) -> tfds.core.DatasetBuilder:
  name, data_dir, config = cfg.name, cfg.data_dir, cfg.builder_config
  if name == BUILTIN:
    return builtin.prepare(data_dir, config)
  try:
    builder = tfds.builder(name, data_dir=data_dir, config=config)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"unknown dataset name {name!r}: set data.name to '{BUILTIN}', "
        f"'{IMAGE_FOLDER}' or '{IMAGE_STORE}' (with data.folder) or a TFDS image-classification "
        'dataset (see tfds.list_builders())') from e
  if not builder.is_prepared():
    with builtin.file_lock(os.path.join(os.fspath(builder.data_dir_root),
                                        f'.{builder.name}.lock')):
      builder = tfds.builder(name, data_dir=data_dir, config=config)
      if not builder.is_prepared():
        try:
          builder.download_and_prepare(file_format='array_record')
        except Exception as e:  # pylint: disable=broad-except
          # Mostly the network or a manual download missing: the user's to fix.
          root = builder.data_dir_root
          raise ValueError(
              f'could not prepare TFDS dataset {name!r} in {root} ({type(e).__name__}: '
              f"{e}): prepare it once with 'tfds build {name} --file_format=array_record' "
              f'where its source can be reached (some datasets, e.g. imagenet2012, need a '
              f'manual download first) and copy {root}/{name} here, or read an image folder '
              'instead (data.name=image_folder, data.folder=ROOT)') from e
    builder = tfds.builder(name, data_dir=data_dir, config=config)
  _supervised_keys(builder)  # Fail early on datasets that are not image classification.
  return builder


def _is_image(feature) -> bool:
  # An encoded image, or raw uint8 pixels (as vgg_shapes stores them).
  if isinstance(feature, tfds.features.Image):
    return True
  return (isinstance(feature, tfds.features.Tensor) and feature.np_dtype == np.uint8
          and len(feature.shape) == 3 and feature.shape[-1] in (1, 3))


def _supervised_keys(builder) -> tuple[str, str]:
  keys = builder.info.supervised_keys
  features = builder.info.features
  if (not keys or len(keys) != 2 or not isinstance(keys[0], str)
      or not _is_image(features[keys[0]])
      or not isinstance(features[keys[1]], tfds.features.ClassLabel)):
    raise ValueError(
        f'TFDS dataset {builder.name!r} is not an image-classification dataset '
        f'(its supervised keys are {keys}, not an image and a class label)')
  return keys


def _tfds_source(cfg, split: str, builder) -> TfdsSource:
  formats = {builder.info.file_format} | set(
      getattr(builder.info, 'alternative_file_formats', ()) or ())
  if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
    raise ValueError(
        f'TFDS dataset {builder.name!r} in {builder.data_dir} is stored as '
        f'{builder.info.file_format.value}, which cannot be read by random '
        f'access: prepare it again with `tfds build {builder.name} '
        '--file_format=array_record` (or convert it with `tfds convert_format '
        '--out_file_format=array_record`)')
  image_key, label_key = _supervised_keys(builder)
  # Encoded images stay bytes: the pipeline decodes them knowing the target
  # scale. Raw pixel tensors decode for free.
  encoded = isinstance(builder.info.features[image_key], tfds.features.Image)
  try:
    data = builder.as_data_source(
        split=split, file_format='array_record',
        decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None)
  except (KeyError, ValueError) as e:
    raise ValueError(f'dataset {builder.name!r} has no split {split!r} (it has '
                     f'{", ".join(builder.info.splits)}): {e}') from e
  return TfdsSource(data, image_key, label_key)


# --------------------------------------------------------------------------
# Image folders: root/<split>/<class>/<image>.
# --------------------------------------------------------------------------


class FolderSource:
  """Files listed once, sorted, so index i means the same image on every host."""

  def __init__(self, files: Sequence[str], labels: np.ndarray):
    self._files = list(files)
    self._labels = labels

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int):
    return self._files[index], int(self._labels[index])


def folder_root(root: Optional[str]) -> str:
  if not root:
    raise ValueError("data.name='image_folder' needs data.folder: a directory "
                     'with train/<class>/* and test/<class>/* images')
  if not os.path.isdir(root):
    raise ValueError(f'image folder {root!r} does not exist: set data.folder to a '
                     'directory with train/<class>/* and test/<class>/* images')
  return root


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith('.'))


def folder_classes(root: str, split: str) -> tuple[str, ...]:
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    raise ValueError(f'image folder {root!r} has no {split!r} subfolder: expected '
                     f'{os.path.join(root, split, "<class>", "*.jpg")}')
  classes = _subdirs(path)
  if not classes:
    raise ValueError(f'{path} has no class subfolders: put each class\'s images '
                     f'in {os.path.join(path, "<class>")}/')
  return tuple(classes)


def scan_split(root: str, split: str,
               class_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """Sorted image paths of a split and their labels (index in `class_names`)."""
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    raise ValueError(f'image folder {root!r} has no {split!r} subfolder: expected '
                     f'{os.path.join(root, split, "<class>", "*.jpg")}')
  found = _subdirs(path)
  if list(found) != list(class_names):
    extra = sorted(set(found) - set(class_names))
    missing = sorted(set(class_names) - set(found))
    problem = '; '.join(
        ([f'classes not in the training split: {extra}'] if extra else [])
        + ([f'missing classes: {missing}'] if missing else []))
    raise ValueError(f'{path} must have the same class subfolders as the '
                     f'training split ({problem}): add or rename the folders')
  files, labels = [], []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(path, name)
    images = sorted(e.path for e in os.scandir(class_dir) if e.is_file()
                    and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    if not images:
      raise ValueError(f'{class_dir} has no image files (looked for '
                       f'{", ".join(sorted(IMAGE_EXTENSIONS))})')
    files += images
    labels += [label] * len(images)
  return files, np.asarray(labels, np.int32)


# --------------------------------------------------------------------------
# Image stores: an image folder decoded and pre-resized (vgg_jax.data.store).
# --------------------------------------------------------------------------

STORE_FORMAT = 'vgg_jax image store'
STORE_VERSION = 1
STORE_MANIFEST = 'store.json'


def store_paths(store: str, split: str) -> tuple[str, str]:
  """The split's pixel file (raw uint8 RGB, image after image) and its index
  (int64 rows: byte offset, height, width, label)."""
  return os.path.join(store, f'{split}.pixels'), os.path.join(store, f'{split}.index.npy')


def read_store_manifest(store: Optional[str]) -> dict:
  path = os.path.join(store or '', STORE_MANIFEST)
  if not store or not os.path.isfile(path):
    raise ValueError(f"data.name='image_store' needs data.folder to be a store written "
                     f'by `python -m vgg_jax.data.store`; {store!r} has no {STORE_MANIFEST}')
  with open(path) as f:
    manifest = json.load(f)
  if (manifest.get('format'), manifest.get('version')) != (STORE_FORMAT, STORE_VERSION):
    raise ValueError(f'{path} is not a version-{STORE_VERSION} image store: write it again '
                     'with `python -m vgg_jax.data.store`')
  return manifest


def store_split_size(manifest: dict, store: str, split: str) -> int:
  if split not in manifest['num_examples']:
    raise ValueError(f'image store {store!r} has no split {split!r} (it has '
                     f'{", ".join(manifest["num_examples"])}): write it with that split')
  return manifest['num_examples'][split]


class StoreSource:
  """One split of a store: index -> (uint8 HxWx3 pixels, label), no decoding.

  The pixel file is memory-mapped on first use in each process that reads it
  (pickling leaves the map behind, for grain's worker processes); images are
  read-only views of it.
  """

  def __init__(self, store: str, split: str):
    store_split_size(read_store_manifest(store), store, split)
    self._pixels_path, index_path = store_paths(store, split)
    self._index = np.load(index_path)
    self._pixels = None

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int):
    if self._pixels is None:
      self._pixels = np.memmap(self._pixels_path, np.uint8, mode='r')
    offset, height, width, label = (int(v) for v in self._index[index])
    return self._pixels[offset:offset + height * width * 3].reshape(height, width, 3), label

  def __getstate__(self):
    return {**self.__dict__, '_pixels': None}
