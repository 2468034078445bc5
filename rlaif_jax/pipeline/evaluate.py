"""The eval stage: the policy against the reference policy on held-out prompts. The principle's check
scores both (the checked effect, on eval.samples_per_prompt sampled answers per prompt when set, and
on greedy ones; with whether RL's reward rose while the check did not: reward hacking); the judge
(eval.judge) compares their responses in both orders (win rate with a bootstrap 95% interval), rates
each response's harmlessness, and optionally measures its own agreement with human labels. Leaves
eval/eval.json, eval/samples.jsonl (eval/sampled.jsonl), eval/report.md and eval/*.png."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from rlaif_jax.data import human_pairs
from rlaif_jax.feedback import alignment, checks, validation
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import metrics, storage
from rlaif_jax.infra.progress import Progress
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


SAMPLE_ROWS = 64  # rows per sampler call when eval samples several answers per prompt


def responses_of_both(ctx: RunContext, prompts: list[str], samples: int = 0
                      ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
  """The current and the reference policy's responses (eval.sampling), each with its own key, and
  with samples > 0 also `samples` answers per prompt at rl.sampling's temperature (each prompt's
  adjacent; {} otherwise)."""
  settings = ctx.sampling(ctx.config.eval.sampling)
  k_policy, k_ref = jax.random.split(ctx.stage_key('eval'))
  k_sampled = jax.random.split(jax.random.fold_in(ctx.stage_key('eval'), 1))
  responses, sampled = {}, {}
  for (name, reference, key), k_many in zip((('policy', False, k_policy), ('reference', True, k_ref)),
                                            k_sampled):
    model, tokenizer = baseline(ctx) if reference else ctx.policy(frozen=True)
    generate = text_lib.TextGenerator(model, tokenizer, ctx.mesh)
    responses[name] = generate(prompts, settings, key)
    if samples:
      sampled[name] = in_chunks(generate, [p for p in prompts for _ in range(samples)],
                                ctx.sampling(ctx.config.rl.sampling), k_many)
  return responses, sampled


def baseline(ctx: RunContext):
  """(model, tokenizer) that eval compares the policy with: RL's reference policy (eval.baseline=
  'reference': sft/policy when an sft stage ran, else model.source), or the model the run started
  from ('source': every stage's effect together)."""
  if ctx.config.eval.baseline == 'source':
    return ctx.load(ctx.config.model.source, frozen=True, what='policy')
  return ctx.policy(reference=True, frozen=True)


def baseline_from(ctx: RunContext) -> str:
  if ctx.config.eval.baseline == 'source':
    return str(ctx.config.model.source)
  return str(ctx.policy_dir(reference=True) or ctx.config.model.source)


def in_chunks(generate: text_lib.TextGenerator, prompts: list[str], settings, key: jax.Array,
              rows: int = SAMPLE_ROWS) -> list[str]:
  """`generate` over the prompts SAMPLE_ROWS at a time (one compiled shape: the last chunk is
  filled with its last prompt), a key folded per chunk."""
  out, rows = [], min(rows, len(prompts))
  progress = Progress('eval', len(prompts), unit='sampled answer')
  for i, start in enumerate(range(0, len(prompts), rows)):
    chunk = prompts[start:start + rows]
    texts = generate(chunk + [chunk[-1]] * (rows - len(chunk)), settings, jax.random.fold_in(key, i))
    out += texts[:len(chunk)]
    progress.update(len(out))
  return out


def write_samples(path: storage.PathLike, prompts, responses, p_policy_better) -> None:
  storage.write_jsonl(path, ({'prompt': p, 'policy': a, 'reference': b, 'p_policy_better': float(q)}
                             for p, a, b, q in zip(prompts, responses['policy'],
                                                   responses['reference'], p_policy_better)))


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'eval', 'eval.json')) is not None:
    return info
  c = ctx.config.eval
  prompts = held_out_prompts(ctx)
  samples = c.samples_per_prompt if ctx.config.check else 0
  responses, sampled = responses_of_both(ctx, prompts, samples)
  out = {'prompts': len(prompts), 'policy_from': str(ctx.policy_dir() or ctx.config.model.source),
         'reference_from': baseline_from(ctx)}
  p_policy_better = [float('nan')] * len(prompts)
  if c.judge:
    judge = ctx.judge()
    pref = judge.pairwise(prompts, responses['policy'], responses['reference'])
    p_policy_better = pref.p_a_better
    out.update(report.win_rate(pref.p_a_better, pref.consistent))
    harmless = judge.for_task('harmless')  # one judge model loaded, two tasks
    for name in ('policy', 'reference'):
      rewards, _ = harmless.direct_reward(prompts, responses[name])
      out[f'harmless_rate_{name}'] = float(np.mean(rewards > 0))
  if ctx.config.check:  # the principle's effect, measured without the judge
    check = checks.resolve(ctx.config.check)
    greedy = {'name': ctx.config.check, 'samples_per_prompt': 1,
              'temperature': c.sampling.temperature, **validation.checked_effect(
                  check, prompts, responses['policy'], responses['reference'], seed=ctx.config.seed)}
    out['check'] = greedy
    if samples:  # the headline: several sampled answers per prompt, averaged per prompt
      out['check_greedy'] = greedy
      out['check'] = {'name': ctx.config.check, 'samples_per_prompt': samples,
                      'temperature': ctx.config.rl.sampling.temperature, **validation.checked_effect(
                          check, prompts, sampled['policy'], sampled['reference'], samples=samples,
                          seed=ctx.config.seed)}
    hacking = report.reward_hacking(metrics.read(ctx.workdir, 'rl'), ctx.config.check)
    if hacking:
      out['reward_hacking'] = hacking
  if c.human_pairs:
    pairs = human_pairs.read_human_pairs(c.human_pairs, limit=c.human_pairs_limit or None)
    out['judge_human_alignment'] = alignment.alignment(ctx.judge() if not c.judge else judge, pairs,
                                                       progress=False)
  write_samples(ctx.path('eval', 'samples.jsonl'), prompts, responses, p_policy_better)
  if sampled:
    storage.write_jsonl(ctx.path('eval', 'sampled.jsonl'), (
        {'prompt': prompts[i // samples], 'policy': a, 'reference': b}
        for i, (a, b) in enumerate(zip(sampled['policy'], sampled['reference']))))
  rows = [{'prompt': p, 'policy': a, 'reference': b} for p, a, b in
          zip(prompts, responses['policy'], responses['reference'])][:c.samples_in_report]
  report.write(ctx.workdir, out, rows, ctx.config.check)
  storage.write_json(ctx.path('eval', 'eval.json'), out)
  if 'check' in out:
    print(f'[eval] {report.checked(out["check"])}', flush=True)
  if 'reward_hacking' in out:
    print(f'[eval] {out["reward_hacking"]["text"]}', flush=True)
  if 'win_rate' in out:
    print(f'[eval] win rate vs reference {out["win_rate"]:.3f} (95% CI {out["win_rate_ci95"][0]:.3f}-'
          f'{out["win_rate_ci95"][1]:.3f}) on {len(prompts)} held-out prompts; report in '
          f'{ctx.path("eval", "report.md")}', flush=True)
  return out
