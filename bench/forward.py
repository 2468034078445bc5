"""Forward-pass throughput: rlaif_jax vs transformers' PyTorch Llama on SmolLM2-135M-Instruct.

Same weights (ours exported to a Hugging Face folder and loaded by transformers), same batch of
8 x 256 tokens, float32 on this machine's CPU. Extra rows, never replacing the float32 ones: both
models in bfloat16 (weights and compute; PyTorch's bfloat16 matmuls use the CPU's bfloat16 or AMX
instructions where it has them), and ours with its bfloat16 dots asked the plain way (what
`rlaif_jax.models.dots` replaces on such CPUs), for a before/after in the same run.
Needs the test extra (torch):  bash launch/test.sh --co -q >/dev/null; python -m bench.forward
"""

import argparse
import os
import statistics
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench import machine
from rlaif_jax.models import dots
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib


def timed(fn, repeats):
  return statistics.median(machine.timings(fn, repeats))  # after a warm-up (compilation for JAX)


def forward_flops(cfg, batch: int, length: int) -> float:
  """FLOPs of one forward pass with logits at every position, as both sides compute it: 2 per
  weight per token in the blocks and the LM head, plus q.k and p.v over the causal half."""
  attention = 4 * cfg.num_heads * cfg.head_dim * (length + 1) / 2
  return batch * length * (cfg.num_layers * (2 * machine.layer_weights(cfg) + attention)
                           + 2 * cfg.vocab_size * cfg.hidden_size)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--length', type=int, default=256)
  ap.add_argument('--repeats', type=int, default=5)
  args = ap.parse_args()
  import torch
  from transformers import LlamaForCausalLM
  torch.set_num_threads(os.cpu_count())

  model, tok = loading.load_model('smollm2')
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, model.cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
  valid = np.ones_like(tokens, bool)
  n_tokens = tokens.size
  rows = []

  def ours(m):
    graphdef, state = nnx.split(m)
    f = jax.jit(lambda s, t, v: model_lib.forward(nnx.merge(graphdef, s), t, v).logits)
    t, v = jnp.asarray(tokens), jnp.asarray(valid)
    return lambda: f(state, t, v).block_until_ready()

  rows.append(('rlaif_jax (jax.jit)', 'float32', timed(ours(model), args.repeats)))
  with tempfile.TemporaryDirectory() as folder:
    hf_checkpoint.export_folder(nnx.state(model), model.cfg, folder, tok)
    ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  tt = torch.tensor(tokens, dtype=torch.long)

  def torch_fwd():
    with torch.inference_mode():
      ref(input_ids=tt, use_cache=False).logits

  rows.append(('transformers PyTorch (sdpa)', 'float32', timed(torch_fwd, args.repeats)))
  bf16, _ = loading.load_model('smollm2', dtype='bfloat16', param_dtype='bfloat16')
  rows.append(('rlaif_jax (jax.jit)', 'bfloat16', timed(ours(bf16), args.repeats)))
  wide = dots.wide_accumulation
  dots.wide_accumulation = lambda dtype: False  # the plain bfloat16 dot, as before rlaif_jax.models.dots
  rows.append(('rlaif_jax, plain bf16 dots', 'bfloat16', timed(ours(bf16), args.repeats)))
  dots.wide_accumulation = wide
  ref = ref.to(torch.bfloat16)
  rows.append(('transformers PyTorch (sdpa)', 'bfloat16', timed(torch_fwd, args.repeats)))

  base = {dtype: sec for name, dtype, sec in rows if name.startswith('transformers')}
  print(f'\nForward pass, SmolLM2-135M-Instruct, batch {args.batch} x {args.length} tokens, '
        f'{machine.describe()}, jax {jax.__version__}, torch {torch.__version__}')
  print(machine.matmul_rates())
  ceiling = machine.cpu_ceiling()
  print(machine.describe_ceiling(ceiling))
  flops = forward_flops(model.cfg, args.batch, args.length)
  rates = {name: flops / sec / 1e9 for name, dtype, sec in rows if dtype == 'float32'}
  needed = 1.5 * flops / base['float32'] / 1e9
  print(f'float32 work: {flops / 1e9:.0f} GFLOP a forward; rates reached, ' +
        ', '.join(f'{name} {rate:.0f}' for name, rate in rates.items()) +
        f' GFLOP/s; 1.5x PyTorch needs {needed:.0f} GFLOP/s sustained' +
        (f' ({needed / ceiling[0]:.0%} of the FMA peak)' if ceiling else ''))
  print(f'bfloat16 dots through the CPU\'s bfloat16 kernels: {dots.wide_accumulation(jnp.bfloat16)}')
  print(f'{"implementation":<30}{"dtype":<14}{"seconds":>9}{"tokens/s":>11}'
        f'{"vs torch, same dtype":>22}')
  for name, dtype, sec in rows:
    print(f'{name:<30}{dtype:<14}{sec:>9.3f}{n_tokens / sec:>11.0f}{base[dtype] / sec:>21.2f}x')


if __name__ == '__main__':
  main()
