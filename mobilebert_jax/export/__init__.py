"""TFLite export of project checkpoints (see docs/export.md): `tflite` converts, `runtime` runs,
`flatbuffer` reads a model's graph, `calibration` gives int8 calibration text; the CLI is
`python -m mobilebert_jax.export`."""
