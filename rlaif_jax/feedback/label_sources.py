"""Where a preference label comes from: the AI judge, a human (a JSONL file of human-labeled pairs,
or a programmatic check standing in for annotators), or both (hybrid: the pairs the judge is least
sure of go to the human source, up to a budget), and a review queue in which a person corrects the
AI labels most in doubt. Pure functions over preference rows (`labeling.ROW_FIELDS` plus `source`);
the label and reward_model stages do the reading and writing.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from rlaif_jax.feedback import checks as checks_lib
from rlaif_jax.infra.errors import UserError

SOURCES = ('judge', 'human', 'hybrid')
QUEUE_FIELDS = ('index', 'prompt', 'response_a', 'response_b', 'p_a_better', 'consistent',
                'preference')


class HumanPair(NamedTuple):
  prompt: str
  response_a: str
  response_b: str
  preference: float  # P(A better): 1 A, 0 B, 0.5 a tie


def preference_value(value: Any, where: str) -> float:
  """A person's preference as P(A better): 'a' / 'b' / 'tie' (any case), or a number in [0, 1]."""
  if isinstance(value, str):
    v = {'a': 1.0, 'b': 0.0, 'tie': 0.5}.get(value.strip().lower())
    if v is not None:
      return v
  elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
    return float(value)
  raise UserError(f'{where}: preference {value!r} is not "a", "b", "tie" or a number in [0, 1] '
                  f'(P(response_a is better)); fix that row.')


def parse_human_pairs(lines: Sequence[str], name: str) -> list[HumanPair]:
  """Rows {prompt, response_a, response_b, preference} of a JSONL file (`name` for errors)."""
  pairs = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f'{name}:{n}'
    try:
      row = json.loads(line)
      pairs.append(HumanPair(str(row['prompt']), str(row['response_a']), str(row['response_b']),
                             preference_value(row['preference'], where)))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise UserError(f'{where}: malformed human label ({type(e).__name__}: {e}); each line needs '
                      f'"prompt", "response_a", "response_b" and "preference" ("a", "b", "tie" or '
                      f'P(A better)).') from None
  if not pairs:
    raise UserError(f'{name} has no human-labeled pairs.')
  return pairs


def check_labels(check: checks_lib.Check, prompts: Sequence[str], responses_a: Sequence[str],
                 responses_b: Sequence[str]) -> np.ndarray:
  """A check standing in for human annotators: P(A better) = 1, 0 or 0.5 (a tie)."""
  return np.array([checks_lib.preferred(check, p, a, b)
                   for p, a, b in zip(prompts, responses_a, responses_b)], np.float64)


def doubt_order(rows: Sequence[dict]) -> list[int]:
  """Positions of `rows` from the AI label most in doubt to the least: position-inconsistent labels
  first, then by confidence |p - 0.5| (lowest first), ties by index. Skipped rows never."""
  live = [i for i, r in enumerate(rows) if not r['skipped']]
  return sorted(live, key=lambda i: (bool(rows[i]['consistent']),
                                     abs(rows[i]['p_a_better'] - 0.5), rows[i]['index']))


def hybrid(rows: Sequence[dict], budget: int, human: Callable[[Sequence[dict]], np.ndarray]
           ) -> list[dict]:
  """AI-labeled rows with the `budget` most in doubt (`doubt_order`) relabeled by `human(rows) ->
  P(A better)`; those rows get source 'human' and keep the judge's label as p_judge."""
  if budget < 0:
    raise UserError(f'label.human_budget must be >= 0, got {budget}.')
  pick = doubt_order(rows)[:budget]
  out = [dict(r) for r in rows]
  if pick:
    labels = human([rows[i] for i in pick])
    for i, p in zip(pick, labels):
      out[i].update(p_judge=out[i]['p_a_better'], p_a_better=float(p), source='human')
  return out


def review_queue(rows: Sequence[dict], size: int) -> list[dict]:
  """The `size` AI labels most in doubt, for a person: `preference` null until they fill it in."""
  ai = [r for r in rows if r.get('source', 'judge') == 'judge']
  return [{**{f: ai[i][f] for f in QUEUE_FIELDS[:-1]}, 'preference': None}
          for i in doubt_order(ai)[:size]]


def merge_review(rows: Sequence[dict], queue: Sequence[dict], name: str = 'review queue'
                 ) -> tuple[list[dict], int]:
  """Rows with the queue's filled-in preferences in place of their labels (source 'review',
  p_judge the label before); (rows, how many changed). A queue row must match its pair."""
  by_index = {r['index']: i for i, r in enumerate(rows)}
  out, changed = [dict(r) for r in rows], 0
  for n, q in enumerate(queue, 1):
    if q.get('preference') is None:
      continue
    i = by_index.get(q.get('index'))
    if i is None or any(out[i][f] != q.get(f) for f in ('prompt', 'response_a', 'response_b')):
      raise UserError(f'{name}:{n}: index {q.get("index")!r} does not match a labeled pair with the '
                      f'same prompt and responses; edit only the "preference" field.')
    out[i].update(p_judge=out[i].get('p_judge', out[i]['p_a_better']),
                  p_a_better=preference_value(q['preference'], f'{name}:{n}'), source='review')
    changed += 1
  return out, changed
