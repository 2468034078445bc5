"""Sampling throughput: rlaif_jax's jitted KV-cache sampler vs transformers' PyTorch `generate`.

SmolLM2-135M-Instruct, same weights (ours exported to a HF folder), same shapes, greedy decoding
for both, exactly `new` tokens per row (no early stop), float32, this machine's CPU cores. Prints
new tokens/s, the ratio, the prefill share of our time, and the machine's roofline bound: the lower of
the memory-bound rate (weights + KV cache read once per decode step, at the measured bandwidth) and the
compute-bound rate (2 FLOPs per parameter per token plus attention, at the measured matmul rate).
Needs the test extra (torch):  bash launch/test.sh --co -q >/dev/null; python -m bench.sampling
"""

import argparse
import os

# One XLA CPU device per core, so the sharded row can split the batch across cores (data parallel).
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count={os.cpu_count()}')
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import machine
from rlaif_jax.generation import sampler
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading


def timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def best_of(fn, repeats):
  return min(machine.timings(fn, repeats))  # after a warm-up / compile call


def machine_rates():
  """(memory bandwidth bytes/s, float32 matmul FLOP/s at a large and at a decode shape)."""
  a = np.ones(64 << 20, np.float32)  # 256 MiB
  b = np.empty_like(a)
  t = best_of(lambda: np.copyto(b, a), 3)
  bandwidth = 2 * a.nbytes / t  # read + write
  rates = []
  for m, k, n in ((1024, 1024, 1024), (16, 576, 1536)):
    x, w = jnp.ones((m, k)), jnp.ones((k, n))
    f = jax.jit(lambda x, w: x @ w)
    reps = max(1, int(2e9 / (2 * m * k * n)))

    def many():
      for _ in range(reps):
        y = f(x, w)
      y.block_until_ready()

    rates.append(2 * m * k * n * reps / best_of(many, 3))
  return bandwidth, rates[0], rates[1]


