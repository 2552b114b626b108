"""What a user runs before a job: the per-device memory plan of a config on a target machine
(`python -m mobilebert_jax.plan.memory`), the parameter and optimizer-state layout under the
default sharding rules (`python -m mobilebert_jax.plan.sharding`), and the trainer's own step
programs compiled for a Cloud TPU slice without a TPU (`python -m mobilebert_jax.plan.compile`,
with libtpu installed)."""
