"""Running exported `.tflite` models: `TFLiteModel` runs one through its `serving_default`
signature with the LiteRT interpreter (`ai-edge-litert`, XNNPACK), falling back to
`tf.lite.Interpreter` when that is not installed. The export package is the only place that
touches jax2tf and the TFLite converter/interpreter."""
from __future__ import annotations

import os

import numpy as np

INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")
SIGNATURE_KEY = "serving_default"


def import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    return tf


class TFLiteModel:
    """A `.tflite` model (path or bytes) run through its `serving_default` signature."""

    def __init__(self, model: str | bytes, num_threads: int = 2, use_xnnpack: bool = True):
        interpreter_cls, resolver = interpreter_class(use_xnnpack)
        kwargs = {"model_path": model} if isinstance(model, str) else {"model_content": model}
        if isinstance(model, str) and not os.path.isfile(model):
            raise FileNotFoundError(f"TFLite model not found: {model}")
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver
        self.interpreter = interpreter_cls(num_threads=num_threads, **kwargs)
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures:
            raise ValueError(f"TFLite model has no {SIGNATURE_KEY!r} signature")
        self.input_names = tuple(signatures[SIGNATURE_KEY]["inputs"])
        self.output_names = tuple(signatures[SIGNATURE_KEY]["outputs"])
        self._runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        details = self._runner.get_input_details()
        self.input_shape = tuple(int(d) for d in details["input_ids"]["shape"])

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        feed = {n: np.asarray(inputs[n], dtype=np.int32) for n in INPUT_NAMES}
        return {k: np.array(v) for k, v in self._runner(**feed).items()}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs row blocks of the model's batch size over [N, S] arrays; N must divide."""
        b = self.input_shape[0]
        n = np.shape(inputs["input_ids"])[0]
        if n % b:
            raise ValueError(f"{n} rows do not split into batches of {b}")
        parts = [self(**{k: inputs[k][i:i + b] for k in INPUT_NAMES}) for i in range(0, n, b)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}


def interpreter_class(use_xnnpack: bool):
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:  # pragma: no cover - depends on the installed runtime
        litert = import_tensorflow().lite
        resolver_enum = litert.experimental.OpResolverType
    else:
        resolver_enum = litert.OpResolverType
    resolver = None if use_xnnpack else resolver_enum.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return litert.Interpreter, resolver


def plain_interpreter(model: bytes | str):
    """An allocated interpreter without delegates, for reading the graph and its constants."""
    interpreter_cls, resolver = interpreter_class(use_xnnpack=False)
    interp = interpreter_cls(model_content=read_model(model), num_threads=1,
                             experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def read_model(model: bytes | str) -> bytes:
    if isinstance(model, bytes):
        return model
    with open(model, "rb") as f:
        return f.read()
