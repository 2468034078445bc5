"""The export stage: the policy as a Hugging Face folder (config.json, safetensors, tokenizer) that
transformers' `{Family}ForCausalLM.from_pretrained` loads, in export/ (LoRA adapters merged); a
LoRA policy over config.model.source also as a PEFT adapter folder, export/adapter/."""

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
  if model.cfg.lora_rank and ctx.lora_base() == '':  # the adapters also alone, over model.source
    hf_checkpoint.export_peft_adapter(nnx.state(model), model.cfg, folder / 'adapter',
                                      ctx.config.model.source)
    info['peft_adapter'] = str(folder / 'adapter')
  storage.write_json(folder / DONE, info)
  print(f'[export] the policy is a Hugging Face folder now: {folder}', flush=True)
  return info
