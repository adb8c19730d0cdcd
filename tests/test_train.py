"""The training job end to end, on the built-in dataset's 'tiny' config.

Kills, preemption and resumption are tested in test_reliability.py.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from vgg_jax import checkpoints, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 48
OVERRIDES = {
    'data.builder_config': 'tiny', 'model.width': 1 / 16, 'model.fc_width': 16,
    'batch_size': 16, 'num_train_steps': STEPS, 'log_every_steps': 8,
    'eval_every_steps': 24, 'checkpoint_every_steps': 6, 'keep_checkpoints': 2,
}


def tiny_config(data_dir, **extra):
  config = default.get_config()
  config.data.data_dir = str(data_dir)
  for key, value in {**OVERRIDES, **extra}.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def command_env(devices=1):
  """os.environ for a command a test starts: the suite's XLA flags
  (tests/conftest.py), with `devices` CPU devices instead of eight."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', os.environ['XLA_FLAGS'])
  return dict(os.environ,
              XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={devices}'.strip())


def cli_args(config_file, workdir, data_dir, **extra):
  flags = [f'--config.{k}={v}' for k, v in {**OVERRIDES, **extra}.items()]
  return [sys.executable, '-m', 'vgg_jax.train', f'--config={config_file}',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *flags]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = train.train_and_evaluate(tiny_config(data_dir), str(workdir))
  return workdir, result


def test_run_leaves_checkpoints_metrics_and_config(uninterrupted):
  workdir, result = uninterrupted
  assert result['num_examples'] == 100  # the whole tiny test split, once
  assert checkpoints.available_steps(str(workdir)) == [STEPS - 6, STEPS]
  params = checkpoints.restore_params(str(workdir))
  assert isinstance(params['conv1_1']['kernel'], np.ndarray)
  assert params['fc1']['kernel'].shape == (1, 1, 32, 16)  # 32 crop: FC1 on a 1x1 map

  lines = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert [l['step'] for l in lines] == list(range(8, STEPS + 1, 8))
  assert {'train/loss', 'train/top1_error', 'lr', 'img_per_sec'} <= set(lines[0])
  evals = [l for l in lines if 'eval/top1_error' in l]
  assert [l['step'] for l in evals] == [24, 48]
  assert evals[-1]['eval/top1_error'] == pytest.approx(result['top1_error'])
  assert all(l['eval/seconds'] > 0 for l in evals)  # timed apart from training
  saved = json.load(open(workdir / 'config.json'))
  assert saved['model']['variant'] == 'A' and saved['num_train_steps'] == STEPS

  # TensorBoard reads the same scalars from the run's event file.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  for tag in ('train/loss', 'lr', 'eval/top1_error'):
    logged = [(l['step'], l[tag]) for l in lines if tag in l]
    assert [(e.step, e.value) for e in events.Scalars(tag)] == [
        (step, pytest.approx(value, rel=1e-6)) for step, value in logged]


@pytest.mark.parametrize('override, message', [
    ({'model.variant': 'F'}, 'unknown VGG variant'),
    ({'batch_size': 12}, 'not divisible by the 8 devices'),
    ({'label_smoothing': 1.0}, r'label_smoothing=1.0 must be in \[0, 1\)'),
    ({'data.image_size': 48}, 'larger than the smallest training scale'),
    ({'data.name': 'image_folder', 'data.folder': '/nonexistent/folder'}, '/nonexistent/folder'),
    ({'data.name': 'no_such_dataset_xyz'}, 'no_such_dataset_xyz'),
])
def test_bad_config_fails_clearly_and_leaves_checkpoints_untouched(
    uninterrupted, data_dir, override, message):
  workdir = uninterrupted[0]
  before = {p: os.stat(os.path.join(r, p)).st_mtime_ns
            for r, _, files in os.walk(workdir) for p in files}
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    train.train_and_evaluate(tiny_config(data_dir, **override), str(workdir))
  after = {p: os.stat(os.path.join(r, p)).st_mtime_ns
           for r, _, files in os.walk(workdir) for p in files}
  assert before == after


def test_label_smoothing_is_the_cross_entropy_against_softened_one_hot_targets():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
  labels = np.array([0, 2])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.full((2, 3), 0.2 / 3) + 0.8 * np.eye(3)[labels]
  np.testing.assert_allclose(train.cross_entropy(logits, labels, 0.2),
                             -(targets * log_p).sum(-1).mean(), rtol=1e-6)
  np.testing.assert_allclose(train.cross_entropy(logits, labels),
                             -log_p[[0, 1], labels].mean(), rtol=1e-6)


@pytest.mark.slow  # starts the command in a subprocess
def test_cli_error_is_one_line_with_nonzero_exit(tmp_path, data_dir):
  cmd = cli_args(os.path.join(REPO, 'configs/default.py'), tmp_path / 'w', data_dir,
                 **{'model.variant': 'Z'})
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('vgg_jax.train: error: unknown VGG variant') and 'choose one of' in last
  assert not (tmp_path / 'w').exists()
