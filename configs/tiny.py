"""A tiny end-to-end pipeline: every stage, in seconds, on any small Llama-family Hugging Face folder
used as policy, judge and reward model. The tests run it on a random tiny model they write.

  python -m rlaif_jax.main --config=configs/tiny.py --workdir=/tmp/tiny \
      --config.model.source=/path/to/tiny_hf_folder [--config.rl.iterations=6]
"""

import ml_collections

from configs import common

WORDS = ('the cat sat on the mat while a dog ran in the park and the sun was warm people like to '
         'read books write code and talk about the weather').split()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'configs/tiny.py takes no option, got {arg!r}.')
  c = common.pipeline('')  # set --config.model.source
  c.stages = ('sft', 'label', 'reward_model', 'rl', 'eval', 'export')
  c.data.prompts = tuple(' '.join(WORDS[(7 * i + j) % len(WORDS)] for j in range(3 + i % 4)) + ' ?'
                         for i in range(24))
  c.data.num_heldout = 8
  c.judge.constitution = 'configs/constitutions/harmless.txt'
  c.judge.max_response_tokens = 32
  c.judge.max_context_tokens = 32
  c.sft.num_examples = 8
  c.sft.steps = 4
  c.sft.learning_rate = 1e-3
  c.sft.warmup_steps = 1
  c.sft.prompt_length = 32
  c.sft.response_length = 16
  c.sft.sampling = common.sampling(8, temperature=1.0)
  c.label.sampling = common.sampling(8, temperature=1.0)
  c.reward_model.steps = 6
  c.reward_model.learning_rate = 1e-3
  c.reward_model.warmup_steps = 1
  c.reward_model.max_length = 48
  c.reward_model.eval_fraction = 0.25
  c.rl.iterations = 6
  c.rl.minibatches = 1  # 8 rows a step: one row per device of the tests' 8-device mesh
  c.rl.learning_rate = 1e-3
  c.rl.prompt_length = 32
  c.rl.sampling = common.sampling(8, temperature=1.0)
  c.eval.sampling = common.sampling(8, temperature=1.0)
  c.checkpoint.interval = 2
  c.checkpoint.keep = 2
  return c
