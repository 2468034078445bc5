"""Pod planning: every step compiled ahead of time for a TPU topology on this CPU (TPU compiler from
the `tpu` extra, no TPU), memory read back from XLA's memory_analysis()."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pod_plans
from rlaif_jax.plan import table as plan_table
from rlaif_jax.plan import stages as plan_stages
from rlaif_jax.plan import analysis as plan_analysis
from rlaif_jax.training import state as train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip('libtpu', reason="the TPU compiler: pip install -e '.[tpu]'")


def tiny(stages=('rl',), **mesh):
  c = pod_plans.get_config('tiny')
  c.stages = stages
  c.mesh.update({**dict(data=1, fsdp=1, tensor=1), **mesh})
  return c


def state_bytes(config) -> int:
  """Bytes of the PPO train state (policy + value model without an LM head, AdamW moments),
  unsharded."""
  common = dict(param_dtype=config.model.param_dtype, dtype=config.model.dtype)
  policy = plan_analysis.abstract_model(plan_analysis.model_config('', config.model.architecture, **common))
  value = plan_analysis.abstract_model(plan_analysis.model_config(  # a scalar-only model
      '', config.reward_model.architecture, scalar_head=True, lm_head=False, **common))
  optimizer = train_state.make_optimizer(1e-6, 10)
  state = jax.eval_shape(lambda: train_state.init_state({'policy': policy, 'value': value}, optimizer))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def update_step(p: plan_stages.Plan) -> plan_analysis.Step:
  (step,) = [s for s in p.steps if 'update' in s.name]
  return step


def test_ppo_update_state_is_split_across_the_slice_as_the_rules_say():
  config = tiny(fsdp=4)
  total = state_bytes(config)
  sharded = update_step(plan_stages.make_plan(config, 'v5e:2x2'))
  replicated = update_step(plan_stages.make_plan(tiny(data=4), 'v5e:2x2'))
  # FSDP: every parameter and both AdamW moments are split four ways (embed -> fsdp in the rules);
  # the rollout and the few replicated leaves (norm scales, the scalar head's bias) add a little
  assert total / 4 <= sharded.arguments < 1.1 * total / 4, (sharded.arguments, total)
  # data parallelism only: every chip holds the whole state
  assert total <= replicated.arguments < 1.05 * total, (replicated.arguments, total)
  assert sharded.aliased > 0.9 * total / 4  # the donated state is updated in place
  assert sharded.flops > 0 and sharded.temporaries > 0


def test_frozen_models_stored_in_bfloat16_halve_what_they_keep_on_the_chips():
  config = tiny(fsdp=4)
  full = update_step(plan_stages.make_plan(config, 'v5e:2x2'))
  config.model.frozen_param_dtype = 'bfloat16'
  half = update_step(plan_stages.make_plan(config, 'v5e:2x2'))
  # the reference policy and the reward model stay on the chips during the update; the train state
  # (float32 master parameters and AdamW moments) is the same either way
  np.testing.assert_allclose(half.resident, full.resident / 2, rtol=0.02)
  np.testing.assert_allclose(half.arguments, full.arguments, rtol=1e-6)


def test_every_stage_step_is_planned_with_numbers():
  p = plan_stages.make_plan(tiny(stages=('label', 'reward_model', 'rl'), fsdp=4), 'v5e:2x2', mfu=0.5)
  names = [(s.stage, s.name) for s in p.steps]
  for stage, name in [('label', 'rollout prefill'), ('label', 'rollout decode step'),
                      ('label', 'judge: preference of a pair'),
                      ('reward_model', 'reward-model train step'), ('rl', 'rollout prefill'),
                      ('rl', 'score: reference log-probs'), ('rl', 'score: reward model')]:
    assert (stage, name) in names, names
  # one minibatch, no micro-batches: the update's first step gives PPO's old values (no pass of
  # their own; see test_remat_and_micro_batches_lower_the_update_temporaries for the other case)
  assert ('rl', 'score: old values') not in names
  assert p.fits and p.chip.name == 'v5e' and p.mesh == {'data': 1, 'fsdp': 4, 'tensor': 1}
  decode = [s for s in p.steps if s.stage == 'rl' and s.name == 'rollout decode step'][0]
  assert decode.count == 31  # max_new_tokens - 1 steps after the prefill
  assert decode.aliased > 0  # the donated KV cache is written in place
  for s in p.steps:
    assert s.flops > 0 and s.total > s.resident >= 0 and s.seconds(p.chip, 0.5) > 0
  # the weights kept on the chips beside the update: reference policy + reward model
  policy_bytes, reward_bytes = p.models['policy'][1], p.models['reward model'][1]
  assert update_step(p).resident == policy_bytes + reward_bytes
  # beside the reference scoring the whole train state (policy and value model with their AdamW
  # moments: over 3x the policy) and the reward model stay
  ref = [s for s in p.steps if s.name == 'score: reference log-probs'][0]
  assert ref.resident >= 3 * policy_bytes + reward_bytes, (ref.resident, policy_bytes)
  text = plan_table.format_plan(p, tiny())
  assert 'Everything fits' in text and 'per RL iteration' in text


def test_remat_and_micro_batches_lower_the_update_temporaries():
  def update_temporaries(remat, micro_batches):
    config = tiny(fsdp=4)
    config.rl.batch_size, config.rl.prompt_length = 64, 128  # activations outweigh the gradients
    config.rl.sampling.max_new_tokens = 128
    config.model.remat, config.rl.micro_batches = remat, micro_batches
    # unrolled layers: under the layer scan, remat='full' saved only 20% here (60.4 vs 75.2 MB), an
    # open question of issue 17; micro-batching is checked either way
    config.model.scan_layers = False
    # the dense attention path, whose [B, K, G, T, S] scores remat drops (with splash, the TPU
    # target's default, the kernel keeps only its output and log-sum-exp: remat saved 29% here)
    config.model.attention = 'xla'
    p = plan_stages.make_plan(config, 'v5e:2x2')
    # with micro-batches the update runs a forward pass for PPO's old values before its steps
    assert ('score: old values' in [s.name for s in p.steps]) == (micro_batches > 1)
    step = update_step(p)
    return step.temporaries, step.flops
  (base, flops), (remat, remat_flops), (lean, _) = (
      update_temporaries('none', 1), update_temporaries('full', 1), update_temporaries('full', 4))
  assert remat < 0.7 * base, (remat, base)  # blocks keep only their inputs for the backward pass
  assert remat_flops > 1.2 * flops  # ... and recompute the rest
  assert lean < 0.7 * remat, (lean, remat)  # a quarter of the rows' activations at a time


def test_too_large_config_does_not_fit_and_exits_nonzero():
  # a 3M-token vocabulary makes the policy, value model and AdamW state ~40 GB; one chip each
  r = subprocess.run(
      [sys.executable, '-m', 'rlaif_jax.plan', '--config=configs/pod_plans.py:tiny',
       '--topology=v5e:2x2', '--config.mesh.data=-1', '--config.mesh.fsdp=1',
       "--config.stages=('rl',)", '--config.model.architecture.vocab_size=3000000',
       '--config.reward_model.architecture.vocab_size=3000000'],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 1, r.stdout + r.stderr
  assert 'DOES NOT FIT: rl / ppo update' in r.stdout, r.stdout
  assert '--config.mesh.fsdp=' in r.stdout  # what to change


def test_unknown_topology_is_a_clear_error():
  with pytest.raises(ValueError, match='v5e:2x2'):
    plan_stages.make_plan(tiny(), 'v9x:2x2')
  r = subprocess.run([sys.executable, '-m', 'rlaif_jax.plan', '--config=configs/pod_plans.py:tiny',
                      '--topology=v5e-16'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and 'rlaif_jax: error' in r.stderr, r.stderr


def test_scanned_and_unscanned_plans_count_the_same_flops():
  """XLA counts the layer scan's body once; the plan counts every loop as often as it runs
  (`plan/loops.py`), so both layouts give the same FLOPs, decode steps too, and the same
  verdicts."""
  plans = []
  for scan in (False, True):
    config = tiny(stages=('label', 'reward_model', 'rl'), fsdp=4)
    for arch in (config.model.architecture, config.judge.architecture,
                 config.reward_model.architecture):
      arch.num_hidden_layers = 4
    config.model.scan_layers = scan
    plans.append(plan_stages.make_plan(config, 'v5e:2x2'))
  loop, scanned = plans
  assert [s.name for s in loop.steps] == [s.name for s in scanned.steps]
  assert loop.fits == scanned.fits
  for a, b in zip(loop.steps, scanned.steps):
    np.testing.assert_allclose(b.flops, a.flops, rtol=0.01, err_msg=a.name)
  assert update_step(scanned).temporaries <= update_step(loop).temporaries



def test_loops_are_counted_as_often_as_they_run():
  """XLA's cost analysis counts a loop body once; `loops.loop_factors` counts it as often as it
  runs: a scan over 6 layers (forward, and forward + backward: two loops), and the scan nested in
  a 3-trip fori_loop, compiled for a TPU, against the same layers unrolled."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from rlaif_jax.plan import chips, loops
  devices, _ = chips.topology_devices('v5e:2x2')
  mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 2), ('data', 'model'))
  shardings = (NamedSharding(mesh, P(None, None, 'model')), NamedSharding(mesh, P('data')))
  args = (jax.ShapeDtypeStruct((6, 256, 256), jnp.float32), jax.ShapeDtypeStruct((64, 256), jnp.float32))

  def layer(h, w):
    return jnp.tanh(h @ w.astype(jnp.bfloat16)).astype(jnp.float32)

  def scanned(w, x):
    return jax.lax.scan(lambda h, wl: (layer(h, wl), None), x, w)[0].sum()

  def unrolled(w, x):
    for i in range(w.shape[0]):
      x = layer(x, w[i])
    return x.sum()

  def nested(w, x):
    return jax.lax.fori_loop(0, 3, lambda _, h: jax.lax.scan(
        lambda g, wl: (layer(g, wl), None), h, w)[0], x).sum()

  def cost(fn):
    with jax.set_mesh(mesh):
      compiled = jax.jit(fn, in_shardings=shardings).lower(*args).compile()
    own = plan_analysis._cost(compiled)
    factors = loops.loop_factors(compiled.as_text())
    return own, (own[0] * factors[0], own[1] * factors[1])

  (loop_own, loop), (_, flat), (_, thrice) = cost(scanned), cost(unrolled), cost(nested)
  assert loop_own[0] < flat[0] / 3  # XLA alone: one layer of six
  np.testing.assert_allclose(loop[0], flat[0], rtol=0.02)
  np.testing.assert_allclose(thrice[0], 3 * flat[0], rtol=0.02)
  assert thrice[1] > 1.5 * loop[1]  # bytes multiply too (the weights are read outside the loops)
  (grad_own, grad), (_, grad_flat) = cost(jax.grad(scanned)), cost(jax.grad(unrolled))
  assert grad_own[0] < grad_flat[0] / 3
  np.testing.assert_allclose(grad[0], grad_flat[0], rtol=0.02)
  # no loops: the factors are 1
  assert cost(unrolled)[0] == flat


