"""Eight CPU devices for every test, so multi-device code runs without a GPU,
and programs compiled without LLVM's optimisations (why: below).

The flags must be set before jax is imported anywhere in the test process.

One persistent compilation cache for the whole session, in-process tests and
the commands they start alike (`vgg_jax.train` and sweep points keep JAX's
cache when JAX_COMPILATION_CACHE_DIR is set): the same tiny steps compile once,
not once per test module and subprocess. pytest-xdist's workers share it.

Only `vgg_jax` is installed; the tests also import `configs` and
`experiments` from the checkout, whose root is put on sys.path here so that
a bare `pytest` works as well as `python -m pytest` (which adds the cwd).
"""

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The suite's programs compile without LLVM's optimisations (XLA's
# backend level 0; the default is 3), in this process and the commands it
# starts: most of a tiny program's compile is LLVM's, and the suite compiles
# hundreds. What a test asserts means the same at either level: XLA keeps
# IEEE semantics at both, the only difference being where mul + add fuse into
# one FMA (a last-bit rounding: a 30-step run's weights differ after it;
# test_cpu_ops.py's test_the_suites_backend_level_changes_only_where_multiply_
# adds_round checks it), and the tests compare like with like (runs of the
# suite's own compiles, or a reference within a tolerance). Measured in alternating pairs (2026-12-06,
# 2-core AMD EPYC with AVX-512): the whole suite 6:02 and 6:41 of CPU time
# against 7:20 and 7:16 (wall 3:35 and 3:57 against 4:15 and 4:11),
# `-m "not slow"` 1:44-1:49 against 2:12-2:17 (wall 1:00-1:03 against
# 1:14-1:18). `XLA_FLAGS=--xla_backend_optimization_level=3 python -m pytest
# -q tests` runs the suite as users' programs compile.
_TEST_XLA_FLAGS = {'--xla_force_host_platform_device_count': 8,
                   '--xla_backend_optimization_level': 0}
# Once: pytest-xdist's workers inherit the controller's environment.
for _flag, _value in _TEST_XLA_FLAGS.items():
  if _flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix='vgg_jax_tests_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  # The keys of programs with oneDNN convolutions without their partitioners'
  # addresses (`parallel.key_cache_by_source` says why), in this process too:
  # safe in a cache that lives as long as the session's source.
  os.environ['JAX_REMOVE_CUSTOM_PARTITIONING_PTR_FROM_CACHE_KEY'] = 'true'


def pytest_unconfigure(config):
  del config
  # Only the process that made the cache removes it: xdist's workers end first.
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Fixtures that train a run end to end (in a subprocess or in this process) or
# run a whole sweep: every test that uses one is slow.
SLOW_FIXTURES = {'reference', 'tiny_sweep', 'uninterrupted', 'run'}


# The files that take longest, longest first (measured with --durations=0):
# pytest-xdist hands files to its workers in collection order (with
# --no-loadscope-reorder), and starting the long ones first keeps one worker
# from finishing a long file alone at the end.
LONGEST_FIRST = ('test_experiments.py', 'test_reliability.py', 'test_convert.py',
                 'test_cpu_ops.py', 'test_benchmark.py', 'test_model.py', 'test_evaluate.py',
                 'test_parallel.py', 'test_data.py', 'test_train.py', 'test_console.py',
                 'test_structure.py')


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())):
      item.add_marker(pytest.mark.slow)
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(params=['compiled', 'pillow'])
def resampler(request, monkeypatch):
  """Training crops resampled by the compiled port of Pillow's resize, then by
  Pillow itself (the fallback where no compiler is at hand): the same pixels."""
  from vgg_jax.data import resample  # pylint: disable=import-outside-toplevel
  if request.param == 'pillow':
    monkeypatch.setenv(resample.SWITCH_ENV, '0')
  resample.unavailable_reason.cache_clear()
  if request.param == 'compiled' and not resample.available():
    pytest.skip(f'compiled resampling unavailable: {resample.unavailable_reason()}')
  yield request.param
  monkeypatch.undo()
  resample.unavailable_reason.cache_clear()
