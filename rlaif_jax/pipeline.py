"""Runs the stages a config names, in order, in one workdir.

Built so far: `generate` (sample from the policy on the config's prompts). The RLAIF stages named in
the design (sft, label, reward_model, rl, eval, export) raise a clear error until they exist.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from rlaif_jax import pretrained, sampling
from rlaif_jax import sharding as shd

PLANNED_STAGES = ('sft', 'label', 'reward_model', 'rl', 'eval', 'export')


def mesh_from_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  return shd.make_mesh(dict(config.mesh))


def load_policy(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  rules = shd.rules_from_config(config.logical_axis_rules)
  return pretrained.load_model(config.model.source, mesh, rules,
                               param_dtype=config.model.param_dtype, dtype=config.model.dtype)


def stage_generate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Sample one response per prompt; writes generate.jsonl and prints prompt -> response."""
  mesh = mesh_from_config(config)
  t0 = time.time()
  policy, tokenizer = load_policy(config, mesh)
  logging.info('Loaded %s in %.1fs on mesh %s', config.model.source, time.time() - t0,
               dict(mesh.shape))
  g = config.generate
  settings = sampling.SamplingConfig(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                     top_k=g.top_k, top_p=g.top_p)
  generator = sampling.TextGenerator(policy, tokenizer, mesh, g.prompt_buckets)
  key = jax.random.key(config.seed)
  t0 = time.time()
  responses = generator(list(g.prompts), settings, key, chat=g.chat_template)
  seconds = time.time() - t0
  path = os.path.join(workdir, 'generate.jsonl')
  with open(path, 'w') as f:
    for p, r in zip(g.prompts, responses):
      f.write(json.dumps({'prompt': p, 'response': r}) + '\n')
  for p, r in zip(g.prompts, responses):
    print(f'\n>>> {p}\n{r}')
  print(f'\n[generate] {len(responses)} responses in {seconds:.1f}s (including compilation); '
        f'written to {path}')
  return {'seconds': seconds, 'responses': len(responses)}


STAGES: dict[str, Callable[[ml_collections.ConfigDict, str], dict[str, Any]]] = {
    'generate': stage_generate,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
  """Run config.stages in order; returns each stage's summary."""
  for stage in config.stages:
    if stage not in STAGES:
      if stage in PLANNED_STAGES:
        raise NotImplementedError(f'Stage {stage!r} is not built yet; stages available now: '
                                  f'{sorted(STAGES)}. Remove it from config.stages.')
      raise ValueError(f'Unknown stage {stage!r} in config.stages; known stages: '
                       f'{sorted(STAGES) + list(PLANNED_STAGES)}.')
  os.makedirs(workdir, exist_ok=True)
  summaries = {}
  for stage in config.stages:
    logging.info('Stage %s', stage)
    summaries[stage] = STAGES[stage](config, workdir)
  return summaries
