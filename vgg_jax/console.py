"""What a command prints by default: this project's lines, the libraries' only when asked.

Orbax logs a dozen INFO lines per checkpoint and TFDS one per dataset it
opens: half of a run's console was other people's internals. Their Python
records all reach absl's handler, so a command calls `quiet_libraries()` once
it has parsed its flags:

* INFO records from outside this project are dropped while absl's verbosity is
  below 1; `--v=1` (or `--verbosity=1`) brings them back. Warnings and errors
  always pass, whoever logs them.
* TFDS's progress bars (shown while a dataset is prepared) are off at the
  default verbosity too.
* Exceptions Python cannot raise that come from orbax (its abandoned reads of
  a damaged checkpoint, which the run reports in one line of its own) are not
  printed at the default verbosity: each was a page of TensorStore spec, at
  whatever moment the garbage collector ran, often after the run's last line.

TensorFlow's C++ core prints its own notices (CPU-dependent, one or two lines
when it is imported); TF_CPP_MIN_LOG_LEVEL=1 silences them.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback

from absl import logging

# Records logged by code under these directories are this project's own.
_OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) + os.sep
    for name in ('vgg_jax', 'experiments'))


def is_own(record: std_logging.LogRecord) -> bool:
  return os.path.abspath(record.pathname).startswith(_OWN_DIRS)


class LibraryFilter(std_logging.Filter):
  """Passes this project's records, every warning, and everything at --v >= 1."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING or is_own(record)
            or logging.get_verbosity() >= 1)


_FILTER = LibraryFilter()


def _from_orbax(unraisable) -> bool:
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return any(f'{os.sep}orbax{os.sep}' in frame.filename for frame in frames)


def _unraisable_hook(unraisable) -> None:
  if logging.get_verbosity() >= 1 or not _from_orbax(unraisable):
    sys.__unraisablehook__(unraisable)


def quiet_libraries() -> None:
  """Installs the filter on absl's handler and the hook for orbax's unraisable
  exceptions (idempotent)."""
  handler = logging.get_absl_handler()
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
  sys.unraisablehook = _unraisable_hook
  if logging.get_verbosity() < 1:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
