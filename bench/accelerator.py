"""Accelerator throughput: the sampler's and the GRPO update's tokens/s and MFU, bfloat16 compute, on
whatever backend JAX finds (a GPU, a TPU host, or this CPU with tiny shapes as a check).

Random weights of a published shape (nothing is downloaded), float32 parameters and bfloat16
matmuls as on a pod (`--dtype`, `--param-dtype`), one mesh over every local device (`--mesh`). The
sampler: `--batch` rows of `--prompt` random prompt tokens, `--group` samples per prompt sharing one
prefill (GRPO), exactly `--new` new tokens (no stop tokens, no early exit: a fixed amount of work).
The update: one GRPO step (k3 KL in the loss, token-mean loss, clip 0.2, AdamW) on the sampled
rollout. Each is compiled by one call, then timed over `--repeats` calls (the median).

MFU = model FLOPs / seconds / (devices x the chip's dense bfloat16 peak). Model FLOPs are counted
from the shapes (`model_flops`): 2 per matmul weight per token, the LM head only where logits are
taken, causal attention (4 x heads x head_dim per attended key), 3x the forward for the update's
forward and backward. "XLA GFLOP" is what the compiler counts in the program it runs (loops counted
as often as they run, `plan.loops`): above the model's when it computes more (remat, masked
attention over the whole cache, elementwise work), so model / XLA is the program's useful share.
The chip's peak comes from its device_kind (`PEAKS`, plan.CHIPS for TPUs) or `--peak-tflops`;
with neither (a CPU) MFU is left out.

  python -m bench.accelerator                                   # SmolLM2-135M shapes, 64 x 128+512
  python -m bench.accelerator --shapes llama1b --batch 64 --prompt 256 --new 1024
  python -m bench.accelerator --shapes tiny --batch 8 --prompt 16 --new 16 --repeats 1   # CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from bench import machine

# config.json of HuggingFaceTB/SmolLM2-135M-Instruct (the embedded default's shapes)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                    tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5)
# dense bfloat16 peak FLOP/s per device, by a substring of jax's device_kind (first match wins;
# published figures, without sparsity); TPUs come from plan.CHIPS
PEAKS = (('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('B200', 2250e12),
         ('A100', 312e12), ('L40S', 362e12), ('L4', 121e12), ('A10G', 70e12))


def shapes() -> dict[str, dict]:
  """config.json fields by name (Llama's family where they name none)."""
  from configs import pod_plans
  table = {'smollm2_135m': SMOLLM2_135M, **pod_plans.SIZES, 'qwen3_8b': pod_plans.QWEN3_8B}
  return {name: {'model_type': 'llama', **hf} for name, hf in table.items()}


def peak_flops(device_kind: str, given_tflops: float | None) -> float | None:
  """The device's dense bfloat16 FLOP/s: `given_tflops` if set, else by device_kind, else None."""
  if given_tflops:
    return given_tflops * 1e12
  from rlaif_jax.plan import chips
  if device_kind in chips.CHIPS:
    return chips.CHIPS[device_kind].peak_flops
  return next((peak for name, peak in PEAKS if name in device_kind), None)


def forward_flops(cfg, rows: int, context_from: int, tokens: int, logits: int) -> float:
  """Model FLOPs of a forward pass of `rows` rows over `tokens` new tokens each, the first of which
  attends `context_from + 1` keys (causal; a sliding layer at most its window), with LM-head logits
  for `logits` of them per row."""
  weights = machine.layer_weights(cfg)
  attended = context_from + 1 + np.arange(tokens)  # keys each new token attends
  attention = 0.0
  for kind in (cfg.layer_types or ('full',) * cfg.num_layers):
    keys = np.minimum(attended, cfg.sliding_window) if kind == 'sliding' else attended
    attention += 4 * cfg.num_heads * cfg.head_dim * float(keys.sum())
  return rows * (2 * cfg.num_layers * weights * tokens + attention
                 + 2 * cfg.hidden_size * cfg.vocab_size * logits)


def sampler_flops(cfg, batch: int, group: int, prompt: int, new: int) -> float:
  """The prefill of batch / group distinct prompts (logits at the last position) and new - 1 decode
  steps of every row (the prefill's logits give the first token)."""
  return (forward_flops(cfg, batch // group, 0, prompt, 1)
          + forward_flops(cfg, batch, prompt, new - 1, new - 1))


def update_flops(cfg, batch: int, prompt: int, new: int) -> float:
  """One GRPO step's forward (logits for the response's positions) and backward (2x the forward)."""
  return 3 * forward_flops(cfg, batch, 0, prompt + new, new)


def xla_flops(jitted, args, mesh) -> float | None:
  """FLOPs XLA counts in the compiled program of `jitted(*args)` over all devices (one device's
  share times their number: work a device repeats counts again), every loop as often as it runs
  (`plan.loops`); None where a loop's trip count cannot be read."""
  import jax

  from rlaif_jax.plan import loops
  with jax.set_mesh(mesh):
    compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  try:
    factor = loops.loop_factors(compiled.as_text())[0]
  except NotImplementedError:
    return None
  return float(cost.get('flops', 0.0)) * factor * mesh.devices.size


def sampler_xla_flops(model, mesh, settings, group: int, args) -> float | None:
  """XLA's FLOPs of the sampler as the planner counts them: its prefill program and max_new_tokens
  - 1 runs of its decode-step program (the decode loop stops on a traced condition, whose trip
  count the compiled program does not state)."""
  import jax
  from flax import nnx

  from rlaif_jax.generation import sampler
  from rlaif_jax.infra import sharding as shd
  from rlaif_jax.plan import analysis
  graphdef = nnx.graphdef(model)
  state_sh, batch, repl = shd.model_shardings(model, mesh)
  prefill = jax.jit(lambda st, t, v, k: sampler.prefill(nnx.merge(graphdef, st), t, v, k, settings,
                                                        group=group),
                    in_shardings=(state_sh, batch, batch, repl))
  with jax.set_mesh(mesh):
    decoding = jax.eval_shape(prefill, *args)
  step = jax.jit(lambda st, d: sampler.decode_step(nnx.merge(graphdef, st), d, settings),
                 in_shardings=(state_sh, analysis.decoding_shardings(decoding,
                                                                     model.cfg.logical_axis_rules,
                                                                     mesh)))
  first, each = xla_flops(prefill, args, mesh), xla_flops(step, (args[0], decoding), mesh)
  return None if first is None or each is None else first + (settings.max_new_tokens - 1) * each


def timed(call, repeats: int) -> tuple[float, object]:
  """(median seconds of `repeats` calls after one compiling call, the last result); `call(i)`
  returns arrays to wait for."""
  import jax
  jax.block_until_ready(call(0))
  seconds, out = [], None
  for i in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(call(i + 1))
    seconds.append(time.perf_counter() - t)
  return statistics.median(seconds), out


def run(args) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rlaif_jax.generation import sampler
  from rlaif_jax.infra import sharding as shd
  from rlaif_jax.models import families, loading
  from rlaif_jax.rl import config as rl_config
  from rlaif_jax.rl import update as update_lib
  from rlaif_jax.rl.rollout import Rollout
  from rlaif_jax.training import state as train_state
  table = shapes()
  if args.shapes not in table:
    raise SystemExit(f'Unknown --shapes {args.shapes!r}; known: {sorted(table)}.')
  cfg = families.config_from_hf(table[args.shapes], f'--shapes {args.shapes}', dtype=args.dtype,
                                param_dtype=args.param_dtype, remat=args.remat)
  b, p, n, g = args.batch, args.prompt, args.new, args.group
  mesh = shd.make_mesh({k: int(v) for k, v in (a.split('=') for a in args.mesh.split(','))})
  devices = mesh.devices.size
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind, args.peak_tflops)
  print(f'[accelerator] {args.shapes}: {cfg.num_layers} layers x {cfg.hidden_size}, {kind} x '
        f'{devices} ({jax.default_backend()}), compute {cfg.dtype}, parameters {cfg.param_dtype}, '
        f'mesh {dict(mesh.shape)}', flush=True)
  model = loading.random_model(cfg, 0, mesh)
  params = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(0)
  prompt = np.repeat(rng.integers(0, cfg.vocab_size, (b // g, p), dtype=np.int32), g, 0)
  valid = np.ones_like(prompt, bool)
  settings = sampler.SamplingConfig(n, temperature=1.0, early_exit=False)
  sample = sampler.make_sampler(model, mesh, settings, 0, g)
  key = jax.random.key(0)
  keys = jax.random.split(key, args.repeats + 1)
  sample_s, out = timed(lambda i: sample(params, prompt, valid, keys[i]), args.repeats)
  sample_xla = sampler_xla_flops(model, mesh, settings, g, (params, prompt, valid, key))

  rl = rl_config.RLConfig('grpo', samples_per_prompt=g, epochs=1, minibatches=1,
                          micro_batches=args.micro_batches, kl_in='loss', kl_estimator='k3',
                          kl_coef=0.04, loss_aggregation='token_mean', clip_eps=0.2)
  update = update_lib.make_update(model, train_state.make_optimizer(1e-6, 10), mesh, rl)
  scores = rng.standard_normal(b).astype(np.float32)
  rollout = Rollout(prompt, valid, out.tokens, out.mask, out.log_probs, out.log_probs, None, scores)
  state = [update.init()]
  update_xla = xla_flops(update.jitted, (state[0], rollout, jnp.float32(0.04), key), mesh)

  def step(i):
    state[0], metrics = update(state[0], rollout, 0.04, keys[i])
    return state[0].step, metrics

  update_s, _ = timed(step, args.repeats)
  rows = {'sampler': dict(tokens=b * n, seconds=sample_s, model_flops=sampler_flops(cfg, b, g, p, n),
                          xla_flops=sample_xla),
          'GRPO update': dict(tokens=b * (p + n), seconds=update_s,
                              model_flops=update_flops(cfg, b, p, n), xla_flops=update_xla)}
  for r in rows.values():
    r['tokens_per_s'] = r['tokens'] / r['seconds']
    r['mfu'] = r['model_flops'] / r['seconds'] / (devices * peak) if peak else None
  return dict(shapes=args.shapes, device_kind=kind, devices=devices, backend=jax.default_backend(),
              peak_flops=peak, batch=b, prompt=p, new=n, group=g, dtype=cfg.dtype,
              param_dtype=cfg.param_dtype, jax=jax.__version__, rows=rows)


def report(r: dict) -> None:
  where = (f'{r["device_kind"]} x {r["devices"]}' if r['backend'] != 'cpu'
           else f'{machine.describe()} ({r["devices"]} XLA devices)')
  peak = f'{r["peak_flops"] / 1e12:.0f} TFLOP/s a device' if r['peak_flops'] else 'no peak known'
  print(f'\n{r["shapes"]} shapes, random weights, compute {r["dtype"]}, parameters '
        f'{r["param_dtype"]}; {r["batch"]} rows ({r["batch"] // r["group"]} prompts x {r["group"]}) '
        f'x prompt {r["prompt"]} -> {r["new"]} new tokens; {where}, {peak}; jax {r["jax"]}')
  print(f'{"":<14}{"tokens":>9}{"seconds":>10}{"tokens/s":>11}{"model GFLOP":>13}'
        f'{"XLA GFLOP":>11}{"model/XLA":>11}{"MFU":>8}')
  for name, x in r['rows'].items():
    xla, mfu = x['xla_flops'], x['mfu']
    counted = (f'{xla / 1e9:>11.1f}{x["model_flops"] / xla:>11.2f}' if xla
               else f'{"n/a":>11}{"":>11}')
    print(f'{name:<14}{x["tokens"]:>9}{x["seconds"]:>10.3f}{x["tokens_per_s"]:>11.0f}'
          f'{x["model_flops"] / 1e9:>13.1f}{counted}'
          + (f'{mfu:>8.1%}' if mfu is not None else f'{"n/a":>8}'))
  print('tokens: the sampler\'s new tokens; the update\'s prompt + response tokens. MFU: model '
        'FLOPs / seconds / (devices x peak).')


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--shapes', default='smollm2_135m')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--group', type=int, default=4, help='samples per prompt (one prefill each)')
  ap.add_argument('--prompt', type=int, default=128)
  ap.add_argument('--new', type=int, default=512)
  ap.add_argument('--micro-batches', type=int, default=1)
  ap.add_argument('--dtype', default='bfloat16')
  ap.add_argument('--param-dtype', default='float32')
  ap.add_argument('--remat', default='none')
  ap.add_argument('--mesh', default='fsdp=-1', help='axis=size,...; -1: the remaining devices')
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--peak-tflops', type=float, help='the device\'s bfloat16 peak, if not known')
  ap.add_argument('--out', help='also write the results as JSON here')
  args = ap.parse_args(argv)
  results = run(args)
  report(results)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == '__main__':
  main(sys.argv[1:])
