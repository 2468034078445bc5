"""How the entry points report a bad config or input: one line naming the problem, exit status 2."""

import os
import sys
from typing import Callable

USER_ERRORS = (ValueError, KeyError, AttributeError, FileNotFoundError, NotImplementedError)


def one_line(e: BaseException) -> str:
  """A config/input error as one readable line (ml_collections wraps its messages in reprs)."""
  msg = str(e)
  for _ in range(2):
    if len(msg) > 1 and msg[0] == msg[-1] and msg[0] in '\'"':
      msg = msg[1:-1]
    msg = msg.replace('\\n', ' ').replace('\\\'', "'").replace('\n', ' ')
  if isinstance(e, (AttributeError, KeyError)) and 'config' not in msg.lower():
    msg = f'unknown config key {msg}'
  return f'rlaif_jax: error: {type(e).__name__}: {msg}'


def run_reporting_user_errors(run: Callable[[], None]) -> None:
  """Run an entry point; a config/input error becomes one line on stderr and exit status 2."""
  try:
    run()
  except USER_ERRORS as e:
    if os.environ.get('RLAIF_JAX_TRACEBACK'):
      raise
    print(one_line(e) + '  (set RLAIF_JAX_TRACEBACK=1 for the traceback)', file=sys.stderr)
    sys.exit(2)
