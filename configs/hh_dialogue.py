"""Helpful and harmless dialogue with a constitution (Bai et al., 2022: Constitutional AI): the
policy revises its own responses against principles (supervised stage), then RLAIF with a judge that
compares responses under a principle drawn from the same constitution.

  python -m rlaif_jax.main --config=configs/hh_dialogue.py --workdir=WORKDIR \
      --config.model.source=/ckpt/Llama-3.2-1B-Instruct [--config.judge.source=/ckpt/8B-Instruct]
  python -m rlaif_jax.main --config=configs/hh_dialogue.py --workdir=/tmp/hh \
      --config.model.source=smollm2 --config.data.max_prompts=64   # small, on a CPU
  # on a TPU pod / SLURM cluster: launch/tpu_pod.sh or launch/slurm_gpu.sbatch with the same flags

Prompts default to the opening turns of chatterbot-corpus's English conversations; use red-teaming
style prompts for real harmlessness work, e.g. `--config.data.source=/data/red_team.jsonl`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'configs/hh_dialogue.py takes no option, got {arg!r}.')
  c = common.pipeline('')  # --config.model.source=<Llama-family HF folder> or smollm2
  c.stages = ('sft', 'label', 'reward_model', 'rl', 'eval', 'export')
  c.data.source = 'chatterbot'
  c.data.num_heldout = 64
  c.judge.task = 'harmless'
  c.judge.constitution = 'configs/constitutions/harmless.txt'
  c.sft.data = 'revisions'
  c.sft.num_examples = 256
  c.sft.steps = 200
  c.sft.batch_size = 16
  c.label.num_prompts = 2000
  c.label.batch_size = 32
  c.reward_model.steps = 500
  c.reward_model.batch_size = 32
  c.rl.iterations = 200
  c.rl.batch_size = 32
  c.rl.missing_eos_penalty = 1.0
  c.checkpoint.interval = 20
  return c
