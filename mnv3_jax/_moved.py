"""Old `python -m mnv3_jax.<name>` command lines keep working after the move into sub-packages."""
import runpy
import sys


def forward(module_name: str, old: str, new: str, script: str) -> None:
  """Run as a program: note where `old` went and run `new` as __main__; imported: ImportError."""
  where = f'{old} moved to {new} (python -m {new}, or the console script {script})'
  if module_name != '__main__':
    raise ImportError(where)
  print(f'note: {where}', file=sys.stderr)
  runpy.run_module(new, run_name='__main__', alter_sys=True)
