"""Environment variables set for the duration of a block."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional


@contextlib.contextmanager
def set_to(name: str, value: Optional[str]) -> Iterator[None]:
  """`os.environ[name]` is `value` inside (None: unset), as it was after: the
  processes started inside inherit it."""
  before = os.environ.get(name)
  _set(name, value)
  try:
    yield
  finally:
    _set(name, before)


def _set(name: str, value: Optional[str]) -> None:
  if value is None:
    os.environ.pop(name, None)
  else:
    os.environ[name] = value
