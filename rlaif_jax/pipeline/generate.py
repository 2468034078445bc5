"""The generate stage: the policy's responses to config.generate.prompts, printed and written to
generate.jsonl (a quick look at a checkpoint; no training)."""

from __future__ import annotations

import time
from typing import Any

from rlaif_jax.generation import text as text_lib
from rlaif_jax.infra import storage
from rlaif_jax.pipeline.context import RunContext


def run_stage(ctx: RunContext) -> dict[str, Any]:
  """Sample one response per prompt; writes generate.jsonl and prints prompt -> response."""
  t0 = time.time()
  policy, tokenizer = ctx.policy(frozen=True)
  g = ctx.config.generate
  generator = text_lib.TextGenerator(policy, tokenizer, ctx.mesh, g.prompt_buckets)
  responses = generator(list(g.prompts), ctx.sampling(g), ctx.stage_key('generate'),
                        chat=g.chat_template)
  path = ctx.path('generate.jsonl')
  storage.write_jsonl(path, ({'prompt': p, 'response': r} for p, r in zip(g.prompts, responses)))
  for p, r in zip(g.prompts, responses):
    print(f'\n>>> {p}\n{r}')
  seconds = time.time() - t0
  print(f'\n[generate] {len(responses)} responses in {seconds:.1f}s (including loading and '
        f'compilation); written to {path}')
  return {'seconds': seconds, 'responses': len(responses)}
