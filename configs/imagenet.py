"""The paper's ImageNet protocol (§3.1, §3.2, §4) for any row of Table 1.

    --config=configs/imagenet.py:D            VGG-D, fixed S = 256
    --config=configs/imagenet.py:D,S=384      fixed S = 384 (lr 1e-3; start it from S = 256)
    --config=configs/imagenet.py:E,jitter     S drawn per image from [256, 512]
    --config=configs/imagenet.py:D,S=384,scratch   S = 384 from random weights at lr 1e-3

The S = 384 and jittered configs fine-tune (lr 1e-3): training refuses to start
without `--config.init_from=WORKDIR` (the run to start from), unless the
config string says `scratch`.

Training (§3.1): batch 256, SGD with momentum 0.9, weight decay 5e-4,
dropout 0.5 before FC2 and FC3, weights from N(0, 0.01^2), biases 0, a
learning rate of 1e-2 divided by 10 when validation accuracy stops improving
(at most three times), 74 epochs; random 224 crops of the image rescaled to
S, flips, PCA colour shift, ImageNet's mean RGB subtracted. Evaluation is
once an epoch on the validation set (the plateau rule's signal).

Compute is bf16 (`model.dtype`; parameters, optimizer state, batch-norm and
LRN statistics and the loss stay float32): this config is for GPUs, where bf16
is the fast path; `--config.model.dtype=float32` restores the paper's fp32.
`--config.deterministic=True` makes a resumed GPU run bit-for-bit the
uninterrupted one, at some speed.

Initialisation, as the paper (set `--config.init_from=WORKDIR`, see
`vgg_jax/warm_start.py`):
  * A trains from random weights; B-E start from a trained A (conv1_1,
    conv2_1, conv3_1, conv3_2 and the three FC layers copied).
  * S = 384 starts from the same configuration trained at S = 256, with the
    paper's smaller rate 1e-3 (everything copied).
  * Jittered S starts from the S = 384 model; the paper gives no rate for
    this fine-tune, so it keeps 1e-3 too.

Test scales: a single scale Q = S (fixed S) or Q = 384 (jittered); `auto`
for the multi-scale rows (Tables 4-5): Q = {S - 32, S, S + 32} or
{256, 384, 512}. The paper's Table 3 is dense evaluation at that single scale
('dense'; §3.2, and Table 4's jittered D/E rows equal Table 5's dense row);
'single', the centre crop, is the training loop's quick check.
`config.evals` lists what `experiments.sweep` evaluates after training;
`vgg_jax.train` itself ignores it.

Data: `imagenet2012` from TFDS (the ILSVRC2012 tars in
DATA_DIR/downloads/manual/); set `--config.data.data_dir=DATA_DIR`.

Expected: the paper's Table 3, e.g. D at S = 256: 27.0 % top-1 / 8.8 % top-5
error (dense, single scale); D with jitter: 25.6 / 8.1, and 24.8 / 7.5 with dense
multi-scale evaluation (Table 4). The paper took 2-3 weeks per net on four
NVIDIA Titan Black GPUs. Not yet measured with this code: no run of this
config has been made (it needs ImageNet and GPUs).
"""

from vgg_jax import config_schema

# §3.1: the fixed scales and the jitter range; §4.1: the jittered models'
# single test scale.
FIXED_SCALES = (256, 384)
JITTER_RANGE = (256, 512)
JITTER_TEST_SCALE = 384
BASE_LEARNING_RATE = 1e-2
FINE_TUNE_LEARNING_RATE = 1e-3  # §3.1: S = 384 starts from S = 256 at 1e-3


def get_config(arg=None):
  arg = config_schema.parse_arg(arg, positional='variant', variant='D', S=256, jitter=False,
                                scratch=False)
  if arg.jitter and arg.S != 256:
    raise ValueError(f'S={arg.S} and jitter exclude each other: jitter draws S '
                     f'from {list(JITTER_RANGE)}')
  if arg.S < 224:
    raise ValueError(f'S={arg.S} is smaller than the 224 crop')
  fine_tune = arg.jitter or arg.S != 256

  config = config_schema.base_config()  # the paper's protocol
  config.model.variant = arg.variant
  config.model.dtype = 'bfloat16'  # a GPU config: see the docstring
  config.data.train_scale = JITTER_RANGE if arg.jitter else (arg.S, arg.S)
  config.data.test_scale = JITTER_TEST_SCALE if arg.jitter else arg.S
  config.optimizer.learning_rate = FINE_TUNE_LEARNING_RATE if fine_tune else BASE_LEARNING_RATE
  config.requires_init_from = fine_tune and not arg.scratch
  # The centre crop, Table 3 (dense at Q = S), Table 4 (multi-scale dense) and Table 5.
  config.evals = ('single', 'dense', 'dense:auto', 'multicrop:auto', 'dense+multicrop:auto')
  return config
