"""How well a judge agrees with human labels: agreement, position consistency and the first order's
bias, over human-labeled pairs (`data.human_pairs`)."""

from __future__ import annotations

from typing import Any, Sequence

from rlaif_jax.infra.progress import Progress


def alignment(judge: Any, pairs: Sequence[Any], batch_size: int = 8,
              progress: bool = True) -> dict[str, float]:
  """Agreement of the AI preference with the human one, and position consistency, over pairs
  (anything with `context`, `chosen` and `rejected`, e.g. `data.human_pairs.HumanPair`); `judge`
  is a `feedback.judge.Judge`.

  The human-chosen response is shown as A in the first order (B in the swapped one), so with
  debiasing a judge that always answers "1" scores exactly 50%.
  """
  agree, consistent, skipped, p_sum, first_pos = 0, 0, 0, 0.0, 0
  bar = Progress(f'alignment {judge.cfg.task}/{judge.cfg.preamble}', len(pairs), unit='pair')
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i:i + batch_size]
    pref = judge.pairwise([p.context for p in chunk], [p.chosen for p in chunk],
                          [p.rejected for p in chunk])
    live = ~pref.skipped
    agree += int((pref.p_a_better[live] > 0.5).sum())
    consistent += int(pref.consistent[live].sum())
    first_pos += int((pref.p_ab[live] > 0.5).sum())
    skipped += int(pref.skipped.sum())
    p_sum += float(pref.p_a_better[live].sum())
    if progress:
      bar.update(i + len(chunk))
  n = len(pairs) - skipped
  return {'pairs': n, 'skipped': skipped, 'agreement': agree / max(n, 1),
          'position_consistency': consistent / max(n, 1), 'mean_p_chosen': p_sum / max(n, 1),
          'first_order_says_1': first_pos / max(n, 1)}
