"""One-line user errors for every command line of the project.

A user error (a bad flag, config field or value, a missing or unreadable file) ends the program
with ONE line on stderr, `error: <message>`, and exit status 2 (`EXIT_USER_ERROR`, as argparse's
usage errors); the message names the bad value and what is allowed. Programming errors (TypeError,
AssertionError, AttributeError, KeyError, ...) keep their traceback and absl's exit status 1.

The full traceback of a user error is printed too (before its `error:` line) with
`MNV3_TRACEBACK=1` in the environment (every CLI), or absl's `-v 1` / `--verbosity=1` (absl CLIs).

  absl CLIs:     cli_errors.run(main)            # instead of app.run(main)
  argparse CLIs: parser = cli_errors.ArgumentParser(...)  # usage errors: one line, exit 2
                 sys.exit(cli_errors.one_line_errors(main)())     # errors of main: one line

For absl CLIs `run` also parses the flags: bad flags, a config file (ml_collections config_flags)
that cannot be loaded, and a `--config.<field>` that names no field of the config are reported in
one line, at parse time (before `main` runs).
"""
import argparse
import difflib
import functools
import os
import re
import sys
import traceback
from typing import Callable, Optional, Sequence

import ml_collections
from absl import app, flags
from ml_collections.config_flags import config_flags  # its ConfigFileFlagParser class

EXIT_USER_ERROR = 2
TRACEBACK_ENV = 'MNV3_TRACEBACK'
# OSError covers FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, and
# orbax/TensorFlow I/O failures; KeyError is absent on purpose (a missing dict key is a bug).
USER_ERRORS = (ValueError, OSError, app.UsageError, flags.Error)


class UsageError(ValueError):
  """A bad command line of an argparse CLI (reported by `ArgumentParser.error`)."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose usage errors are one `error:` line (not the usage text + error).

  `error` exits with `EXIT_USER_ERROR` (2, as argparse's), so `parser.error(...)` stays usable.
  """

  def error(self, message):
    sys.exit(report(UsageError(f'{self.prog}: {message.rstrip(".")}; see --help.')))


def one_line(error: BaseException) -> str:
  """`error`'s message collapsed onto one line (its type name if it has none)."""
  if isinstance(error, KeyError) and error.args:
    text = str(error.args[0])
  else:
    text = str(error)
  return ' '.join(text.split()) or type(error).__name__


def _argv_verbosity(argv: Sequence[str]) -> int:
  """The absl verbosity asked for on `argv` (-v N, --v=N, --verbosity N, ...); 0 if none."""
  for i, arg in enumerate(argv):
    name, eq, value = arg.lstrip('-').partition('=')
    if arg.startswith('-') and name in ('v', 'verbosity'):
      value = value if eq else (argv[i + 1] if i + 1 < len(argv) else '')
      if re.fullmatch(r'-?\d+', value):
        return int(value)
  return 0


def show_traceback(argv: Optional[Sequence[str]] = None) -> bool:
  """Whether a user error prints its traceback: $MNV3_TRACEBACK=1 or absl verbosity >= 1."""
  if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
    return True
  return _argv_verbosity(sys.argv if argv is None else argv) >= 1


def report(error: BaseException, message: Optional[str] = None,
           argv: Optional[Sequence[str]] = None) -> int:
  """Prints `error` as one `error:` line (its traceback first if asked for); returns the status."""
  if show_traceback(argv):
    traceback.print_exception(error)
  print(f'error: {message or one_line(error)}', file=sys.stderr, flush=True)
  return EXIT_USER_ERROR


def one_line_errors(main: Callable) -> Callable:
  """Wraps `main`: a user error is reported in one line and returns `EXIT_USER_ERROR`."""
  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except USER_ERRORS as e:
      return report(e)
  return wrapped


def _flag_argument(argv: Sequence[str], name: str) -> Optional[str]:
  """The last value given to --name (as --name=V, --name V, -name=V) on `argv`."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith((f'--{name}=', f'-{name}=')):
      value = arg.split('=', 1)[1]
  return value


def _config_flags() -> list:
  """The names of the ml_collections config-file flags defined in absl's FLAGS."""
  return sorted(name for name in flags.FLAGS
                if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser))


def _unknown_field(config, name: str, override: str, arg: str) -> Optional[str]:
  """Why `--name.override` names no field of `config`, or None if it names one."""
  node, parts = config, override.split('.')
  for i, part in enumerate(parts):
    if isinstance(node, ml_collections.ConfigDict) and part in node:
      node = node[part]
      continue
    parent = '.'.join([name, *parts[:i]])
    if not isinstance(node, ml_collections.ConfigDict):
      return f'{arg}: {parent} is a value, not a group of fields.'
    allowed = sorted(node.keys())
    close = difflib.get_close_matches(part, allowed, n=1)
    hint = f' (did you mean {name}.{".".join([*parts[:i], close[0]])}?)' if close else ''
    return (f'{arg}: no config field {".".join(parts[:i + 1])!r}{hint}; allowed fields of '
            f'{parent}: {", ".join(allowed)}.')
  return None


def _config_error(argv: Sequence[str]) -> Optional[str]:
  """A one-line account of a config-file flag's failure to load or override, or None."""
  for name in _config_flags():
    source = _flag_argument(argv, name)
    if source is None:
      continue
    path = source.split(':', 1)[0]
    if not os.path.isfile(path):
      what = 'is a directory' if os.path.isdir(path) else 'does not exist'
      return (f'--{name}={source}: the config file {path!r} {what}; allowed: a Python file with '
              'get_config(), e.g. configs/small.py.')
    try:
      config = config_flags.ConfigFileFlagParser(name).parse(source)
    except (ValueError, TypeError, OSError) as e:
      last = [line for line in str(e).splitlines() if line.strip()][-1:]
      return f'--{name}={source}: {" ".join(last) or one_line(e)}'
    for arg in argv[1:]:
      match = re.match(rf'--?{re.escape(name)}\.([^=]+)', arg)
      why = match and _unknown_field(config, name, match.group(1), arg)
      if why:
        return why
  return None


def parse_flags(argv: Sequence[str]) -> list:
  """absl's flag parsing with one-line errors; loads the config files now (not at first use)."""
  try:
    rest = flags.FLAGS(argv)
    for name in _config_flags():
      value = flags.FLAGS[name].value
      if value is not None and not isinstance(value, ml_collections.ConfigDict):
        value.keys()   # config_flags defers a failed load to the first access; raise it now
    return rest
  # config_flags reports an unknown --config.<field> as AttributeError or KeyError.
  except (*USER_ERRORS, AttributeError, KeyError) as e:
    sys.exit(report(e, _config_error(argv) or one_line(e), argv))


def run(main: Callable, argv: Optional[Sequence[str]] = None) -> None:
  """`app.run(main)` with one-line user errors, at flag parsing and in `main`; exits."""
  app.run(one_line_errors(main), argv=argv, flags_parser=parse_flags)
