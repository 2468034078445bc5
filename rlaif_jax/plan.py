"""Plan a run on a TPU slice from a CPU-only machine, before paying for the slice.

Every jitted step the config's stages run is compiled ahead of time for a TPU topology from abstract
shapes (no weights are loaded or even read): rollout prefill and one decode step, the judge's
labeling pass, the reward-model train step, the reference and reward scoring passes, PPO's old-values
pass when the update runs one, and the RL update. For each step it reports, per device: argument,
output and temporary bytes from XLA's `memory_analysis()`, the weights of the other models that stay
on the chips during that stage, their total against the chip's HBM, FLOPs from `cost_analysis()` and
the time they take at the chip's peak, at a stated MFU and at its HBM bandwidth; then what to change
for every step that does not fit.

  pip install -e '.[tpu]'      # the TPU compiler (libtpu); no TPU is needed
  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama8b --topology=v5e:8x8 [--mfu=0.4] \
      [--config.mesh.fsdp=16 ...]

Exit status 1 when a step does not fit, 2 for a bad flag or config.
"""

from __future__ import annotations

import os

os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')  # no TPU metadata server here: we only compile
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the topology is a compile target, never a device
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # compiling only: no chips to lock

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

from rlaif_jax import checkpoint_gguf, checkpoint_hf, judge as judge_lib, pretrained  # noqa: E402
from rlaif_jax import reward_model as rm  # noqa: E402
from rlaif_jax import rl, rl_loop, sampling, train  # noqa: E402
from rlaif_jax import model as model_lib  # noqa: E402
from rlaif_jax import sharding as shd  # noqa: E402

GiB = 1024 ** 3
S = jax.ShapeDtypeStruct


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures: HBM bytes, dense bfloat16 FLOP/s, HBM bytes/s."""
  name: str
  hbm: float
  peak_flops: float
  bandwidth: float


CHIPS = {  # keyed by jax's device_kind
    'TPU v5 lite': Chip('v5e', 16 * GiB, 197e12, 819e9),
    'TPU v5': Chip('v5p', 95 * GiB, 459e12, 2765e9),
    'TPU v6 lite': Chip('v6e', 32 * GiB, 918e12, 1640e9),
}
HEADROOM = 0.9  # a step fits when its total is at most this share of HBM (the runtime needs some)


def topology_devices(topology: str) -> tuple[list[Any], Chip]:
  """The devices of a TPU topology such as 'v5e:4x4' or 'v5p:2x4x4', compiled for, never run."""
  from jax.experimental import topologies
  try:
    devices = list(topologies.get_topology_desc(topology, 'tpu').devices)
  except Exception as e:  # noqa: BLE001 -- libtpu missing or a malformed name; say which
    raise ValueError(f'Cannot describe TPU topology {topology!r} ({str(e).splitlines()[0][:200]}). '
                     f"Names look like v5e:2x2, v5e:8x8, v5p:2x4x4, v6e:4x4; the TPU compiler comes "
                     f"with pip install -e '.[tpu]'.") from None
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f'No chip figures for {kind!r}; known: {sorted(CHIPS)} (add it to plan.CHIPS).')
  return devices, CHIPS[kind]


def model_config(source: str, architecture: Any, **overrides) -> model_lib.ModelConfig:
  """The architecture only: from config.*.architecture (Hugging Face config.json fields) when set,
  else from the source's config.json or GGUF header. No weights are read."""
  if architecture:
    arch = architecture.to_dict() if hasattr(architecture, 'to_dict') else dict(architecture)
    hf = {'model_type': 'llama', **arch}
    return checkpoint_hf.config_from_hf(hf, 'config.model.architecture', **overrides)
  if source == pretrained.DEFAULT_MODEL:
    source = checkpoint_gguf.smollm2_path()
  if source.endswith('.gguf'):
    return checkpoint_gguf.load_gguf(source, **overrides)[0]
  if os.path.isdir(source):
    with open(os.path.join(source, 'config.json')) as f:
      return checkpoint_hf.config_from_hf(json.load(f), source, **overrides)
  raise FileNotFoundError(f'Model source {source!r} is not {pretrained.DEFAULT_MODEL!r}, a .gguf file '
                          f'or a Hugging Face folder; to plan without it set its architecture '
                          f'(config.model.architecture = config.json fields).')


