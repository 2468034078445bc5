"""Entry point: `python -m rlaif_jax.main --config=configs/<file>.py[:args] --workdir=DIR [--config.x=..]`.

Parses flags and hands the config to the library; nothing below reads flags.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:args]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where outputs, checkpoints and metrics go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from rlaif_jax import pipeline  # after flag parsing, so --help is fast
  pipeline.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
