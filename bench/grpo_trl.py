"""The TRL side of bench/grpo.py: GRPO iterations with trl 1.16.0's `GRPOTrainer`.

Runs inside the benchmark's own environment (bench/.venv-trl-grpo, made by bench/grpo.py), never ours:
  bench/.venv-trl-grpo/bin/python bench/grpo_trl.py --folder F --spec S.json --iterations N --out R.json
One trainer step = one iteration of ours: 16 prompts x 4 generations of up to 128 tokens (each ends
at the end-of-turn token; generate stops once every row has), the reward, reference log-probs for
the beta KL term, one optimizer step on all 64 completions in two accumulated micro-batches of 32.
"""

import argparse
import json
import os
import resource
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_timing import StepTimes  # bench/, this script's folder


def word_count_reward(text: str, target: int) -> float:  # as bench/grpo.py's (no rlaif_jax here)
  return 1.0 - abs(len(text.split()) - target) / target


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--folder', required=True)
  ap.add_argument('--spec', required=True)
  ap.add_argument('--iterations', type=int, required=True)
  ap.add_argument('--out', required=True)
  args = ap.parse_args()
  with open(args.spec) as f:
    spec = json.load(f)
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  tok = AutoTokenizer.from_pretrained(args.folder, padding_side='left')
  policy = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
  k, n, micro = spec['samples'], len(spec['prompts']), spec['micro_batches']
  data = Dataset.from_dict({'prompt': [[{'role': 'user', 'content': p}] for p in spec['prompts']]})
  rewards = []

  def reward(completions, **_):
    texts = [c[-1]['content'] if isinstance(c, list) else c for c in completions]
    r = [word_count_reward(t, spec['target_words']) for t in texts]
    rewards.append(sum(r) / len(r))
    return r

  config = GRPOConfig(
      # one generation of n * k completions per optimizer step, taken in `micro` accumulated parts
      output_dir=tempfile.mkdtemp(), per_device_train_batch_size=n * k // micro, num_generations=k,
      steps_per_generation=micro, num_iterations=1, gradient_accumulation_steps=micro,
      max_completion_length=spec['new_tokens'], temperature=spec['temperature'], beta=spec['beta'],
      epsilon=spec['clip_eps'], loss_type='grpo', scale_rewards='group',
      learning_rate=spec['learning_rate'], max_steps=args.iterations, logging_steps=1,
      report_to=[], save_strategy='no', use_cpu=True, seed=0, disable_tqdm=True, bf16=False,
      gradient_checkpointing=False)  # GRPOConfig turns it on by default: extra recompute, unlike ours
  steps = StepTimes()
  trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=config, train_dataset=data,
                        processing_class=tok, callbacks=[steps])
  trainer.train()
  seconds = steps.seconds()
  logs = [h for h in trainer.state.log_history if 'completions/mean_length' in h]
  with open(args.out, 'w') as f:
    json.dump({'seconds': seconds, 'reward': rewards,
               # TRL's completion lengths count the end-of-turn token, as ours do
               'mean_length': [h['completions/mean_length'] for h in logs],
               'capped': [h['completions/clipped_ratio'] for h in logs],
               'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               'torch': torch.__version__, 'trl': __import__('trl').__version__}, f)


if __name__ == '__main__':
  main()