def abstract_model(cfg: model_lib.ModelConfig) -> model_lib.Transformer:
  """The model with ShapeDtypeStruct leaves: shapes and dtypes only, nothing allocated."""
  return nnx.eval_shape(lambda: model_lib.Transformer(cfg, nnx.Rngs(0)))


def device_bytes(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of an abstract pytree laid out by `shardings` (the largest shard)."""
  total = 0
  for x, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))):
    shard = sh.shard_shape(x.shape) if x.shape else ()
    total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
  return total


def params_bytes(model: model_lib.Transformer, mesh: jax.sharding.Mesh) -> int:
  state = nnx.state(model, nnx.Param)
  return device_bytes(state, shd.state_shardings(state, mesh, model.cfg.logical_axis_rules))


@dataclasses.dataclass
class Step:
  """One compiled step: per-device bytes, FLOPs and HBM traffic, how often an iteration runs it."""
  stage: str
  name: str
  count: int  # runs per unit of its stage (an RL iteration, a label batch, a reward-model step)
  resident: int  # bytes per device of other models' weights kept on the chips meanwhile
  arguments: int = 0
  outputs: int = 0
  aliased: int = 0
  temporaries: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  error: str = ''  # the compiler's refusal (usually: out of HBM), when it refused

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.resident

  def fits(self, chip: Chip) -> bool:
    return not self.error and self.total <= HEADROOM * chip.hbm

  def seconds(self, chip: Chip, mfu: float) -> float:
    """Estimated time: compute at the given MFU or HBM traffic at full bandwidth, the slower."""
    return max(self.flops / (chip.peak_flops * mfu), self.bytes_accessed / chip.bandwidth)


def compile_step(step: Step, fn: Callable, args: Sequence[Any], mesh: jax.sharding.Mesh,
                 cost: Callable[[], tuple[float, float]] | None = None) -> Step:
  """Lower and compile `fn` (a jax.jit with in_shardings) on abstract args; fill in the numbers.

  XLA's cost analysis does not multiply a loop body by its trip count, so a step that loops (the RL
  update's epochs and minibatches, gradient accumulation) takes its (FLOPs, HBM bytes) from `cost`
  instead (see `loop_free_cost`)."""
  t0 = time.time()
  try:
    with jax.set_mesh(mesh):
      compiled = fn.lower(*args).compile()
  except Exception as e:  # noqa: BLE001 -- the TPU compiler refuses programs that exceed HBM
    msg = str(e)
    if 'RESOURCE_EXHAUSTED' not in msg and 'memory' not in msg.lower():
      raise
    step.error = ' '.join(msg.split())[:300]
    print(f'[plan] {step.stage} / {step.name}: does not compile ({time.time() - t0:.0f} s)', flush=True)
    return step
  print(f'[plan] {step.stage} / {step.name}: compiled in {time.time() - t0:.0f} s', flush=True)
  mem = compiled.memory_analysis()
  step.arguments, step.outputs = mem.argument_size_in_bytes, mem.output_size_in_bytes
  step.aliased, step.temporaries = mem.alias_size_in_bytes, mem.temp_size_in_bytes
  step.flops, step.bytes_accessed = cost() if cost is not None else _cost(compiled)
  return step


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))


def loop_free_cost(make: Callable[[int], tuple[Callable, Sequence[Any]]], layers: int, times: int,
                   mesh: jax.sharding.Mesh) -> Callable[[], tuple[float, float]]:
  """(FLOPs, HBM bytes) of `times` loop-free passes of a step, from the step built by `make(n)` for
  models of n = 1 and 2 layers (every layer costs the same, so cost(L) = cost(1) + (L - 1) x the
  difference): two small compiles instead of a second one of the whole model."""
  def run():
    built = [make(1), make(2)]
    with jax.set_mesh(mesh):
      one, two = (_cost(f.lower(*a).compile()) for f, a in built)
    return tuple(times * (c1 + (layers - 1) * (c2 - c1)) for c1, c2 in zip(one, two))
  return run


def decoding_shardings(d: sampling.Decoding, rules, mesh: jax.sharding.Mesh) -> sampling.Decoding:
  """The sampler's loop state laid out as inside `sampling.sample`: rows over the batch axes, the
  KV cache also over key/value heads."""
  def named(axes, x):
    spec = shd.logical_to_spec(axes[:len(x.shape)], rules, x.shape, mesh, strict=False)
    return jax.sharding.NamedSharding(mesh, spec)
  rows = lambda x: named(('batch', None, None), x)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  cache = d.cache._replace(k=tuple(named(('batch', 'act_kv_heads', None, 'length'), x) for x in d.cache.k),
                           v=tuple(named(('batch', 'act_kv_heads', 'length', None), x) for x in d.cache.v),
                           index=repl)
  return d._replace(i=repl, cache=cache, key=repl, key_valid=rows(d.key_valid), done=rows(d.done),
                    token=rows(d.token), pos=rows(d.pos), tokens=rows(d.tokens),
                    log_probs=rows(d.log_probs), mask=rows(d.mask))


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: S(x.shape, x.dtype), tree)


def _key() -> Any:
  return jax.eval_shape(lambda: jax.random.key(0))


@dataclasses.dataclass
class Plan:
  topology: str
  chip: Chip
  mesh: dict[str, int]
  mfu: float
  steps: list[Step]
  models: dict[str, tuple[float, int]]  # name -> (billions of parameters, bytes per device)

  @property
  def fits(self) -> bool:
    return all(s.fits(self.chip) for s in self.steps)


def make_plan(config: ml_collections.ConfigDict, topology: str, mfu: float = 0.4) -> Plan:
  """Compile every step of config.stages for `topology`; see the module docstring."""
  if not 0 < mfu <= 1:
    raise ValueError(f'--mfu must be in (0, 1], got {mfu}.')
  devices, chip = topology_devices(topology)
  mesh = shd.make_mesh(dict(config.mesh), devices)
  rules = shd.rules_from_config(config.logical_axis_rules)
  m = config.model
  common = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, logical_axis_rules=rules)
  stages = set(config.stages)
  rl_cfg = rl.RLConfig(**{f.name: config.rl[f.name] for f in dataclasses.fields(rl.RLConfig)})
  shared_head = rl_cfg.algorithm == 'ppo' and rl_cfg.value_model == 'shared'

  policy_cfg = model_config(m.source, m.architecture, **common)
  policy = abstract_model(policy_cfg.replace(scalar_head=shared_head))
  judge = abstract_model(model_config(config.judge.source or m.source,
                                      config.judge.get('architecture') or
                                      (None if config.judge.source else m.architecture), **common))
  rm_arch = config.reward_model.get('architecture') or (
      None if config.reward_model.source else m.architecture)
  reward = abstract_model(model_config(config.reward_model.source or m.source, rm_arch,
                                       scalar_head=True, **common))
  models = {name: (sum(x.size for x in jax.tree.leaves(nnx.state(mod, nnx.Param))) / 1e9,
                   params_bytes(mod, mesh))
            for name, mod in (('policy', policy), ('judge', judge), ('reward model', reward))}
  w_policy, w_judge, w_reward = (models[k][1] for k in ('policy', 'judge', 'reward model'))
  steps: list[Step] = []

  def sampler_steps(stage: str, rows: int, settings: ml_collections.ConfigDict, resident: int):
    cfg = sampling.SamplingConfig(settings.max_new_tokens, temperature=settings.temperature or 1.0)
    state_sh, batch, repl = sampling.model_shardings(policy, mesh)
    graphdef = nnx.graphdef(policy)
    state = _abstract(nnx.state(policy))
    prompt = (S((rows, config.rl.prompt_length), jnp.int32), S((rows, config.rl.prompt_length), bool))
    prefill = jax.jit(lambda st, p, v, k: sampling.prefill(nnx.merge(graphdef, st), p, v, k, cfg),
                      in_shardings=(state_sh, batch, batch, repl))
    steps.append(compile_step(Step(stage, 'rollout prefill', 1, resident), prefill,
                              (state, *prompt, _key()), mesh))
    decoding = jax.eval_shape(prefill, state, *prompt, _key())
    decode = jax.jit(lambda st, d: sampling.decode_step(nnx.merge(graphdef, st), d, cfg),
                     in_shardings=(state_sh, decoding_shardings(decoding, rules, mesh)),
                     donate_argnums=(1,))
    steps.append(compile_step(Step(stage, 'rollout decode step', cfg.max_new_tokens - 1, resident),
                              decode, (state, decoding), mesh))

  if 'label' in stages:
    c = config.label
    rows = 2 * c.batch_size  # two responses per prompt
    sampler_steps('label', rows, c.sampling, w_judge)
    j = config.judge
    length = sampling.bucket_length(j.max_context_tokens + 2 * j.max_response_tokens + 256,
                                    judge_lib.JudgeConfig.prompt_buckets)
    rows = c.batch_size * (2 if j.debias else 1)  # both orders
    fn = judge_lib.jit_option_log_probs(judge, mesh).jitted
    steps.append(compile_step(
        Step('label', 'judge: preference of a pair', 1, w_policy), fn,
        (_abstract(nnx.state(judge)), S((rows, length), jnp.int32), S((rows, length), bool),
         S((2, 1), jnp.int32), S((2, 1), bool)), mesh))

  if 'reward_model' in stages:
    c = config.reward_model
    optimizer = train.make_optimizer(c.learning_rate, c.steps, c.warmup_steps)
    step = rm.make_train_step(reward, optimizer, mesh, c.micro_batches)
    pair = (S((c.batch_size, c.max_length), jnp.int32), S((c.batch_size, c.max_length), bool))
    batch = rm.Batch(*pair, *pair, S((c.batch_size,), jnp.float32))
    def whole(layers: int):  # no accumulation loop, for the cost
      small = abstract_model(reward.cfg.replace(num_layers=layers))
      one = rm.make_train_step(small, optimizer, mesh)
      return one.jitted, (jax.eval_shape(one.init), batch)
    steps.append(compile_step(
        Step('reward_model', 'reward-model train step', 1, 0), step.jitted,
        (jax.eval_shape(step.init), batch), mesh,
        loop_free_cost(whole, reward.cfg.num_layers, 1, mesh) if c.micro_batches > 1 else None))

  if 'rl' in stages:
    c = config.rl
    rows = c.batch_size * c.samples_per_prompt
    value = abstract_model(reward.cfg) if rl_cfg.value_model == 'separate' else None
    optimizer = train.make_optimizer(c.learning_rate, c.iterations, c.warmup_steps)
    update = rl.make_update(policy, optimizer, mesh, rl_cfg, c.sampling.temperature or 1.0, value)
    state = jax.eval_shape(update.init)
    w_state = device_bytes(state, train.train_state_shardings(
        {'policy': policy, **({'value': value} if value is not None else {})}, optimizer, mesh))
    scorer_weights = w_reward if rl_cfg.reward == 'reward_model' else w_judge
    others = w_policy + scorer_weights  # the reference and the reward source stay on the chips
    sampler_steps('rl', rows, c.sampling, w_state - w_policy + others)
    n = c.sampling.max_new_tokens
    response = (S((rows, c.prompt_length), jnp.int32), S((rows, c.prompt_length), bool),
                S((rows, n), jnp.int32), S((rows, n), bool))
    score = sampling.make_scorer(policy, mesh).jitted
    steps.append(compile_step(Step('rl', 'score: reference log-probs', 1, w_state + scorer_weights),
                              score, (_abstract(nnx.state(policy)), *response), mesh))
    if rl_cfg.algorithm == 'ppo' and not rl.values_from_first_step(rl_cfg):
      # the update's own forward pass for the old values (with one minibatch and no micro-batches
      # its first step gives them, at no cost)
      critic = value if value is not None else policy
      fn = sampling.jit_response_fn(critic, mesh, rl.token_values).jitted
      steps.append(compile_step(
          Step('rl', 'score: old values', 1, w_state - params_bytes(critic, mesh) + others),
          fn, (_abstract(nnx.state(critic)), *response), mesh))
    if rl_cfg.reward == 'reward_model':
      fn = rl_loop.reward_model_scorer(reward, None, mesh, rm.RewardStats(0.0, 1.0)).jitted
      steps.append(compile_step(Step('rl', 'score: reward model', 1, w_state + w_policy), fn,
                                (_abstract(nnx.state(reward)), *response), mesh))
    else:  # d-RLAIF: the judge's 1-10 answer after each prompt + response
      length = c.prompt_length + n + 128
      fn = judge_lib.jit_option_log_probs(judge, mesh).jitted
      steps.append(compile_step(
          Step('rl', 'score: judge (d-RLAIF)', 1, w_state + w_policy), fn,
          (_abstract(nnx.state(judge)), S((rows, length), jnp.int32), S((rows, length), bool),
           S((10, 3), jnp.int32), S((10, 3), bool)), mesh))
    # as the RL loop passes it: PPO's old values are left to the update
    rollout = rl.Rollout(*response, *(S((rows, n), jnp.float32),) * 2, None, S((rows,), jnp.float32))
    args = (state, rollout, S((), jnp.float32), _key())

    def one_pass(layers: int):  # one pass over the whole rollout, no loop, for the cost
      small = lambda mod: mod and abstract_model(mod.cfg.replace(num_layers=layers))
      u = rl.make_update(small(policy), optimizer, mesh, dataclasses.replace(
          rl_cfg, epochs=1, minibatches=1, micro_batches=1), c.sampling.temperature or 1.0,
          small(value))
      return u.jitted, (jax.eval_shape(u.init), *args[1:])
    steps.append(compile_step(
        Step('rl', f'{rl_cfg.algorithm} update ({rl_cfg.epochs} epochs x {rl_cfg.minibatches} '
             f'minibatches{f" x {rl_cfg.micro_batches} micro" if rl_cfg.micro_batches > 1 else ""})',
             1, others), update.jitted, args, mesh,
        loop_free_cost(one_pass, policy.cfg.num_layers, rl_cfg.epochs, mesh)))

  return Plan(topology, chip, dict(mesh.shape), mfu, steps, models)


def advice(step: Step, plan: Plan, config: ml_collections.ConfigDict) -> str:
  """What to change so that a step fits, from which part of its memory is largest."""
  mesh, tips = plan.mesh, []
  budget = HEADROOM * plan.chip.hbm
  weights = step.arguments + step.resident
  if step.error or weights > 0.5 * budget:
    chips = math.prod(mesh.values())
    need = mesh['fsdp'] * max(2, math.ceil(weights / (0.5 * budget))) if weights else 2 * mesh['fsdp']
    fsdp = next((n for n in range(need, chips + 1) if chips % n == 0), None)
    if fsdp is None:
      tips.append(f'a larger slice: the weights and optimizer state need about '
                  f'{max(chips, need) * (mesh["tensor"] or 1)} chips of this kind with FSDP over all of them')
    elif fsdp > mesh['fsdp']:
      tips.append(f'more FSDP (parameters and optimizer state split further): --config.mesh.fsdp='
                  f'{fsdp} --config.mesh.data=-1')
    tips.append('tensor parallelism: --config.mesh.tensor=T (T must divide the key/value heads)')
  if step.temporaries > 0.3 * budget or step.error:
    if 'update' in step.name or 'train step' in step.name:
      key = 'rl' if step.stage == 'rl' else 'reward_model'
      if config.model.remat != 'full':
        tips.append(f"rematerialization: --config.model.remat="
                    f"{'dots' if config.model.remat == 'none' else 'full'}")
      tips.append(f'smaller micro-batches: --config.{key}.micro_batches='
                  f'{2 * config[key].micro_batches}')
    else:
      if mesh['tensor'] == 1 and mesh['fsdp'] > 1:  # FSDP gathers whole layers for every pass
        tips.append(f'tensor parallelism for sampling and scoring: --config.mesh.tensor=T '
                    f'--config.mesh.fsdp={mesh["fsdp"]}/T (each pass then gathers 1/T of the '
                    f'weights that FSDP alone gathers; T must divide the key/value heads)')
      tips.append(f'a smaller batch for this step: --config.{step.stage}.batch_size')
  if step.resident > 0.3 * budget:
    tips.append('the reference / reward / judge weights kept on the chips are large: shard them '
                'further (fsdp) or use param_dtype=bfloat16')
  return '; '.join(dict.fromkeys(tips)) or 'more devices'


def _gib(n: float) -> str:
  return f'{n / GiB:.2f}'


def _seconds(t: float) -> str:
  return f'{t * 1e3:.1f} ms' if t < 1 else f'{t:.2f} s'


def format_plan(plan: Plan, config: ml_collections.ConfigDict) -> str:
  chip, mfu = plan.chip, plan.mfu
  mesh = ', '.join(f'{k}={v}' for k, v in plan.mesh.items())
  lines = [f'Plan for {plan.topology}: {math.prod(plan.mesh.values())} x {chip.name} '
           f'({chip.hbm / GiB:.0f} GiB HBM, {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, '
           f'{chip.bandwidth / 1e9:.0f} GB/s each), mesh {mesh}, MFU {mfu:.0%}, remat '
           f'{config.model.remat}, {config.model.param_dtype} parameters, {config.model.dtype} compute',
           'models: ' + ', '.join(f'{k} {b:.2f}B params ({_gib(d)} GiB/device)'
                                  for k, (b, d) in plan.models.items()), '']
  head = ('stage', 'step', 'x', 'args GiB', 'out GiB', 'temp GiB', 'other models GiB',
          'total GiB', 'HBM', 'fits', 'GFLOP', 'peak', f'MFU {mfu:.0%}', 'HBM-bound')
  rows = []
  for s in plan.steps:
    if s.error:
      rows.append((s.stage, s.name, str(s.count), '-', '-', '-', _gib(s.resident), '-', '> 100%',
                   'NO', '-', '-', '-', '-'))
      continue
    rows.append((s.stage, s.name, str(s.count), _gib(s.arguments), _gib(s.outputs - s.aliased),
                 _gib(s.temporaries), _gib(s.resident), _gib(s.total), f'{s.total / chip.hbm:.0%}',
                 'yes' if s.fits(chip) else 'NO', f'{s.flops / 1e9:.1f}',
                 _seconds(s.flops / chip.peak_flops), _seconds(s.flops / (chip.peak_flops * mfu)),
                 _seconds(s.bytes_accessed / chip.bandwidth)))
  lines.append('| ' + ' | '.join(head) + ' |')
  lines.append('|' + '---|' * len(head))
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  lines.append('')
  units = {'label': 'per labeled batch', 'reward_model': 'per train step', 'rl': 'per RL iteration'}
  for stage, unit in units.items():
    mine = [s for s in plan.steps if s.stage == stage and not s.error]
    if mine:
      t = sum(s.count * s.seconds(chip, mfu) for s in mine)
      lines.append(f'{stage}: about {_seconds(t)} {unit} (each step at {mfu:.0%} MFU or at HBM '
                   f'bandwidth, whichever is slower)')
  bad = [s for s in plan.steps if not s.fits(chip)]
  lines.append('')
  if not bad:
    lines.append(f'Everything fits (each step within {HEADROOM:.0%} of HBM).')
  for s in bad:
    why = f'compiler: {s.error}' if s.error else f'{_gib(s.total)} GiB > {_gib(HEADROOM * chip.hbm)} GiB'
    lines.append(f'DOES NOT FIT: {s.stage} / {s.name} ({why}). Try: {advice(s, plan, config)}')
  return '\n'.join(lines)


def main(argv):  # pragma: no cover -- exercised through the command line in tests
  from absl import flags
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  plan = make_plan(config, flags.FLAGS.topology, flags.FLAGS.mfu)
  print(format_plan(plan, config), flush=True)
  sys.exit(0 if plan.fits else 1)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags

  from rlaif_jax import errors
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:args]).',
                                  lock_config=True)
  flags.DEFINE_string('topology', None, 'TPU topology, e.g. v5e:8x8, v5p:2x4x4, v6e:4x4.')
  flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation assumed for the time estimates.')
  flags.mark_flags_as_required(['config', 'topology'])
  errors.run_reporting_user_errors(lambda: app.run(main))
