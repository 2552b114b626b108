"""JAX's persistent compilation cache for every job.

`main` turns it on before anything compiles, in `<workdir>/compilation_cache` or in the config's
`compilation_cache_dir` (a local path or gs://, which JAX reaches through etils): a restarted run,
or another run of the same programs on the same kind of machine, loads its compiled steps
instead of compiling them again. Programs that compile in under
`jax_persistent_cache_min_compile_time_secs` (JAX's default, 1 s) are not stored.
`compile_step` in the trainers reports, per step program, whether it came from the cache.
"""
from __future__ import annotations

import jax

CACHE_SUBDIR = "compilation_cache"
_HITS = "/jax/compilation_cache/cache_hits"
_counts = {_HITS: 0}
_listening = False


def _count(event: str, **kwargs) -> None:
    del kwargs
    if event in _counts:
        _counts[event] += 1


def enable(path: str) -> None:
    """Stores and looks up compiled programs in `path` from now on (before the first compile)."""
    global _listening
    jax.config.update("jax_compilation_cache_dir", path)
    if not _listening:
        jax.monitoring.register_event_listener(_count)
        _listening = True


def hits() -> int:
    """Programs loaded from the persistent cache so far in this process."""
    return _counts[_HITS]
