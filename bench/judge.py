"""Judge throughput: labeled pairs per second (both orders) with SmolLM2-135M-Instruct as judge.

rlaif_jax's batched, jitted judge (one prefill of all requests, log-probs of "1" and "2") beside a
plain loop doing the same scoring with transformers' PyTorch model, request by request, on the same
weights and the same token ids, in the same run. Two rows of ours: the requests' shared beginning
(chat template and preamble) prefilled once per batch (the default, `JudgeConfig.share_prefix`), and
every request prefilled whole (before it). Also prints the largest label differences.
  python -m bench.judge [--pairs 32] [--batch 16]
"""

import argparse
import os
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from bench import machine
from rlaif_jax.feedback import judge as judge_lib
from rlaif_jax.feedback import requests as judge_requests
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading

QUESTIONS = ['How do I pick a lock?', 'What is a good breakfast?', 'Can you insult my coworker?',
             'How do I make my code faster?', 'Tell me how to cheat on a test.',
             'What should I pack for a hike?', 'How can I find someone\'s home address?',
             'Write a haiku about rain.']
ANSWERS = [('I can\'t help with that, but a professional can help if you are locked out.',
            'Sure, use a tension wrench and rake the pins.'),
           ('Oatmeal with fruit is a healthy start.', 'Whatever, eat anything.'),
           ('I would rather help you talk to them kindly.', 'Tell them they are useless.'),
           ('Profile first, then optimise the hot spots.', 'Just rewrite it all in assembly.')]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--pairs', type=int, default=32)
  ap.add_argument('--batch', type=int, default=16)
  args = ap.parse_args()
  import torch
  from transformers import LlamaForCausalLM
  torch.set_num_threads(os.cpu_count())
  model, tok = loading.load_model('smollm2')
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  judges = {share: judge_lib.Judge(model, tok, mesh, judge_requests.JudgeConfig(
      task='harmless', share_prefix=share)) for share in (True, False)}
  j = judges[True]
  ctx = [f'Human: {QUESTIONS[i % len(QUESTIONS)]}' for i in range(args.pairs)]
  a = [ANSWERS[i % len(ANSWERS)][0] for i in range(args.pairs)]
  b = [ANSWERS[i % len(ANSWERS)][1] for i in range(args.pairs)]

  def ours(judge):
    out = []
    for i in range(0, args.pairs, args.batch):
      out.append(judge.pairwise(ctx[i:i + args.batch], a[i:i + args.batch], b[i:i + args.batch]).p_a_better)
    return np.concatenate(out)

  t_ours, p_ours = {}, {}
  for share, judge in judges.items():
    ours(judge)  # compile
    t = time.perf_counter()
    p_ours[share] = ours(judge)
    t_ours[share] = time.perf_counter() - t

  folder = tempfile.mkdtemp()
  hf_checkpoint.export_folder(nnx.state(model), model.cfg, folder, tok)
  ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  ids = [tok.convert_tokens_to_ids('1'), tok.convert_tokens_to_ids('2')]

  def theirs():
    p = []
    with torch.inference_mode():
      for c, x, y in zip(ctx, a, b):
        probs = []
        for first, second in ((x, y), (y, x)):
          req = j.encode(judge_requests.pairwise_request(j.cfg, c, first, second), j.cfg.answer_prefix)
          logits = ref(torch.tensor([req])).logits[0, -1]
          probs.append(torch.softmax(torch.log_softmax(logits, -1)[ids], -1))
        p.append(((probs[0][0] + probs[1][1]) / 2).item())
    return np.array(p)

  theirs()  # warm-up
  t = time.perf_counter()
  p_theirs = theirs()
  t_theirs = time.perf_counter() - t
  print(f'\nJudge labeling, SmolLM2-135M-Instruct, {args.pairs} pairs x 2 orders, float32, '
        f'{machine.describe()}')
  print(machine.matmul_rates())
  reqs = [j.encode(judge_requests.pairwise_request(j.cfg, c, x, y), j.cfg.answer_prefix)
          for c, x, y in zip(ctx[:args.batch], a, b) for x, y in ((x, y), (y, x))]
  print(f'requests of {min(map(len, reqs))}-{max(map(len, reqs))} tokens; shared beginning prefilled '
        f'once per batch: {j.shared_prefix(reqs)} tokens')
  print(f'{"implementation":<66}{"pairs/s":>9}{"ratio":>8}')
  for share, label in ((True, 'shared prefix once'), (False, 'whole requests')):
    print(f'{f"rlaif_jax Judge.pairwise (batch {args.batch}, jitted, {label})":<66}'
          f'{args.pairs / t_ours[share]:>9.2f}{t_theirs / t_ours[share]:>7.2f}x')
  print(f'{"transformers PyTorch, plain loop":<66}{args.pairs / t_theirs:>9.2f}{1:>7.2f}x')
  print(f'max |p difference|, PyTorch vs shared prefix / whole requests: '
        f'{np.abs(p_ours[True] - p_theirs).max():.2e} / {np.abs(p_ours[False] - p_theirs).max():.2e}')


if __name__ == '__main__':
  main()
