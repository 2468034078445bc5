"""User errors: problems with the config or the input that the user fixes, as opposed to bugs.

Code that checks a config value, a file or a data row raises `UserError` (or `MissingInput` for
something that is not there) with one sentence naming the key or file and the fix. The entry points
report exactly these (and flag-parsing errors: an unknown config key, a bad config argument) as one
line on stderr with exit status 2; anything else is a bug in our code and keeps its traceback.
"""

import os
import sys
from typing import Callable


class UserError(ValueError):
  """A bad config value or input: the message names the key or file and the fix."""


class MissingInput(UserError, FileNotFoundError):
  """A file, folder, dataset or package the config names is not there."""


def _unquote(msg: str) -> str:
  """ml_collections wraps its messages in reprs, sometimes twice."""
  for _ in range(2):
    if len(msg) > 1 and msg[0] == msg[-1] and msg[0] in '\'"':
      msg = msg[1:-1]
    msg = msg.replace('\\n', ' ').replace('\\\'', "'")
  return msg


def one_line(e: BaseException) -> str:
  """A user error as one readable line."""
  msg = ' '.join(_unquote(str(e)).split())
  return f'rlaif_jax: error: {msg}'


def parse_flags(parse: Callable[[list[str]], list[str]]) -> Callable[[list[str]], list[str]]:
  """A flag parser (absl's `flags.FLAGS`) whose every error is a bad command line, raised as a
  UserError: an unknown config key, a config file's bad argument, a value of the wrong type. A
  config file's traceback is cut to its last line (the error itself)."""

  def parser(argv: list[str]) -> list[str]:
    try:
      return parse(argv)
    except Exception as e:  # noqa: BLE001 -- all of them mean the command line is wrong
      msg = _unquote(str(e))
      if 'Traceback' in msg:
        msg = f'{msg.splitlines()[0]} {msg.strip().splitlines()[-1].strip()}'
      if isinstance(e, (AttributeError, KeyError)) and 'config' not in msg.lower():
        msg = f'unknown config key {msg}'
      raise UserError(msg) from e

  return parser


def run_reporting_user_errors(run: Callable[[], None]) -> None:
  """Run an entry point; a UserError becomes one line on stderr and exit status 2."""
  try:
    run()
  except UserError as e:
    if os.environ.get('RLAIF_JAX_TRACEBACK'):
      raise
    print(one_line(e) + '  (set RLAIF_JAX_TRACEBACK=1 for the traceback)', file=sys.stderr)
    sys.exit(2)
