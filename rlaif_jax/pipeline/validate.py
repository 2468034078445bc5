"""The validate stage: is the judge worth training against, for this principle? Two responses per
held-out prompt (never trained on) from the current policy, the check's preference of each pair
against the judge's, pairwise (debiased "1 or 2") and, with validate.question, pointwise (a yes/no
question per response). Writes validate/validation.json and validate/pairs.jsonl and prints a
plain verdict; run it alone (`--config.stages=validate`) before renting a pod.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlaif_jax.feedback import checks, labeling, validation
from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import storage
from rlaif_jax.infra.errors import UserError
from rlaif_jax.pipeline import training_loop
from rlaif_jax.pipeline.context import RunContext


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'validate', 'validation.json')) is not None:
    return info
  c = ctx.config.validate
  check = checks.resolve(ctx.config.check)
  _, held_out = ctx.prompts()
  prompts = held_out[:c.num_prompts] if c.num_prompts > 0 else held_out
  if not prompts:
    raise UserError('The validate stage needs held-out prompts: set data.num_heldout > 0.')
  model, tokenizer = ctx.policy(frozen=True)
  policy = text_lib.TextGenerator(model, tokenizer, ctx.mesh)
  a, b = labeling.response_pairs(policy, prompts, ctx.sampling(c.sampling), ctx.stage_key('validate'))
  judge = ctx.judge()
  out = {'check': ctx.config.check, 'prompts': len(prompts), 'judge': judge.name,
         'policy_from': str(ctx.policy_dir() or ctx.config.model.source)}
  modes = [('pairwise', None)] + ([('pointwise', c.question)] if c.question else [])
  for mode, question in modes:
    out[mode] = validation.validate(judge, prompts, a, b, check, mode, question,
                                    c.principle or None, seed=ctx.config.seed)
    if mode == 'pairwise':
      out[mode]['judge_task'] = judge.cfg.task
    print(f'[validate] {mode}: {out[mode]["verdict"]}', flush=True)
  scores = [(check(p, x), check(p, y)) for p, x, y in zip(prompts, a, b)]
  storage.write_jsonl(ctx.path('validate', 'pairs.jsonl'), (
      {'prompt': p, 'response_a': x, 'response_b': y, 'check_a': float(s[0]), 'check_b': float(s[1])}
      for p, x, y, s in zip(prompts, a, b, scores)))
  out['check_differs'] = float(np.mean([s[0] != s[1] for s in scores]))
  storage.write_json(ctx.path('validate', 'validation.json'), out)
  return out
