"""The planner: plan a run on a TPU slice from a CPU-only machine, before paying for the slice.

Every jitted step the config's stages run is compiled ahead of time for a TPU topology from abstract
shapes (no weights are loaded or even read): rollout prefill and one decode step, the judge's
labeling pass, the reward-model train step, the reference and reward scoring passes, PPO's old-values
pass when the update runs one, and the RL update. For each step it reports, per device: argument,
output and temporary bytes from XLA's `memory_analysis()`, the weights of the other models that stay
on the chips during that stage, their total against the chip's HBM, FLOPs and HBM bytes from
`cost_analysis()` with every loop counted as often as it runs, and the time they take at the chip's
peak, at a stated MFU and at its HBM bandwidth; then what to change for every step that does not
fit.

  pip install -e '.[tpu]'      # the TPU compiler (libtpu); no TPU is needed
  python -m rlaif_jax.plan --config=configs/pod_plans.py:llama8b --topology=v5e:8x8 [--mfu=0.4] \
      [--config.mesh.fsdp=16 ...]

Exit status 1 when a step does not fit, 2 for a bad flag or config.

Modules: `chips` (the TPU chips' published figures and topologies), `analysis` (compiling one step and
reading its memory and cost), `loops` (counting its loops as often as they run), `stages` (the steps
of each stage, `make_plan`), `table` (the table and the advice), `__main__` (the command line).
"""