def test_tpu_programs_are_traced_as_the_tpu_runs_them_on_a_bf16_dot_host(monkeypatch):
  """The planner runs on a CPU host: the model's CPU-only choices follow the traced program's
  platform (the mesh's devices), not the host's backend. On a host with AVX512-BF16 (faked here),
  a bfloat16 matmul traced for the CPU asks for a float32 result behind an optimization barrier
  (models/dots.py) and the sampler unstacks a scanned model's layers; traced for a TPU, neither."""
  from rlaif_jax.models import config as model_config
  from rlaif_jax.models import dots, loading, transformer
  from rlaif_jax.plan import chips
  monkeypatch.setattr(dots, 'cpu_has_bf16_dots', lambda: True)
  devices, _ = chips.topology_devices('v5e:2x2')
  axes = ('data', 'fsdp', 'tensor')
  tpu = jax.sharding.Mesh(np.array(devices).reshape(4, 1, 1), axes)
  cpu = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(4, 1, 1), axes)
  x, w = (jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((8, 64), (64, 64)))

  def matmul_program(mesh):
    with jax.set_mesh(mesh):
      return jax.jit(dots.matmul).lower(x, w).as_text()

  assert 'optimization_barrier' in matmul_program(cpu)
  assert 'optimization_barrier' not in matmul_program(tpu)
  cfg = model_config.ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
                                 num_heads=2, num_kv_heads=1, head_dim=8, scan_layers=True)
  model = loading.random_model(cfg, 0, cpu)
  with jax.set_mesh(tpu):
    assert transformer.for_decoding(model) is model  # one compiled block, scanned
  with jax.set_mesh(cpu):
    assert not transformer.for_decoding(model).cfg.scan_layers


