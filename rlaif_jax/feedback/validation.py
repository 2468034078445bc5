"""Is a judge worth training against? Its agreement with a programmatic check (`feedback/checks.py`)
on pairs of responses, before any reward model or RL run trusts it.

Pairwise: the judge's debiased "1 or 2" preference (with its position consistency). Pointwise: a
yes/no question asked of each response alone, log P(Yes) - log P(No), the higher-scored response
preferred (its soft label: sigmoid of the difference). Pairs the check scores equal tell nothing and
are left out. Agreement comes with a seeded percentile-bootstrap 95% interval and a plain verdict.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlaif_jax.feedback import checks as checks_lib

WORTH = 0.75  # agreement a judge needs before it is worth training against
MIN_PAIRS = 20  # fewer pairs the check tells apart give no verdict


def bootstrap_mean(scores: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
  """Seeded percentile-bootstrap 95% interval of the mean of `scores`."""
  from scipy import stats
  scores = np.asarray(scores, np.float64)
  if scores.size < 2 or np.all(scores == scores[0]):
    value = float(scores.mean()) if scores.size else float('nan')
    return value, value
  ci = stats.bootstrap((scores,), np.mean, n_resamples=resamples, confidence_level=0.95,
                       method='percentile', rng=np.random.default_rng(seed)).confidence_interval
  return float(ci.low), float(ci.high)


def agreement(p_judge: np.ndarray, check_pref: np.ndarray, resamples: int = 2000, seed: int = 0
              ) -> dict[str, Any]:
  """Agreement of soft judge labels P(A better) with the check's preference (1 A, 0 B, 0.5 tie;
  ties left out): 1 when the judge picks the check's side, 0.5 when it says exactly 0.5."""
  p, c = np.asarray(p_judge, np.float64), np.asarray(check_pref, np.float64)
  keep = c != 0.5
  p, c = p[keep], c[keep]
  pick = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, 0.5))
  score = np.where(pick == 0.5, 0.5, (pick == c).astype(np.float64))
  low, high = bootstrap_mean(score, resamples, seed)
  return {'pairs': int(keep.sum()), 'check_ties': int((~keep).sum()),
          'agreement': float(score.mean()) if score.size else float('nan'),
          'agreement_ci95': [low, high]}


def verdict(result: dict[str, Any]) -> str:
  """One plain sentence on whether to train against this judge and principle."""
  a, (low, _) = result['agreement'], result['agreement_ci95']
  n = result['pairs']
  if n < MIN_PAIRS:
    return (f'Too few pairs for a verdict: the check told only {n} pairs apart (at least '
            f'{MIN_PAIRS} are needed); use more prompts (validate.num_prompts) or a principle on '
            f'which the policy\'s responses differ.')
  if a >= WORTH and low > 0.5:
    return (f'Worth training against: the judge agrees with the check on {a:.0%} of {n} pairs '
            f'(95% CI {low:.0%}-{result["agreement_ci95"][1]:.0%}).')
  if low > 0.5:
    return (f'A weak signal: {a:.0%} agreement on {n} pairs is above chance but below '
            f'{WORTH:.0%}; expect a noisy reward. Try the other formulation or another principle.')
  return (f'Do not train against it: {a:.0%} agreement on {n} pairs is not above chance '
          f'(95% CI reaches {low:.0%}). Try the other formulation, another principle or a larger judge.')


def validate(judge: Any, prompts: Sequence[str], responses_a: Sequence[str],
             responses_b: Sequence[str], check: checks_lib.Check, mode: str = 'pairwise',
             question: str | None = None, principle: str | None = None, resamples: int = 2000,
             seed: int = 0) -> dict[str, Any]:
  """The judge (`feedback.judge.Judge`) against `check` on (prompt, A, B) pairs. mode: pairwise
  (the judge's debiased preference; `principle` as in labeling) or pointwise (`question`, a
  yes/no question about one response)."""
  check_pref = np.array([checks_lib.preferred(check, p, a, b)
                         for p, a, b in zip(prompts, responses_a, responses_b)])
  if mode == 'pairwise':
    pref = judge.pairwise(list(prompts), list(responses_a), list(responses_b),
                          None if principle is None else [principle] * len(prompts))
    p, consistent = pref.p_a_better, pref.consistent
  elif mode == 'pointwise':
    if not question:
      raise ValueError('pointwise validation needs a yes/no question about one response.')
    sa, _ = judge.yes_no(prompts, responses_a, question)
    sb, _ = judge.yes_no(prompts, responses_b, question)
    p, consistent = 1.0 / (1.0 + np.exp(-(sa - sb))), None
  else:
    raise ValueError(f'mode must be pairwise or pointwise, got {mode!r}.')
  out = {'mode': mode, **agreement(p, check_pref, resamples, seed)}
  keep = check_pref != 0.5
  out['position_consistency'] = (float(np.mean(np.asarray(consistent)[keep]))
                                 if consistent is not None and keep.any() else None)
  out['verdict'] = verdict(out)
  return out


def checked_effect(check: checks_lib.Check, prompts: Sequence[str], policy: Sequence[str],
                   reference: Sequence[str], samples: int = 1, resamples: int = 2000, seed: int = 0
                   ) -> dict[str, Any]:
  """The check's score of the policy's responses against the reference policy's on the same
  prompts: the mean paired difference with its bootstrap 95% interval (over prompts), and each
  side's mean. With samples > 1 each side gives `samples` responses per prompt (a prompt's adjacent):
  each prompt's score is the mean of its samples, so the interval counts prompts, not samples."""
  n = len(prompts)
  if len(policy) != n * samples or len(reference) != n * samples:
    raise ValueError(f'{n} prompts x {samples} samples need {n * samples} responses a side, got '
                     f'{len(policy)} and {len(reference)}.')
  score = lambda responses: np.array([check(prompts[i // samples], r) for i, r in
                                      enumerate(responses)], np.float64).reshape(n, samples)
  every_p, every_r = score(policy), score(reference)
  sp, sr = every_p.mean(1), every_r.mean(1)
  low, high = bootstrap_mean(sp - sr, resamples, seed)
  return {'prompts': n, 'policy': float(sp.mean()), 'reference': float(sr.mean()),
          'effect': float((sp - sr).mean()), 'effect_ci95': [low, high],
          'policy_higher': int((sp > sr).sum()), 'reference_higher': int((sp < sr).sum()),
          'policy_nonzero': float(np.mean(every_p != 0)),
          'reference_nonzero': float(np.mean(every_r != 0))}
