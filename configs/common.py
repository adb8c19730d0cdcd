"""What the experiment configs share: the `get_config(arg)` string parser.

Configs are code and take one string, as in big_vision:
`--config=configs/imagenet.py:D,S=384` calls `get_config('D,S=384')`. The
string is a comma-separated list of

  VALUE      the first positional field (the VGG variant: A, A-LRN, B, C, D, E);
  KEY=VALUE  a named field, converted to the type of its default;
  KEY        a boolean field switched on (`jitter`, `runlocal`).

Unknown keys fail with the list of known ones, so a typo never silently
trains the wrong model.
"""

from __future__ import annotations

from typing import Any

import ml_collections


def _convert(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    lowered = text.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
      return True
    if lowered in ('0', 'false', 'no', 'off'):
      return False
    raise ValueError(f'config argument {key}={text!r} must be true or false')
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f'config argument {key}={text!r} must be of type '
                     f'{type(default).__name__}') from None


def parse_arg(arg: str | None, *, positional: str | None = None,
              **defaults) -> ml_collections.ConfigDict:
  """Parses 'D,S=384,jitter' into the fields of `defaults`, typed like them.

  Args:
    arg: the string after the config file's ':' (None or '' keeps defaults).
    positional: the field a bare value that is not a boolean field sets (None:
      bare values are an error).
    **defaults: every accepted field with its default value; booleans may be
      given as bare names.
  """
  fields = dict(defaults)
  seen_positional = False
  for token in (t.strip() for t in (arg or '').split(',')):
    if not token:
      continue
    key, sep, value = token.partition('=')
    key = key.strip()
    if not sep:
      if isinstance(defaults.get(key), bool):
        fields[key] = True
        continue
      if positional is None or seen_positional:
        raise ValueError(f'config argument {token!r} is not KEY=VALUE or a known '
                         f'switch; known fields: {", ".join(defaults)}')
      key, value, seen_positional = positional, token, True
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}: known fields are '
                       f'{", ".join(defaults)}')
    fields[key] = _convert(key, value, defaults[key])
  return ml_collections.ConfigDict(fields)


def split_arg(arg: str | None, **sweep_fields) -> tuple[ml_collections.ConfigDict, str]:
  """Splits a sweep file's argument: (its own fields, the rest for the base config).

  `split_arg('runlocal,seeds=1', seeds=3)` -> ({seeds: 1}, 'runlocal').
  """
  own, rest = [], []
  for token in (t.strip() for t in (arg or '').split(',')):
    if token:
      (own if token.partition('=')[0].strip() in sweep_fields else rest).append(token)
  return parse_arg(','.join(own), **sweep_fields), ','.join(rest)
