"""Entry point: `python -m rlaif_jax.main --config=configs/<file>.py[:args] --workdir=DIR [--config.x=..]`.

Parses flags and hands the config to the library; nothing below reads flags.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax import host

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where outputs, checkpoints and metrics go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from rlaif_jax import distributed, pipeline  # after flag parsing, so --help is fast
  if not flags.FLAGS['verbosity'].present:  # progress lines only; --verbosity=0 shows library logs
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  distributed.initialize(config.get('distributed', 'auto'))  # before anything touches a device
  pipeline.run(config, _WORKDIR.value)


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


def run():
  try:
    app.run(main)
  except USER_ERRORS as e:
    if os.environ.get('RLAIF_JAX_TRACEBACK'):
      raise
    print(one_line(e) + '  (set RLAIF_JAX_TRACEBACK=1 for the traceback)', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  host.reexec_with_allocator_tunables()  # before jax allocates anything; see host.py
  run()