def test_long_responses_plan_splash_attention_into_the_update_and_its_temporaries_shrink():
  """configs/pod_plans.py's long-response GRPO plan (tiny shapes, 512 + 2048 tokens): on the TPU
  target 'auto' compiles Pallas splash attention into the update, the prefill and the scoring; the
  dense path's [B, K, G, T, S] scores make the update's temporaries several times larger."""
  plans = {}
  for kernel in ('auto', 'xla'):
    config = pod_plans.get_config('tiny_grpo_long')
    config.mesh.update(data=1, fsdp=4, tensor=1)
    config.rl.batch_size, config.rl.samples_per_prompt = 2, 2  # a row per chip: compiles faster
    config.model.attention = kernel
    plans[kernel] = plan_stages.make_plan(config, 'v5e:2x2')
  fused, dense = update_step(plans['auto']), update_step(plans['xla'])
  assert 'grpo update' in fused.name and fused.pallas_calls > 0 and dense.pallas_calls == 0
  assert {s.name for s in plans['auto'].steps if s.pallas_calls} >= {
      'rollout prefill', 'score: reference log-probs', fused.name}
  # decoding keeps the dense path (one query row over the cache)
  assert not [s for s in plans['auto'].steps if 'decode' in s.name and s.pallas_calls]
  assert dense.temporaries > 3 * fused.temporaries, (dense.temporaries, fused.temporaries)
  config.model.attention = 'auto'
  text = plan_table.format_plan(plans['auto'], config)
  assert 'attention splash' in text and 'Pallas kernels' in text
