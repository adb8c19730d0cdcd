"""Conventions shared by the command lines (`python -m vgg_jax.train` and the others).

A mistake on the command line, in the config or in the data ends the program
with one line on stderr, `PROG: error: WHAT: FIX`, and exit status 1, before
anything on disk changes: absl's parser would print two lines, or the whole
help, and a config file that fails to load a traceback. Config files are
Python modules, executed as they are loaded, so they are trusted code: load
only your own.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Callable, Optional, Sequence

from absl import flags


def one_line(error: BaseException) -> str:
  """An exception's message with its line breaks and runs of spaces squeezed."""
  return ' '.join(str(error).split()) or type(error).__name__


# A full disk, in the words of the OS or of tensorstore (orbax's checkpoints):
# whatever was writing, the fix is the same.
_NO_SPACE = 'No space left on device'


def error_line(prog: str, error: BaseException) -> str:
  line = f'{prog}: error: {one_line(error)}'
  if _NO_SPACE in line:
    line += ('; free space there (or keep fewer checkpoints, --config.keep_checkpoints) '
             'and rerun the same command: it goes on from the newest complete checkpoint')
  return line


def keep_tensorflow_off_gpus() -> None:
  """TensorFlow serves tfds only: where JAX has GPUs, hide them from it so that it
  reserves no memory on them. Elsewhere it is not imported at all (seconds of
  every start)."""
  if any(importlib.util.find_spec(p) for p in ('jax_cuda12_plugin', 'jax_cuda13_plugin')):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')


def define_process_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """--coordinator_address, --num_processes and --process_id, as holders: the
  same multi-process flags in every command that runs on many hosts. Called by
  the commands' entry points only, so that importing a module defines no flags."""
  return types.SimpleNamespace(
      coordinator_address=flags.DEFINE_string(
          'coordinator_address', None, 'host:port of process 0, for multi-process runs.',
          flag_values=flag_values),
      num_processes=flags.DEFINE_integer('num_processes', None, 'Processes in the job.',
                                         flag_values=flag_values),
      process_id=flags.DEFINE_integer('process_id', None, 'This process\'s index.',
                                      flag_values=flag_values))


def _config_argument(argv: Sequence[str]) -> Optional[str]:
  for arg in argv:
    if arg.startswith('--config='):
      return arg[len('--config='):]
  return None


def _config_argument_error(message: str) -> Optional[str]:
  """The exception that a config file's get_config(arg) raised, as 'Type: text'.

  ml_collections re-raises get_config's TypeError and ValueError (a bad config
  string, e.g. `configs/cifar10.py:D,S=20`) with the whole traceback as the
  message, which absl then wraps in a flag error: its last line is the exception.
  """
  if 'Error whilst parsing config file' not in message:
    return None
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[-1]


def flags_parser(prog: str, config_flag=None,
                 usage: Optional[str] = None) -> Callable[[list[str]], list[str]]:
  """An `app.run(flags_parser=...)` that reports every flag error in one line.

  With `config_flag` (from `config_flags.DEFINE_config_file`), the config is
  loaded here, so that a missing file, a syntax error or an unknown override
  is a flag error like the others. `usage` ('DIR', say) is the one positional
  argument a command takes, if any.
  """

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
      if config_flag is not None and config_flag.value is not None:
        # A config that failed to load is a stand-in raising on first use.
        config_flag.value.keys  # pylint: disable=pointless-statement
    except flags.Error as e:
      refused = _config_argument_error(str(e))
      if refused:
        sys.exit(f'{prog}: error: --config={_config_argument(argv)}: {refused}; fix the '
                 "config string after ':' (the config file's docstring lists what it takes)")
      sys.exit(f'{prog}: error: {one_line(e).rstrip(".")}; see --helpfull for the flags')
    except Exception as e:  # pylint: disable=broad-except
      # A config file is Python: anything can go wrong in it or its overrides.
      chain = [e]
      while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
      cause, config_file = chain[-1], _config_argument(argv)
      key_error = next((x for x in chain if isinstance(x, KeyError) and x.args), None)
      if key_error is not None:
        # ml_collections: "'name'\nDid you mean "other" instead of "name"?"
        name, _, suggestion = str(key_error.args[0]).partition('\n')
        override = next((a for a in argv if a.startswith('--config.') and
                         name.strip("'") in a), 'a --config. override')
        hint = f' ({suggestion.strip().replace("Did", "did")})' if suggestion.strip() else ''
        sys.exit(f'{prog}: error: {override}: no config field {name}{hint}; the fields '
                 f'are those of {config_file}')
      if config_file and not os.path.isfile(config_file.split(':')[0]):
        sys.exit(f'{prog}: error: --config={config_file}: no such file; pass a config '
                 'file such as configs/default.py')
      sys.exit(f'{prog}: error: cannot load --config={config_file}: '
               f'{type(cause).__name__}: {one_line(cause)}; fix the file (it needs a '
               'get_config() returning the config, like configs/default.py)')
    if usage is not None and len(rest) != 2:
      sys.exit(f'{prog}: error: {"one " + usage if len(rest) < 2 else "only one " + usage} '
               f'expected: python -m {prog} {usage} [--flags]')
    if usage is None and len(rest) > 1:
      sys.exit(f'{prog}: error: unexpected arguments {" ".join(rest[1:])}: flags take the '
               'form --name=value; see --helpfull')
    return rest

  return parse
