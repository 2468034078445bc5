"""RLAIF and d-RLAIF for Reddit TL;DR-style summarization with Llama-family Hugging Face checkpoints on
a GPU/TPU slice (Lee et al., 2023: RLAIF vs. RLHF).

  # RLAIF: label pairs with the judge, train a reward model, PPO against it
  python -m rlaif_jax.main --config=configs/tldr_summarization.py --workdir=WORKDIR \
      --config.model.source=/ckpt/Llama-3.2-1B-Instruct --config.judge.source=/ckpt/Llama-3.1-8B-Instruct
  # d-RLAIF: the judge scores each summary directly during RL (no labels, no reward model)
  python -m rlaif_jax.main --config=configs/tldr_summarization.py:drlaif --workdir=WORKDIR ...
  # on a TPU pod / SLURM cluster: launch/tpu_pod.sh or launch/slurm_gpu.sbatch with the same flags

Prompts: the default `tfds:huggingface:trl_lib__tldr:train` needs the `hf` extra (datasets) and
access to huggingface.co (field `prompt`; each prompt is the post followed by "TL;DR:"). Where a pod
has neither, prepare the prompts once as JSONL (README, "Prompts for a pod run") and pass
`--config.data.source=gs://BUCKET/tldr_train.jsonl` (or a local path; field set by
`--config.data.prompt_field`).
"""

import ml_collections

from configs import common

OPTIONS = ('rlaif', 'drlaif')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = arg or 'rlaif'
  if mode not in OPTIONS:
    raise ValueError(f'Unknown config option {mode!r}; known: {", ".join(OPTIONS)}.')
  c = common.pipeline('')  # --config.model.source=<Llama-family HF folder>
  c.mesh = common.mesh(data=1, fsdp=-1)  # FSDP over the slice; add tensor=N for 8B+ policies
  c.model.param_dtype = 'float32'
  c.model.dtype = 'bfloat16'
  c.data.source = 'tfds:huggingface:trl_lib__tldr:train'
  c.data.num_heldout = 512
  c.judge.source = ''  # an 8B-class instruct model; '' = the policy itself
  c.judge.task = 'summarization'
  c.judge.preamble = 'detailed'
  c.judge.max_context_tokens = 768
  c.judge.max_response_tokens = 128
  c.label.num_prompts = 20000
  c.label.batch_size = 64
  c.label.sampling = common.sampling(64, temperature=1.0)
  c.reward_model.steps = 2000
  c.reward_model.batch_size = 64
  c.reward_model.learning_rate = 1e-5
  c.reward_model.max_length = 896
  c.rl.reward = 'judge' if mode == 'drlaif' else 'reward_model'
  c.rl.iterations = 1000
  c.rl.batch_size = 64
  c.rl.epochs = 2
  c.rl.minibatches = 4
  c.rl.learning_rate = 1e-6
  c.rl.kl_coef = 0.05
  c.rl.prompt_length = 768
  c.rl.sampling = common.sampling(64, temperature=0.7)
  c.eval.num_prompts = 512
  c.eval.sampling = common.sampling(64, temperature=0.0)
  c.checkpoint.interval = 50
  c.checkpoint.keep = 3
  c.stages = (('rl', 'eval', 'export') if mode == 'drlaif'
              else ('label', 'reward_model', 'rl', 'eval', 'export'))
  return c
