"""Infrastructure every layer may use: the device mesh and logical-axis sharding, Orbax checkpoints,
metrics files and progress lines, the multi-controller runtime, host allocator settings and how entry
points report user errors. It imports nothing else of rlaif_jax."""
