"""Constitution files: one principle per line; blank lines and `#` comments are skipped."""

from __future__ import annotations

def read_constitution(path: str) -> list[str]:
  """Principles from a text file: one per line; blank lines and `#` comments are skipped."""
  with open(path, encoding='utf-8') as f:
    principles = [line.strip() for line in f if line.strip() and not line.lstrip().startswith('#')]
  if not principles:
    raise ValueError(f'Constitution {path} has no principles (one per line).')
  return principles
