"""Writes an image folder as an image store: decoded, pre-resized, read without decoding.

    python -m vgg_jax.data.store --folder=ROOT --output=STORE [--max_side=512]

then train or evaluate with `data.name='image_store'`, `data.folder=STORE`.
Each split of ROOT (ROOT/<split>/<class>/<image>) becomes one file of raw
uint8 RGB pixels, each image rescaled with the pipeline's antialiased bicubic
so that its smaller side is at most `max_side` (512, the paper's largest
training scale: no protocol needs more), and an index of offsets, shapes and
labels (`sources.StoreSource` reads it). Big_vision and FFCV store training
sets pre-resized the same way; keeping the pixels raw trades disk for
decoding: a training image costs a memory copy instead of a JPEG decode.

Images no larger than `max_side` are stored exactly as `transforms.decode`
returns them, so a run on the store sees the folder's pixels bit for bit.
The store is written into a temporary directory beside STORE and renamed when
complete; an existing STORE is never touched.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
from typing import Sequence

import numpy as np
from absl import app, flags

from vgg_jax.data import sources, transforms


def stored_pixels(path: str, max_side: int) -> np.ndarray:
  """One image as the store keeps it: decoded, smaller side at most `max_side`."""
  image = transforms.decode(path)
  if min(image.shape[:2]) > max_side:
    image = transforms.rescale(image, max_side)
  return np.ascontiguousarray(image)


def _write_split(directory: str, split: str, files: Sequence[str], labels: np.ndarray,
                 max_side: int, threads: int) -> int:
  pixels_path, index_path = sources.store_paths(directory, split)
  index = np.zeros((len(files), 4), np.int64)
  offset, chunk = 0, 16 * threads
  with open(pixels_path, 'wb') as out, concurrent.futures.ThreadPoolExecutor(threads) as pool:
    # A chunk at a time, in the split's order (the file's layout): decoded
    # images wait in memory for one chunk, not for a whole ImageNet split.
    for start in range(0, len(files), chunk):
      images = pool.map(lambda f: stored_pixels(f, max_side), files[start:start + chunk])
      for i, image in enumerate(images, start):
        out.write(image.tobytes())
        index[i] = (offset, image.shape[0], image.shape[1], labels[i])
        offset += image.nbytes
  np.save(index_path, index)
  return offset


def write(folder: str, output: str, *, max_side: int = 512,
          splits: Sequence[str] = ('train', 'test'), threads: int = 0) -> dict:
  """Writes the store of image folder `folder` at `output`; returns its manifest."""
  if max_side < 1:
    raise ValueError(f'--max_side={max_side} must be positive')
  if os.path.lexists(output):
    raise ValueError(f'{output} already exists: choose another --output or delete it')
  root = sources.folder_root(folder)
  class_names = sources.folder_classes(root, splits[0])
  scanned = {split: sources.scan_split(root, split, class_names) for split in splits}
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  temporary = tempfile.mkdtemp(prefix=f'.{os.path.basename(output)}.', dir=parent)
  try:
    os.chmod(temporary, 0o755)  # mkdtemp's 0o700 would hide the store from other users
    pixel_bytes = sum(_write_split(temporary, split, files, labels, max_side,
                                   threads or os.cpu_count() or 1)
                      for split, (files, labels) in scanned.items())
    manifest = {'format': sources.STORE_FORMAT, 'version': sources.STORE_VERSION,
                'max_side': max_side, 'class_names': list(class_names),
                'num_examples': {split: len(files) for split, (files, _) in scanned.items()},
                'pixel_bytes': pixel_bytes, 'written_from': os.path.abspath(folder)}
    with open(os.path.join(temporary, sources.STORE_MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=2)
    os.rename(temporary, output)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  return manifest


def _define_flags():
  # Defined by the command line only: importing this module defines no flags.
  flags.DEFINE_string('folder', None, 'Image folder: ROOT/<split>/<class>/<image>.',
                      required=True)
  flags.DEFINE_string('output', None, 'The store to write (a new directory).', required=True)
  flags.DEFINE_integer('max_side', 512, 'Largest smaller side kept; larger images are '
                       'rescaled down to it.')
  flags.DEFINE_list('splits', ['train', 'test'], 'Subfolders of --folder to store.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    manifest = write(f.folder, f.output, max_side=f.max_side, splits=f.splits)
  except ValueError as e:
    sys.exit(f'vgg_jax.data.store: error: {e}')
  sizes = ', '.join(f'{n:,} {split}' for split, n in manifest['num_examples'].items())
  print(f'wrote {f.output}: {sizes} images, {manifest["pixel_bytes"] / 2**20:,.0f} MiB '
        f'of pixels, smaller sides at most {f.max_side}')


if __name__ == '__main__':
  from vgg_jax import cli  # the command's conventions; the library needs none of it
  _define_flags()
  app.run(main, flags_parser=cli.flags_parser('vgg_jax.data.store'))
