"""The plan as a table (per step: memory per device against HBM, FLOPs, time at peak, at an MFU and at
HBM bandwidth; per stage: time per unit) and what to change for every step that does not fit."""

from __future__ import annotations

import math

import ml_collections

from rlaif_jax.models import attention
from rlaif_jax.plan.chips import GiB, HEADROOM
from rlaif_jax.plan.stages import Plan
from rlaif_jax.plan.analysis import Step


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
                'further (fsdp) or store these frozen models in bfloat16: '
                '--config.model.frozen_param_dtype=bfloat16 --config.judge.param_dtype=bfloat16 '
                '(trained models keep float32 master parameters)')
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
           f'{config.model.remat}, {config.model.param_dtype} trained parameters, '
           f'{config.model.get("frozen_param_dtype") or config.model.param_dtype} frozen ones, '
           f'{config.model.dtype} compute, attention '
           f'{attention.resolve(config.model.get("attention", "auto"), "tpu")}',
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
  fused = [s.name for s in plan.steps if s.pallas_calls]
  if fused:  # Pallas calls carry no cost estimate: XLA's FLOP count leaves them out
    lines.append(f'Attention runs in Pallas kernels in {len(fused)} steps ({", ".join(fused)}); '
                 f'their FLOPs are not in the counts above (XLA counts no FLOPs in a kernel), so '
                 f'long-sequence steps take longer than their times say.')
  bad = [s for s in plan.steps if not s.fits(chip)]
  lines.append('')
  if not bad:
    lines.append(f'Everything fits (each step within {HEADROOM:.0%} of HBM).')
  for s in bad:
    why = f'compiler: {s.error}' if s.error else f'{_gib(s.total)} GiB > {_gib(HEADROOM * chip.hbm)} GiB'
    lines.append(f'DOES NOT FIT: {s.stage} / {s.name} ({why}). Try: {advice(s, plan, config)}')
  return '\n'.join(lines)
