"""The eval stage: the policy against the reference policy on held-out prompts. The judge compares
their responses in both orders (win rate with a bootstrap 95% interval), rates each response's
harmlessness, and optionally measures its own agreement with human labels. Leaves eval/eval.json,
eval/samples.jsonl, eval/report.md and eval/*.png."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from rlaif_jax.data import human_pairs
from rlaif_jax.feedback import alignment, checks, validation
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import storage
from rlaif_jax.pipeline import report, training_loop
from rlaif_jax.pipeline.context import RunContext
from rlaif_jax.infra.errors import UserError


def held_out_prompts(ctx: RunContext) -> list[str]:
  _, held_out = ctx.prompts()
  n = ctx.config.eval.num_prompts
  prompts = held_out[:n] if n > 0 else held_out
  if not prompts:
    raise UserError('The eval stage needs held-out prompts: set data.num_heldout > 0.')
  return prompts


def responses_of_both(ctx: RunContext, prompts: list[str]) -> dict[str, list[str]]:
  """The current and the reference policy's responses, each with its own key."""
  settings = ctx.sampling(ctx.config.eval.sampling)
  k_policy, k_ref = jax.random.split(ctx.stage_key('eval'))
  responses = {}
  for name, reference, key in (('policy', False, k_policy), ('reference', True, k_ref)):
    model, tokenizer = ctx.policy(reference=reference, frozen=True)
    responses[name] = text_lib.TextGenerator(model, tokenizer, ctx.mesh)(prompts, settings, key)
  return responses


def write_samples(path: storage.PathLike, prompts, responses, p_policy_better) -> None:
  storage.write_jsonl(path, ({'prompt': p, 'policy': a, 'reference': b, 'p_policy_better': float(q)}
                             for p, a, b, q in zip(prompts, responses['policy'],
                                                   responses['reference'], p_policy_better)))


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'eval', 'eval.json')) is not None:
    return info
  c = ctx.config.eval
  prompts = held_out_prompts(ctx)
  responses = responses_of_both(ctx, prompts)
  judge = ctx.judge()
  out = {'prompts': len(prompts), 'policy_from': str(ctx.policy_dir() or ctx.config.model.source),
         'reference_from': str(ctx.policy_dir(reference=True) or ctx.config.model.source)}
  pref = judge.pairwise(prompts, responses['policy'], responses['reference'])
  out.update(report.win_rate(pref.p_a_better, pref.consistent))
  harmless = judge.for_task('harmless')  # one judge model loaded, two tasks
  for name in ('policy', 'reference'):
    rewards, _ = harmless.direct_reward(prompts, responses[name])
    out[f'harmless_rate_{name}'] = float(np.mean(rewards > 0))
  if ctx.config.check:  # the principle's effect, measured without the judge
    out['check'] = {'name': ctx.config.check, **validation.checked_effect(
        checks.resolve(ctx.config.check), prompts, responses['policy'], responses['reference'],
        seed=ctx.config.seed)}
  if c.human_pairs:
    pairs = human_pairs.read_human_pairs(c.human_pairs, limit=c.human_pairs_limit or None)
    out['judge_human_alignment'] = alignment.alignment(judge, pairs, progress=False)
  write_samples(ctx.path('eval', 'samples.jsonl'), prompts, responses, pref.p_a_better)
  samples = [{'prompt': p, 'policy': a, 'reference': b} for p, a, b in
             zip(prompts, responses['policy'], responses['reference'])][:c.samples_in_report]
  report.write(ctx.workdir, out, samples)
  storage.write_json(ctx.path('eval', 'eval.json'), out)
  if 'check' in out:
    e = out['check']
    print(f'[eval] check {e["name"]}: policy {e["policy"]:.3f} vs reference {e["reference"]:.3f}, '
          f'effect {e["effect"]:+.3f} (95% CI {e["effect_ci95"][0]:+.3f} to '
          f'{e["effect_ci95"][1]:+.3f})', flush=True)
  print(f'[eval] win rate vs reference {out["win_rate"]:.3f} (95% CI {out["win_rate_ci95"][0]:.3f}-'
        f'{out["win_rate_ci95"][1]:.3f}) on {len(prompts)} held-out prompts; report in '
        f'{ctx.path("eval", "report.md")}', flush=True)
  return out
