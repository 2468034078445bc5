"""Runs the stages a config names, in order, in one workdir.

Stages and what each leaves in the workdir (a stage whose output is complete skips itself; a stage
killed part way resumes from its last checkpoint):
  generate       generate.jsonl: the policy's responses to config.generate.prompts
  sft            sft/policy (DONE.json last): supervised fine-tuning on demonstrations
                 (config.sft.data: a JSONL file) or on constitutional revisions of the policy's own
                 responses ('revisions'); sft/checkpoints while it runs
  label          label/label_chunks/*.jsonl + label/DONE.json: response pairs from the policy, soft
                 labels from the debiased judge (the rows the reward_model stage reads)
  reward_model   reward_model/model (reward_stats.json last): the reward model and its statistics
  dpo            dpo/policy (DONE.json last): the policy trained directly on the labels (DPO, IPO,
                 soft-label DPO), reference log-probs in dpo/reference.json; dpo/checkpoints
  rl             rl/policy (DONE.json last): PPO / REINFORCE / RLOO / GRPO against the reward model
                 or the judge; rl/checkpoints while it runs
  eval           eval/eval.json, eval/report.md, eval/*.png: win rate against the reference policy on
                 held-out prompts (both orders), harmless rate, optional judge-human alignment
  export         export/: the policy as a Hugging Face folder (config.json, safetensors, tokenizer)
Every stage appends to metrics.jsonl and TensorBoard files (tensorboard/<stage>) and prints progress
lines with rate and ETA.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import jax
import ml_collections

from rlaif_jax.infra import checkpoints, storage
from rlaif_jax.pipeline import (checks, dpo, evaluate, export, generate, label, report, reward_model,
                                rl, sft, validate)
from rlaif_jax.pipeline.context import STAGE_ORDER, RunContext

STAGES: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    'generate': generate.run_stage, 'sft': sft.run_stage, 'label': label.run_stage,
    'reward_model': reward_model.run_stage, 'dpo': dpo.run_stage, 'rl': rl.run_stage, 'eval': evaluate.run_stage,
    'export': export.run_stage, 'validate': validate.run_stage,
}
assert tuple(STAGES) == STAGE_ORDER


PROMPT_STAGES = ('sft', 'label', 'rl', 'eval', 'validate')  # the stages that read config.data


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
  """Run config.stages in order; returns each stage's summary. SIGTERM makes the running stage save
  a checkpoint and exit (status 143); the same command resumes."""
  checks.check_config(config, tuple(STAGES))  # what the config alone shows, in a second
  checks.check_workdir(workdir)
  ctx = RunContext(config, workdir)
  checks.check_batches(config, ctx.mesh, ctx.rules)  # the config against the mesh
  if set(config.stages) & set(PROMPT_STAGES):
    ctx.prompts()  # a data source that cannot be read fails now, before any model loads

  def on_sigterm(signum, frame):
    ctx.terminate = True
    print('SIGTERM received: saving a checkpoint after the current step.', flush=True)

  previous = signal.signal(signal.SIGTERM, on_sigterm)
  summaries, seconds = {}, {}
  before = checkpoints.read_marker(workdir, 'summary.json') or {'seconds': {}}
  try:
    for stage in config.stages:
      print(f'[{stage}] starting', flush=True)
      t0 = time.time()
      summaries[stage] = STAGES[stage](ctx)
      seconds[stage] = time.time() - t0
      if stage in ctx.skipped:  # the time it took when it ran (kept in summary.json or its marker)
        seconds[stage] = before['seconds'].get(stage, summaries[stage].get('seconds', seconds[stage]))
      else:
        print(f'[{stage}] done in {seconds[stage]:.0f}s', flush=True)
  finally:
    signal.signal(signal.SIGTERM, previous)
  storage.write_json(ctx.path('summary.json'), {'stages': summaries, 'seconds': seconds})
  if jax.process_index() == 0:
    print('\n' + report.summary_table(ctx.workdir, summaries, seconds), flush=True)
  return summaries
