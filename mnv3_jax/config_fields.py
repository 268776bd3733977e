"""Checks of config fields by name: predicates and `check_fields`, shared by the trainer's preflight
and the tasks' own config checks (mnv3_jax/tasks/*), so that every bad value is reported the same
way: `Invalid <field> <value>; allowed: <what>.`
"""
import math
import numbers
import re
from typing import Callable, Iterable, Tuple

import ml_collections

Field = Tuple[str, str, Callable]   # (dotted config path, what is allowed, predicate)


def integer(ok: Callable = lambda v: True) -> Callable:
  """A predicate: an int (not a bool) for which `ok` holds."""
  return lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and ok(v)


def real(ok: Callable = lambda v: True) -> Callable:
  """A predicate: a finite number (not a bool) for which `ok` holds."""
  return lambda v: (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                    and ok(v))


def pair(ok: Callable, item: Callable = real()) -> Callable:
  """A predicate: a 2-sequence whose items pass `item` and for which `ok(a, b)` holds."""
  return lambda v: (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(item, v))
                    and ok(*v))


def boolean(v) -> bool:
  return isinstance(v, bool)


def name(v) -> bool:
  """A non-empty string."""
  return isinstance(v, str) and bool(v)


def check_fields(config: ml_collections.ConfigDict, fields: Iterable[Field]) -> None:
  """Checks each field of `fields` in `config`: present, of its type and in its range.

  Raises ValueError 'Invalid <field> <value>; allowed: <what>.' for the first bad one, or names a
  missing field.
  """
  for field, allowed, ok in fields:
    node = config
    for part in field.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f'The config has no field {field}; allowed: a config built on '
                         'configs/default.py base_config() (configs/segmentation.py, '
                         "configs/detection.py for those tasks), which has every field.")
      node = node[part]
    if not ok(node):
      raise ValueError(f'Invalid {field} {node!r}; allowed: {allowed}.')


def construct(cls: Callable, options: dict, prefix: str):
  """cls(**options), its ValueErrors naming an option as the config field <prefix>.<option>
  ('Invalid width nan' -> 'Invalid model.width nan')."""
  try:
    return cls(**options)
  except ValueError as e:
    message = re.sub(rf'^(Invalid|Unknown) ({"|".join(map(re.escape, options))}) ',
                     rf'\1 {prefix}.\2 ', str(e))
    raise ValueError(message if message != str(e) else f'{prefix}: {e}') from e
