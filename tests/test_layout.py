"""The package's layout: sub-packages that import each other without cycles, small modules."""
import ast
import collections
from pathlib import Path

import mnv3_jax

ROOT = Path(mnv3_jax.__file__).parent
MAX_LINES = 320   # "small files, under ~300 lines"


def _modules():
  return sorted(p for p in ROOT.rglob('*.py') if '__pycache__' not in p.parts)


def _unit(module: str) -> str:
  """mnv3_jax.model.blocks -> mnv3_jax.model; top-level modules stand for themselves."""
  return '.'.join(module.split('.')[:2])


def _imports(path: Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('mnv3_jax'):
      yield from (f'{node.module}.{a.name}' for a in node.names)
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('mnv3_jax'))


def test_sub_packages_import_each_other_without_cycles():
  graph = collections.defaultdict(set)
  for path in _modules():
    unit = _unit('.'.join(('mnv3_jax', *path.relative_to(ROOT).with_suffix('').parts)))
    graph[unit] |= {_unit(m) for m in _imports(path)} - {unit, 'mnv3_jax'}
  done, active = set(), []

  def visit(unit):
    if unit in active:
      raise AssertionError(f'import cycle: {" -> ".join(active[active.index(unit):] + [unit])}')
    if unit in done:
      return
    active.append(unit)
    for dep in sorted(graph[unit]):
      visit(dep)
    active.pop()
    done.add(unit)

  for unit in sorted(graph):
    visit(unit)
  assert 'mnv3_jax.ops' in graph and 'mnv3_jax.model' in graph['mnv3_jax.train']


def test_modules_are_small():
  sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
  assert not {k: v for k, v in sizes.items() if v > MAX_LINES}
