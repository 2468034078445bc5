"""Human-labeled preference pairs (for measuring judges): JSONL rows with `prompt`, `chosen` and
`rejected`, or HH-RLHF rows whose `chosen` / `rejected` are whole dialogues ending in the two responses;
optionally gzipped."""

from __future__ import annotations

import gzip
import io
import json
from typing import NamedTuple

from rlaif_jax.infra import storage
from rlaif_jax.infra.errors import UserError


class HumanPair(NamedTuple):
  context: str
  chosen: str
  rejected: str


def split_dialogue(dialogue: str, marker: str = '\n\nAssistant:') -> tuple[str, str]:
  """HH-RLHF style '...Human: ... Assistant: <response>' -> (context, final response)."""
  i = dialogue.rfind(marker)
  if i < 0:
    raise UserError(f'No {marker.strip()!r} turn in the dialogue: {dialogue[:80]!r}...')
  return dialogue[:i].strip(), dialogue[i + len(marker):].strip()


def read_human_pairs(path: str, limit: int | None = None) -> list[HumanPair]:
  """Human-labeled pairs from JSONL (optionally .gz): rows with `prompt`, `chosen`, `rejected`, or
  HH-RLHF rows whose `chosen` / `rejected` are whole dialogues ending in the two responses."""
  raw = storage.path(path).open('rb')  # a local path or a URL
  pairs = []
  with (gzip.open(raw, 'rt', encoding='utf-8') if str(path).endswith('.gz')
        else io.TextIOWrapper(raw, encoding='utf-8')) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if 'prompt' in row:
          pairs.append(HumanPair(row['prompt'], row['chosen'], row['rejected']))
        else:
          ctx, chosen = split_dialogue(row['chosen'])
          _, rejected = split_dialogue(row['rejected'])
          pairs.append(HumanPair(ctx, chosen, rejected))
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f'{path}:{n}: malformed preference row ({e}); each line needs "chosen" and '
                        f'"rejected" (and "prompt", unless they are whole HH-RLHF dialogues).') from None
      if limit and len(pairs) >= limit:
        break
  if not pairs:
    raise UserError(f'{path} has no preference rows.')
  return pairs
