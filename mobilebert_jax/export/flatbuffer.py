"""Reading an exported model's graph: its ops, its constants (dequantized), the constants a
float16 model could not hold, and the node names of a float-node group."""
from __future__ import annotations

import numpy as np

from mobilebert_jax.export.runtime import plain_interpreter

FLOAT16_MAX = 65504.0


def constant_tensors(model: bytes | str) -> dict[str, np.ndarray]:
    """Every constant (weight, bias, scalar) of a `.tflite` model by tensor name, dequantized
    to float64 where the tensor carries quantization parameters."""
    interp = plain_interpreter(model)
    produced, consumed = set(), set()
    for op in interp._get_ops_details():
        produced.update(int(i) for i in op["outputs"])
        consumed.update(int(i) for i in op["inputs"] if i >= 0)
    inputs = {int(d["index"]) for d in interp.get_input_details()}
    out = {}
    for detail in interp.get_tensor_details():
        idx = int(detail["index"])
        if idx not in consumed or idx in produced or idx in inputs:
            continue
        try:
            value = np.asarray(interp.get_tensor(idx))
        except ValueError:  # a tensor without data (e.g. a variable)
            continue
        out[f"{detail['name']}#{idx}"] = _dequantize(value, detail["quantization_parameters"])
    return out


def _dequantize(value: np.ndarray, qparams: dict) -> np.ndarray:
    scales = np.asarray(qparams.get("scales", []), dtype=np.float64)
    if scales.size == 0:
        return value
    zero = np.asarray(qparams.get("zero_points", [0]), dtype=np.float64)
    axis = int(qparams.get("quantized_dimension", 0))
    shape = [1] * value.ndim
    if scales.size > 1 and value.ndim:
        shape[axis] = scales.size
    return (value.astype(np.float64) - zero.reshape(shape if zero.size > 1 else ())) \
        * scales.reshape(shape if scales.size > 1 else ())


def max_abs_float_constant(model: bytes | str) -> float:
    """The largest finite magnitude of any float constant of the model, or inf if a constant
    is ±inf. NaN (the fill value of an out-of-range embedding gather, representable in
    float16) is skipped. Quantized weights and biases count at their dequantized values."""
    largest = 0.0
    for value in constant_tensors(model).values():
        if value.dtype.kind != "f" or value.size == 0:
            continue
        if np.any(np.isinf(value)):
            return float("inf")
        finite = value[np.isfinite(value)]
        if finite.size:
            largest = max(largest, float(np.max(np.abs(finite))))
    return largest


def float16_overflows(model: bytes | str) -> list[str]:
    """Names of the float constants that would overflow (become ±inf) in float16."""
    return [name for name, value in constant_tensors(model).items()
            if value.dtype.kind == "f" and value.size
            and np.any(np.abs(value[~np.isnan(value)]) > FLOAT16_MAX)]


def op_names(model: bytes | str) -> set[str]:
    """The TFLite builtin op names the model uses."""
    interp = plain_interpreter(model)
    return {op["op_name"] for op in interp._get_ops_details()}


def float_node_names(float_model: bytes, patterns: list[str]) -> list[str]:
    """Output tensor names, in a float model, of the ops whose names match one of `patterns`
    (a node group of `tflite.FLOAT_NODE_GROUPS`)."""
    import re

    pattern = re.compile("|".join(patterns))
    interp = plain_interpreter(float_model)
    produced = {int(i) for op in interp._get_ops_details() for i in op["outputs"]}
    return [d["name"] for d in interp.get_tensor_details()
            if int(d["index"]) in produced and pattern.search(d["name"])]
