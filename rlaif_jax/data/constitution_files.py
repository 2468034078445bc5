"""Constitution files: one principle per line; blank lines and `#` comments are skipped."""

from __future__ import annotations

from rlaif_jax.infra import storage
from rlaif_jax.infra.errors import UserError

def read_constitution(path: str) -> list[str]:
  """Principles from a text file: one per line; blank lines and `#` comments are skipped."""
  lines = storage.path(path).read_text(encoding='utf-8').splitlines()
  principles = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith('#')]
  if not principles:
    raise UserError(f'Constitution {path} has no principles (one per line).')
  return principles
