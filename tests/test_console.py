"""A command's console: this project's lines by default, the libraries' with --v=1."""

import logging as std_logging
import os
import re
import subprocess
import sys

import pytest
from absl import logging

from vgg_jax import console, onednn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import REPO, cli_args  # pylint: disable=wrong-import-position


def record(pathname, level=std_logging.INFO):
  return std_logging.LogRecord('absl', level, pathname, 1, 'message', None, None)


@pytest.fixture
def verbosity():
  before = logging.get_verbosity()
  yield logging.set_verbosity
  logging.set_verbosity(before)


def test_library_info_passes_only_at_verbosity_1(verbosity):
  library = record('/site-packages/orbax/checkpoint/checkpoint_manager.py')
  ours = record(os.path.join(REPO, 'vgg_jax', 'train.py'))
  experiments = record(os.path.join(REPO, 'experiments', 'point.py'))
  verbosity(logging.INFO)
  assert not console.LibraryFilter().filter(library)
  assert console.LibraryFilter().filter(ours) and console.LibraryFilter().filter(experiments)
  # Warnings pass whoever logs them.
  assert console.LibraryFilter().filter(record(library.pathname, std_logging.WARNING))
  verbosity(logging.DEBUG)  # --v=1
  assert console.LibraryFilter().filter(library)


def unraisable_from(filename):
  """What Python hands sys.unraisablehook for an exception raised in `filename`
  where no one can catch it (a finaliser)."""
  namespace, caught = {}, []
  source = 'class Reader:\n  def __del__(self):\n    raise RuntimeError("read failed")\n'
  exec(compile(source, filename, 'exec'), namespace)  # pylint: disable=exec-used
  hook, sys.unraisablehook = sys.unraisablehook, caught.append
  try:
    namespace['Reader']()  # collected at once
  finally:
    sys.unraisablehook = hook
  return caught[0]


def test_orbax_unraisable_exceptions_print_only_at_verbosity_1(verbosity, capsys):
  # An abandoned orbax read printed a page of TensorStore spec at garbage collection.
  orbax = unraisable_from('/site-packages/orbax/checkpoint/_src/serialization/serialization.py')
  other = unraisable_from(os.path.join(REPO, 'vgg_jax', 'train.py'))
  verbosity(logging.INFO)
  console._unraisable_hook(orbax)
  assert capsys.readouterr().err == ''
  console._unraisable_hook(other)  # anyone else's are printed as Python prints them
  assert 'read failed' in capsys.readouterr().err
  verbosity(logging.DEBUG)  # --v=1
  console._unraisable_hook(orbax)
  assert 'read failed' in capsys.readouterr().err


INFO_LINE = re.compile(r'I\d{4} [\d:.]+\s+\d+ (\S+?):\d+\] ')


def tensorflow_sentinel(root):
  """A directory that, first on PYTHONPATH, makes `import tensorflow` leave a mark
  and fail (TensorFlow costs seconds of every start; the CPU commands need none)."""
  package = root / 'tensorflow'
  package.mkdir(parents=True)
  mark = root / 'tensorflow_was_imported'
  (package / '__init__.py').write_text(
      f'import traceback\nopen({str(mark)!r}, "w").write("".join(traceback.format_stack()))\n'
      'raise ImportError("tensorflow is kept out of this test")\n')
  return mark


@pytest.mark.slow
def test_a_run_prints_setup_progress_evaluations_checkpoints_and_result(tmp_path):
  cmd = cli_args(os.path.join(REPO, 'configs/default.py'), tmp_path / 'run', tmp_path / 'tfds',
                 **{'num_train_steps': 8, 'log_every_steps': 4, 'eval_every_steps': 8,
                    'checkpoint_every_steps': 4})
  mark = tensorflow_sentinel(tmp_path / 'sentinel')
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [str(tmp_path / 'sentinel'), REPO, os.environ.get('PYTHONPATH', '')])}
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Preparing the built-in dataset, training, TensorBoard events, checkpoints
  # and the evaluation, all without TensorFlow.
  assert not mark.exists(), mark.read_text()
  sources = [m.group(1) for m in map(INFO_LINE.match, proc.stderr.splitlines()) if m]
  own = {f for _, _, files in os.walk(os.path.join(REPO, 'vgg_jax')) for f in files}
  # Python INFO lines (file.py) all come from this project: no orbax, TFDS or clu
  # (warnings pass whoever logs them).
  assert {s for s in sources if s.endswith('.py')} <= own, sources
  text = proc.stderr
  for expected in (r'dataset vgg_shapes: 300 training images, 10 classes',
                   r'model VGG-A at width 0\.0625: [\d,]+ parameters',
                   'convolutions by ' + ('oneDNN' if onednn.available() else 'XLA'),
                   r'step 4/8  loss [\d.]+  top-1 error [\d.]+  \d+ img/s  ETA',
                   r'step 8  eval top-1 error [\d.]+  top-5 error [\d.]+  NLL [\d.]+  \(100 examples\)',
                   r'checkpoint at step 4 ', r'checkpoint at step 8 ',
                   r'final test accuracy [\d.]+% '):
    assert re.search(expected, text), (expected, text[-3000:])
  # The project's own lines; libraries' warnings, which vary with the CPU and
  # the versions installed, are not this project's to count.
  assert len([s for s in sources if s in own]) <= 30, text
  assert proc.stdout.strip().splitlines()[-1].startswith('final test accuracy: ')
