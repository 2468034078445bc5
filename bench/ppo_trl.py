"""The TRL side of bench/ppo.py: PPO iterations with trl 0.29.1's `trl.experimental.ppo.PPOTrainer`.

Runs inside the benchmark's own environment (bench/.venv-trl, made by bench/ppo.py), never ours:
  bench/.venv-trl/bin/python bench/ppo_trl.py --folder F --prompts P.json --iterations N --out R.json
Policy, reference, value and reward models are all loaded from the same folder (SmolLM2 exported by
rlaif_jax, with a `score.weight` head for the value and reward models).
"""

import argparse
import json
import os
import resource
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo
from trl_timing import StepTimes  # bench/, this script's folder


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--folder', required=True)
  ap.add_argument('--prompts', required=True)
  ap.add_argument('--iterations', type=int, required=True)
  ap.add_argument('--out', required=True)
  args = ap.parse_args()
  with open(args.prompts) as f:
    spec = json.load(f)
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  tok = AutoTokenizer.from_pretrained(args.folder, padding_side='left')
  kw = dict(dtype=torch.float32)
  policy = AutoModelForCausalLM.from_pretrained(args.folder, **kw)
  reference = AutoModelForCausalLM.from_pretrained(args.folder, **kw)
  value = AutoModelForSequenceClassification.from_pretrained(args.folder, num_labels=1, **kw)
  reward = AutoModelForSequenceClassification.from_pretrained(args.folder, num_labels=1, **kw)
  batch = len(spec['prompts'])
  data = Dataset.from_dict({'input_ids': spec['prompts']})
  config = PPOConfig(
      output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
      num_mini_batches=spec['minibatches'], num_ppo_epochs=spec['epochs'],
      response_length=spec['new_tokens'], stop_token=None, temperature=spec['temperature'],
      kl_coef=spec['kl_coef'], vf_coef=spec['vf_coef'], cliprange=spec['clip_eps'],
      cliprange_value=spec['value_clip'], learning_rate=spec['learning_rate'],
      total_episodes=batch * args.iterations, local_rollout_forward_batch_size=batch,
      num_sample_generations=0, report_to=[], save_strategy='no', logging_steps=1, use_cpu=True,
      seed=0, disable_tqdm=True)
  rollout_times = []
  generate = trl_ppo.batch_generation

  def timed_generation(*a, **k):  # the rollout share: TRL's generation call, timed
    t = time.perf_counter()
    out = generate(*a, **k)
    rollout_times.append(time.perf_counter() - t)
    return out

  trl_ppo.batch_generation = timed_generation
  steps = StepTimes()
  trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=reference,
                       reward_model=reward, value_model=value, train_dataset=data,
                       eval_dataset=data, callbacks=[steps])
  trainer.train()
  seconds = steps.seconds()
  with open(args.out, 'w') as f:
    json.dump({'seconds': seconds, 'rollout': rollout_times,
               'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               'torch': torch.__version__, 'trl': __import__('trl').__version__}, f)


if __name__ == '__main__':
  main()