def roofline(cfg, batch, prompt, new, bandwidth, flops, prefill_flops=None):
  """(bound, compute-bound, memory-bound) new tokens/s of a whole call: prefill + decode.

  Decode steps (new - 1 of them): the slower of compute (2 FLOPs per parameter per row plus attention
  at the decode-shape matmul rate `flops`) and memory (weights + KV cache read once per step at
  `bandwidth`). Prefill (batch x prompt tokens, no LM head but for the last position): its FLOPs at
  the large-matmul rate `prefill_flops`; a bound that leaves it out (prefill_flops=None, the decode
  steps alone) is no bound for a call that prefills, and was what this column showed before."""
  e, layers = cfg.hidden_size, cfg.num_layers
  per_layer = machine.layer_weights(cfg)
  head = cfg.vocab_size * e  # lm head (tied to the embedding)
  params = layers * per_layer + head
  mean_ctx = prompt + new / 2
  attn_flops = 4 * layers * mean_ctx * cfg.num_heads * cfg.head_dim
  kv_bytes = 2 * layers * batch * mean_ctx * cfg.num_kv_heads * cfg.head_dim * 4
  step_compute = batch * (2 * params + attn_flops) / flops
  step_memory = (4 * params + kv_bytes) / bandwidth
  steps = new if prefill_flops is None else new - 1
  t_compute, t_memory = steps * step_compute, steps * step_memory
  if prefill_flops is not None:
    prefill_attn = 4 * layers * (prompt / 2) * cfg.num_heads * cfg.head_dim  # per token, causal
    prefill = (batch * prompt * (2 * layers * per_layer + prefill_attn) + batch * 2 * head) / prefill_flops
    t_compute, t_memory = t_compute + prefill, t_memory + prefill
  compute_bound, memory_bound = batch * new / t_compute, batch * new / t_memory
  return min(compute_bound, memory_bound), compute_bound, memory_bound


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--shapes', default='16x128x128,64x128x64', help='batch x prompt x new, comma-separated')
  ap.add_argument('--repeats', type=int, default=4)
  ap.add_argument('--bfloat16', action='store_true',
                  help='extra rows: both sides with bfloat16 weights and compute (float32 rows kept)')
  args = ap.parse_args()
  import torch
  from transformers import LlamaForCausalLM
  torch.set_num_threads(os.cpu_count())

  model, tok = loading.load_model('smollm2')
  one = shd.make_mesh({'data': 1}, jax.devices()[:1])
  state = nnx.state(model)
  folder = tempfile.mkdtemp()
  hf_checkpoint.export_folder(state, model.cfg, folder, tok)
  ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  bandwidth, flops_big, flops_decode = machine_rates()
  rng = np.random.default_rng(0)
  rows = []
  for shape in args.shapes.split(','):
    b, p, n = (int(x) for x in shape.split('x'))
    prompt = rng.integers(3, model.cfg.vocab_size, (b, p)).astype(np.int32)
    valid = np.ones_like(prompt, bool)
    run = sampler.make_sampler(model, one, sampler.SamplingConfig(n, temperature=0.0))
    prefill = sampler.make_sampler(model, one, sampler.SamplingConfig(1, temperature=0.0))
    cores = shd.make_mesh({'data': -1})  # data parallel over the CPU devices (one per core)
    sharded_model = loading.place(model.cfg, hf_checkpoint.host_arrays(state), cores)
    sharded_state = nnx.state(sharded_model)
    run_dp = sampler.make_sampler(sharded_model, cores, sampler.SamplingConfig(n, temperature=0.0))
    scanned = loading.place(model.cfg.replace(scan_layers=True), hf_checkpoint.host_arrays(state), one)
    scanned_state = nnx.state(scanned)
    run_scan = sampler.make_sampler(scanned, one, sampler.SamplingConfig(n, temperature=0.0))
    key = jax.random.key(0)
    hf = hf_generate(ref, prompt, n, tok.pad_token_id)

    ours_fn = lambda: run(state, prompt, valid, key).tokens.block_until_ready()
    prefill_fn = lambda: prefill(state, prompt, valid, key).tokens.block_until_ready()
    dp_fn = lambda: run_dp(sharded_state, prompt, valid, key).tokens.block_until_ready()
    scan_fn = lambda: run_scan(scanned_state, prompt, valid, key).tokens.block_until_ready()
    np.testing.assert_array_equal(np.asarray(run(state, prompt, valid, key).tokens),
                                  np.asarray(run_scan(scanned_state, prompt, valid, key).tokens))
    ours_fn(), prefill_fn(), dp_fn(), scan_fn(), hf()  # warm-up and compile
    ours = theirs = ours_prefill = ours_dp = ours_scan = float('inf')
    for r in range(args.repeats):  # interleaved, best of each, so machine noise hits both alike
      if r % 2:  # loop and scanned in both orders (the one run second was up to 3% slower here)
        ours_scan = min(ours_scan, timed(scan_fn))
        ours = min(ours, timed(ours_fn))
      else:
        ours = min(ours, timed(ours_fn))
        ours_scan = min(ours_scan, timed(scan_fn))
      ours_dp = min(ours_dp, timed(dp_fn))
      ours_prefill = min(ours_prefill, timed(prefill_fn))
      theirs = min(theirs, timed(hf))
    bound, cb, mb = roofline(model.cfg, b, p, n, bandwidth, flops_decode, flops_big)
    decode_only = roofline(model.cfg, b, p, n, bandwidth, flops_decode)[0]
    rows.append((shape, b * n / ours, b * n / theirs, ours_prefill / ours, bound, cb, mb,
                 b * n / ours_dp, b * n / ours_scan, decode_only))

  print(f'\nSampling, SmolLM2-135M-Instruct, greedy, float32, {machine.describe()}, '
        f'jax {jax.__version__}, torch {torch.__version__}')
  print(machine.matmul_rates())
  print(machine.decode_floor(batch=int(args.shapes.split('x')[0])))
  print(machine.describe_ceiling(machine.cpu_ceiling()))
  print(f'machine: memory bandwidth {bandwidth / 1e9:.1f} GB/s; float32 matmul {flops_big / 1e9:.0f} '
        f'GFLOP/s (1024^3), {flops_decode / 1e9:.0f} GFLOP/s (decode shape 16x576x1536)')
  print(f'{"B x prompt x new":<18}{"rlaif_jax tok/s":>16}{"HF generate tok/s":>19}{"ratio":>8}'
        f'{"prefill share":>15}{"roofline tok/s":>16}{"of roofline":>13}'
        f'{"  rlaif_jax data=" + str(jax.device_count()):>20}{"ratio":>8}{"scanned tok/s":>15}'
        f'{"vs loop":>9}')
  for shape, ours, theirs, share, bound, cb, mb, dp, scan, _ in rows:
    print(f'{shape:<18}{ours:>16.0f}{theirs:>19.0f}{ours / theirs:>7.2f}x{share:>14.0%}'
          f'{bound:>16.0f}{ours / bound:>12.0%}{dp:>20.0f}{dp / theirs:>7.2f}x{scan:>15.0f}'
          f'{scan / ours:>8.2f}x')
  print(f'rlaif_jax: one XLA CPU device; "data={jax.device_count()}": the same sampler sharded over '
        f'{jax.device_count()} CPU devices (one per core), batch split data-parallel; "scanned": '
        f'model.scan_layers (one lax.scan over stacked layers, same tokens), one device.')
  if args.bfloat16:
    bfloat16_rows(args, model, tok, ref)
  print('roofline tok/s of the whole call (prefill at the 1024^3 rate, then the decode steps) = '
        'min(compute-bound, memory-bound): ' + '; '.join(f'{r[0]}: {r[5]:.0f} / {r[6]:.0f}' for r in rows))
  print('decode steps alone (no prefill; the column before issue 20, not a bound for a prefilling '
        'call): ' + '; '.join(f'{r[0]}: {r[9]:.0f} tok/s, {r[1] / r[9]:.0%} reached' for r in rows))


