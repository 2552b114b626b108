"""Benchmarks and the reproduction harness, run from the repository root as
`python -m benchmarks.NAME`; not part of the installed package."""
