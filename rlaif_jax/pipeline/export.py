"""The export stage: the policy as a Hugging Face folder (config.json, safetensors, tokenizer) that
transformers' `LlamaForCausalLM.from_pretrained` loads, in export/."""

from __future__ import annotations

from typing import Any

from flax import nnx

from rlaif_jax.infra import storage
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.pipeline import training_loop
from rlaif_jax.pipeline.context import DONE, RunContext


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'export')) is not None:
    return info
  model, tokenizer = ctx.policy()
  folder = ctx.path('export')
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, folder, tokenizer)
  info = {'from': str(ctx.policy_dir() or ctx.config.model.source), 'folder': str(folder)}
  storage.write_json(folder / DONE, info)
  print(f'[export] the policy is a Hugging Face folder now: {folder}', flush=True)
  return info
