"""Evaluation metrics: GLUE (`metrics.glue`) and the official SQuAD scores (`metrics.squad`).

`python -m mobilebert_jax.metrics` scores saved predictions with no model in the loop (see
`metrics/__main__.py`). The names below are re-exported lazily, so importing the package for
its other modules does not load scikit-learn.
"""
import importlib

_EXPORTS = {
    "glue_metrics": "mobilebert_jax.metrics.glue",
    "normalize_answer": "mobilebert_jax.metrics.squad",
    "squad_scores": "mobilebert_jax.metrics.squad",
    "squad_v1_scores": "mobilebert_jax.metrics.squad",
    "squad_v2_scores": "mobilebert_jax.metrics.squad",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
