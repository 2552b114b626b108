"""mobilebert_jax: MobileBERT and its IB-BERT teacher in JAX/Flax."""

import os as _os

# TensorFlow serves only as an I/O library here (tfds, TF1 checkpoints, TFLite): keep its C++
# start-up chatter off the terminal unless the user asks for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Cloud-storage paths (gs://...) go through etils.epath's fsspec backend (gcsfs), for orbax, TFDS
# and this package alike (see files.py), not through TensorFlow's own GCS client.
_os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"


def load_pretrained(path):
    """Returns `(config, params)` from a project checkpoint directory (see `checkpoint.py`)."""
    from mobilebert_jax.checkpoint import load_pretrained as _load

    return _load(path)
