"""Entry point: `python -m rlaif_jax.main --config=configs/<file>.py[:args] --workdir=DIR [--config.x=..]`.

Parses flags and hands the config to the library; nothing below reads flags.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rlaif_jax.infra import errors, host

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where outputs, checkpoints and metrics go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  from rlaif_jax.pipeline import preflight  # needs no jax: a misspelt reward fails in a moment
  preflight.check(config)
  from rlaif_jax.infra import distributed  # after flag parsing, so --help is fast
  from rlaif_jax.pipeline import compare, runner
  if not flags.FLAGS['verbosity'].present:  # progress lines only; --verbosity=0 shows library logs
    logging.set_verbosity(logging.WARNING)
  distributed.initialize(config.get('distributed', 'auto'))  # before anything touches a device
  if not distributed.is_writer():  # one process prints progress; errors still reach stderr
    sys.stdout = open(os.devnull, 'w')
  if config.get('compare'):  # the same run once per label source, then the comparison table
    compare.run(config, _WORKDIR.value, runner.run_stages)
  else:
    runner.run_stages(config, _WORKDIR.value)


def cli():
  """The command line: flags parsed; a config or input error is one line (exit status 2), a bug
  keeps its traceback."""
  parser = errors.parse_flags(flags.FLAGS)
  errors.run_reporting_user_errors(lambda: app.run(main, flags_parser=parser))


if __name__ == '__main__':
  host.reexec_with_allocator_tunables()  # before jax allocates anything; see host.py
  cli()