def hf_generate(ref, prompt, new, pad_id):
  """A call of transformers' greedy `generate` on the prompts [B, P]: exactly `new` tokens per row."""
  import torch
  tp = torch.tensor(prompt, dtype=torch.long)

  def hf():
    with torch.inference_mode():
      ref.generate(tp, attention_mask=torch.ones_like(tp), do_sample=False, max_new_tokens=new,
                   min_new_tokens=new, pad_token_id=pad_id, use_cache=True)
  return hf


def bfloat16_rows(args, model, tok, ref):
  """Both sides in bfloat16 (weights and compute), same shapes, interleaved, greedy: new tokens/s.
  Greedy tokens may differ from the float32 run's and between the two sides (bfloat16 rounding); both
  still produce exactly `new` tokens per row."""
  import torch
  from rlaif_jax.models import dots
  one = shd.make_mesh({'data': 1}, jax.devices()[:1])
  bf16 = loading.place(model.cfg.replace(dtype='bfloat16', param_dtype='bfloat16'),
                       hf_checkpoint.host_arrays(nnx.state(model)), one)
  state = nnx.state(bf16)
  ref = ref.to(torch.bfloat16)
  rng = np.random.default_rng(0)
  print(f'\nbfloat16 weights and compute on both sides (bfloat16 dots through the CPU\'s bfloat16 '
        f'kernels: {dots.wide_accumulation(jnp.bfloat16)}):')
  print(f'{"B x prompt x new":<18}{"rlaif_jax tok/s":>16}{"HF generate tok/s":>19}{"ratio":>8}')
  for shape in args.shapes.split(','):
    b, p, n = (int(x) for x in shape.split('x'))
    prompt = rng.integers(3, model.cfg.vocab_size, (b, p)).astype(np.int32)
    valid = np.ones_like(prompt, bool)
    run = sampler.make_sampler(bf16, one, sampler.SamplingConfig(n, temperature=0.0))
    key, hf = jax.random.key(0), hf_generate(ref, prompt, n, tok.pad_token_id)
    ours_fn = lambda: run(state, prompt, valid, key).tokens.block_until_ready()

    ours_fn(), hf()
    ours = theirs = float('inf')
    for _ in range(args.repeats):
      ours, theirs = min(ours, timed(ours_fn)), min(theirs, timed(hf))
    print(f'{shape:<18}{b * n / ours:>16.0f}{b * n / theirs:>19.0f}{theirs / ours:>7.2f}x')


if __name__ == '__main__':
  main()
