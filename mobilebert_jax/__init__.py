"""mobilebert_jax: MobileBERT and its IB-BERT teacher in JAX/Flax."""

__version__ = "0.1.0"


def load_pretrained(path):
    """Returns `(config, params)` from a project checkpoint directory (see `checkpoint.py`)."""
    from mobilebert_jax.checkpoint import load_pretrained as _load

    return _load(path)
