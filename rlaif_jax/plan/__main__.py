"""The planner's command line:

  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama8b --topology=v5e:8x8 [--mfu=0.4]

Exit status 1 when a step does not fit, 2 for a bad flag or config. The topology is a compile target,
never a device: the run compiles on the CPU, with libtpu told there is no TPU metadata server to ask
and no chips to lock (set here, before jax is imported, for this process only).
"""

import os
import sys

os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rlaif_jax.infra import errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:args]).',
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU topology, e.g. v5e:8x8, v5p:2x4x4, v6e:4x4.')
_MFU = flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation assumed for the time estimates.')
flags.mark_flags_as_required(['config', 'topology'])


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  from rlaif_jax.plan import stages, table
  config = _CONFIG.value
  plan = stages.make_plan(config, _TOPOLOGY.value, _MFU.value)
  print(table.format_plan(plan, config), flush=True)
  sys.exit(0 if plan.fits else 1)


if __name__ == '__main__':
  parser = errors.parse_flags(flags.FLAGS)
  errors.run_reporting_user_errors(lambda: app.run(main, flags_parser=parser))
