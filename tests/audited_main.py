"""`python -m rlaif_jax.main` with every file this process opens for writing logged, one path a line,
to $WRITES_LOG (a Python audit hook on `open`). tests/test_multiprocess.py uses it to check that no
file of the workdir is written by two processes. (Array data that Orbax writes through TensorStore,
one file per process, does not pass through Python's `open` and is not logged.)"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install(log_path: str) -> None:
  log = open(log_path, 'a', buffering=1)

  def hook(event, args):
    if event != 'open' or not isinstance(args[0], (str, bytes, os.PathLike)):
      return
    path, mode, flags = args
    writes = any(c in mode for c in 'wax+') if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
    if writes:
      log.write(os.path.abspath(os.fsdecode(path)) + '\n')

  sys.addaudithook(hook)


if __name__ == '__main__':
  install(os.environ['WRITES_LOG'])
  from rlaif_jax import main
  main.cli()
