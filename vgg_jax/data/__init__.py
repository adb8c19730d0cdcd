"""Datasets, the paper's image transforms and the training input pipeline.

Evaluation reads a split by random access (`open_split`) and makes the test
protocols' views itself (`vgg_jax.evaluation`).

    info = data.dataset_info(cfg)
    batches = data.train_batches(cfg, global_batch_size=256, seed=0, start_step=t0,
                                 process_index=p, process_count=P)

`cfg` is the experiment's `data` ConfigDict (`vgg_jax.config_schema` gives
every field its default):

  name            'vgg_shapes' (built in, generated locally), 'image_folder',
                  'image_store' (an image folder decoded and pre-resized by
                  `python -m vgg_jax.data.store`: no decoding while training), or
                  a TFDS image-classification name ('cifar10', 'imagenet2012').
  folder          image_folder: root with <split>/<class>/<image> files;
                  image_store: the store's directory.
  data_dir        TFDS data directory; None = TFDS's default.
  builder_config  TFDS builder config; vgg_shapes has 'default' and 'tiny'.
  train_split     'train'; eval_split: 'test' (TFDS slices like 'train[90%:]' work).
  image_size      side of the crop fed to the network.
  train_scale     S: (S_min, S_max) drawn per image, equal for a fixed S.
  test_scale      Q: smaller side before the centre crop at evaluation.
  color_shift     std of the PCA lighting alphas (0.1 in the paper; 0 = off).
  flip            'random' (each crop with probability 1/2, the paper's) or
                  'alternating' (each example the other way from its last epoch).
  mean_rgb        subtracted per channel, in 0..255 pixel units.
  shuffle         a fresh permutation every epoch (True) or split order.
  num_threads     decode/augment threads (0 = one per CPU).
  num_workers     grain worker processes building whole training batches (for
                  large JPEG datasets when threads are GIL-bound); 0 = none,
                  -1 = CPUs - 2 on an accelerator, none on the CPU.
  prefetch_batches  batches prepared ahead.
  niceness        Linux niceness of the pipeline's threads and workers (19 adds
                  the SCHED_IDLE policy); -1 = 19 when the step runs on the CPU
                  (decoding yields the cores to it), 0 on an accelerator.

Modules: `builtin` (the vgg_shapes dataset), `transforms` (the paper's image
operations), `sources` (random access to each kind of dataset), `pipeline`
(deterministic, resumable, sharded batching), `store` (the command that writes
an image store).
"""

from vgg_jax.data import builtin
from vgg_jax.data import transforms
from vgg_jax.data.pipeline import check_flip
from vgg_jax.data.pipeline import check_scales
from vgg_jax.data.pipeline import decode_threads
from vgg_jax.data.pipeline import train_batches
from vgg_jax.data.sources import DatasetInfo
from vgg_jax.data.sources import dataset_info
from vgg_jax.data.sources import mean_rgb
from vgg_jax.data.sources import open_split

__all__ = ['DatasetInfo', 'builtin', 'check_flip', 'check_scales', 'dataset_info',
           'decode_threads', 'mean_rgb', 'open_split', 'train_batches', 'transforms']
