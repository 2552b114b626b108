"""TFLite export (float, float16, dynamic-range and full-integer int8): the only module that
touches jax2tf and the TFLite converter/interpreter.

Path: the Flax model is wrapped in a pure function of (params, inputs), converted with
`jax2tf.convert(..., native_serialization=False, enable_xla=False)` (plain TF ops that the TFLite
converter understands), placed in a `tf.function` with a fixed `[batch, seq_len]` int32 input
signature whose params are `tf.Variable`s of a `tf.Module`, and handed to
`tf.lite.TFLiteConverter.from_concrete_functions`. The resulting model has one signature,
`serving_default`, with named inputs `input_ids`, `input_mask`, `segment_ids` and named
outputs chosen from the checkpoint's head:

* `classifier` params  → `logits` [B, num_labels]
* `qa_outputs` params  → `start_logits`, `end_logits` [B, S]
* encoder only         → `sequence_output` [B, S, H], `pooled_output` [B, H]

`serving` replaces those with the one output an on-device task library reads
(`SERVING_OUTPUTS`): `scores` [B, num_labels] (softmax, sigmoid, or the regression score) of a
classifier, or `embedding` [B, H] (the pooled output) of an encoder.

Quantization (`quantize`):

* `none`     float32 weights and activations.
* `float16`  float16 weights (computed in float32 on CPU).
* `dynamic`  int8 weights, float activations (dynamic-range quantization).
* `int8`     int8 weights and activations, calibrated on real text tokenized with the
             checkpoint's tokenizer (`representative_inputs`); ops TFLite cannot run in int8
             stay in float. `float_ops` keeps further op types (e.g. SOFTMAX) or node groups
             in float; `export_checkpoint` and the CLI default to `INT8_FLOAT_OPS`.

Mask constants: the exported graph holds the model's own mask — `-10000·(1 − mask)` added to the
scores ("add") or scores set to `-6` ("fill") — both within the float16 range; `export_mask_mode`
can switch a checkpoint to the other mode at export time. `max_abs_float_constant` reads every
constant of an exported model so tests can prove nothing overflows in float16.

Full int8 and the additive mask: TFLite quantizes each activation tensor with one scale, and the
masked scores span [-10000, max score], so the real scores land on a grid of ~40 and attention
turns uniform (a fine-tuned SST-2 model fell to chance). `export_checkpoint` therefore exports
int8 models with the fill mask (-6) unless told otherwise.

The CLI is `python -m mobilebert_jax.export` (`__main__.py`); running and reading a model are in
`runtime.py` and `flatbuffer.py`, the calibration text in `calibration.py`.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable

import jax
import numpy as np
from flax.core import meta

from mobilebert_jax import files
from mobilebert_jax.export.calibration import representative_inputs
from mobilebert_jax.export.flatbuffer import float_node_names
from mobilebert_jax.export.runtime import INPUT_NAMES, import_tensorflow
from mobilebert_jax.models import (
    MobileBertConfig,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertModel,
)

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
# Groups of graph nodes (by tensor-name pattern) an int8 export can keep in float:
# LAYER_NORM - the LayerNorm statistics (mean, variance, rsqrt);
# ERF        - the erf polynomial of the exact GELU: in int8 it aborts the TFLite runtime
#              (added automatically for hidden_act="gelu_exact");
# RESIDUAL   - the residual additions (the stream where outlier dimensions live);
# HEAD       - the pooler and the task head.
FLOAT_NODE_GROUPS = {"LAYER_NORM": r"/LayerNorm/", "ERF": r"/intermediate/erfc",
                     "RESIDUAL": r"/output/(bottleneck/)?add",
                     "HEAD": r"/pooler/|/classifier/|/qa_outputs/"}
# What `export_checkpoint` keeps in float in an int8 model unless told otherwise:
# * the attention core (Q·Kᵀ, softmax, P·V): XNNPACK has no int8 batch-matmul, so in int8 these
#   run on the reference kernels and cut the delegated graph at every layer; kept in float they
#   stay inside XNNPACK and the probabilities stay exact;
# * the residual stream (the residual additions and the LayerNorm statistics): its few outlier
#   dimensions set the per-tensor int8 scale and crush the rest (a MiniLM SST-2 classifier loses
#   1.7-2.2 points with either one quantized, none with both in float).
# The projections and FFN matmuls, which are nearly all of the FLOPs, run in int8.
INT8_FLOAT_OPS = ("BATCH_MATMUL", "SOFTMAX", "LAYER_NORM", "RESIDUAL")
# `serving` outputs: name -> (the head it needs, its one output).
SERVING_OUTPUTS = {"softmax": ("classification", "scores"),
                   "sigmoid": ("classification", "scores"),
                   "score": ("classification", "scores"),
                   "embedding": ("encoder", "embedding")}


def task_of(params: dict) -> str:
    """The head a params tree carries: "classification", "question_answering" or "encoder"."""
    if "bert" not in params:
        raise ValueError("params have no 'bert' subtree; not a MobileBERT checkpoint")
    if "classifier" in params:
        return "classification"
    if "qa_outputs" in params:
        return "question_answering"
    return "encoder"


def output_names(params: dict, serving: str | None = None) -> tuple[str, ...]:
    """Names of the exported outputs for the head `params` carry (or of a `serving` output)."""
    if serving is not None:
        return (SERVING_OUTPUTS[serving][1],)
    return {"classification": ("logits",),
            "question_answering": ("start_logits", "end_logits"),
            "encoder": ("sequence_output", "pooled_output")}[task_of(params)]


def inference_params(params: dict) -> dict:
    """The subtree the inference model needs (pretraining heads `cls` dropped), as NumPy."""
    task = task_of(params)
    keep = {"bert"} | ({"classifier"} if task == "classification" else set()) \
        | ({"qa_outputs"} if task == "question_answering" else set())
    params = meta.unbox(params)
    return jax.tree_util.tree_map(np.asarray, {k: v for k, v in params.items() if k in keep})


def inference_fn(config: MobileBertConfig, params: dict, serving: str | None = None) -> Callable:
    """`f(params, input_ids, input_mask, segment_ids) -> {name: array}` in inference
    mode (no dropout, float32) for the head `params` carry, or its one `serving` output
    (`SERVING_OUTPUTS`)."""
    config = config.replace(dtype="float32", remat="none")
    task = task_of(params)
    if serving is not None:
        if serving not in SERVING_OUTPUTS:
            raise ValueError(f"unknown serving output {serving!r}; expected one of "
                             f"{', '.join(SERVING_OUTPUTS)}")
        if SERVING_OUTPUTS[serving][0] != task:
            raise ValueError(f"serving output {serving!r} needs a {SERVING_OUTPUTS[serving][0]} "
                             f"model, these params are a {task} model")
    if task == "classification":
        model = MobileBertForSequenceClassification(
            config, int(np.shape(params["classifier"]["kernel"])[-1]))
    elif task == "question_answering":
        model = MobileBertForQuestionAnswering(config)
    else:
        model = MobileBertModel(config)

    def apply(p, input_ids, input_mask, segment_ids):
        if task == "encoder":
            out = model.apply({"params": p["bert"]}, input_ids, segment_ids, input_mask)
            if serving == "embedding":
                return {"embedding": out.pooled_output}
            return {"sequence_output": out.sequence_output, "pooled_output": out.pooled_output}
        out = model.apply({"params": p}, input_ids, segment_ids, input_mask)
        if task == "classification":
            if serving == "softmax":
                return {"scores": jax.nn.softmax(out.logits, axis=-1)}
            if serving == "sigmoid":
                return {"scores": jax.nn.sigmoid(out.logits)}
            if serving == "score":
                return {"scores": out.logits}
            return {"logits": out.logits}
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    return apply


def _converter(config: MobileBertConfig, params: dict, seq_len: int, batch_size: int,
               serving: str | None = None):
    """A TFLiteConverter for the model's serving function, and the module owning its params."""
    tf = import_tensorflow()
    from jax.experimental import jax2tf

    if not 1 <= seq_len <= config.max_position_embeddings:
        raise ValueError(f"seq_len must be in [1, {config.max_position_embeddings}], got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    params = inference_params(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        converted = jax2tf.convert(inference_fn(config, params, serving),
                                   native_serialization=False,
                                   enable_xla=False, with_gradient=False)
    module = tf.Module()
    module.params = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), params)
    spec = [tf.TensorSpec((batch_size, seq_len), tf.int32, name=n) for n in INPUT_NAMES]

    @tf.function(autograph=False, input_signature=spec)
    def serve(input_ids, input_mask, segment_ids):
        return converted(module.params, input_ids, input_mask, segment_ids)

    module.serve = serve
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concrete = serve.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], module), module


def to_tflite(config: MobileBertConfig, params: dict, seq_len: int = 128,
              quantize: str = "none", representative: dict | None = None,
              batch_size: int = 1, float_ops: Iterable[str] = (),
              export_mask_mode: str | None = None, serving: str | None = None) -> bytes:
    """The `.tflite` flatbuffer of the model `params` carry (its `serving` output only, when
    given: `SERVING_OUTPUTS`).

    `representative`: int32 arrays `input_ids`, `input_mask`, `segment_ids` of shape
    [N, seq_len] (required for `int8`). `float_ops`: TFLite op names (e.g. "SOFTMAX") kept in
    float in an int8 model. `export_mask_mode`: "add"/"fill" overrides the config's mask mode.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}")
    if export_mask_mode is not None:
        config = config.replace(attention_mask_mode=export_mask_mode)
    float_ops = tuple(float_ops)
    if float_ops and quantize != "int8":
        raise ValueError("float_ops only applies to quantize='int8'")
    tf = import_tensorflow()
    converter, _module = _converter(config, params, seq_len, batch_size, serving)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative is None:
            raise ValueError("quantize='int8' needs a representative dataset of real inputs")
        batches = _representative_batches(representative, seq_len, batch_size)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        if config.hidden_act == "gelu_exact" and "ERF" not in float_ops:
            float_ops += ("ERF",)  # the int8 erf polynomial aborts the TFLite runtime
        if float_ops:
            names = []
            groups = [g for g in float_ops if g in FLOAT_NODE_GROUPS]
            if groups:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    float_model = _converter(config, params, seq_len, batch_size,
                                             serving)[0].convert()
                names = float_node_names(float_model, [FLOAT_NODE_GROUPS[g] for g in groups])
            return _selective_int8(converter, batches, float_ops, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def _representative_batches(inputs: dict, seq_len: int, batch_size: int) -> list[list]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ValueError(f"representative dataset lacks {', '.join(missing)}")
    arrays = [np.asarray(inputs[n], dtype=np.int32) for n in INPUT_NAMES]
    n = arrays[0].shape[0]
    if n < batch_size or any(a.shape != (n, seq_len) for a in arrays):
        raise ValueError(f"representative arrays must all be [N >= {batch_size}, {seq_len}]; "
                         f"got {[a.shape for a in arrays]}")
    # Input order of the converted function: the signature's, alphabetical in TFLite; pass a
    # dict so the calibrator matches by name.
    return [{name: a[i:i + batch_size] for name, a in zip(INPUT_NAMES, arrays)}
            for i in range(0, n - batch_size + 1, batch_size)]


def _selective_int8(converter, batches: list, float_ops: tuple[str, ...],
                    mask_nodes: list[str]) -> bytes:
    """Full int8 with some ops left in float (TFLite quantization debugger). Entries of
    `float_ops` are TFLite op types ("SOFTMAX") or names of `FLOAT_NODE_GROUPS`."""
    tf = import_tensorflow()
    op_types = [op for op in float_ops if op not in FLOAT_NODE_GROUPS]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=op_types or None, denylisted_nodes=mask_nodes or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: iter(batches), debug_options=options)
        return debugger.get_nondebug_quantized_model()


def default_options(config: MobileBertConfig, quantize: str,
                    float_ops: Iterable[str] | None = None,
                    export_mask_mode: str | None = None) -> tuple[tuple[str, ...], str | None]:
    """(float_ops, export_mask_mode) as the export CLI resolves them: `float_ops=None` means
    `INT8_FLOAT_OPS` for int8 and nothing otherwise; an int8 export of an additive-mask model
    uses the fill mask (see the module docstring: the additive mask breaks int8)."""
    if float_ops is None:
        float_ops = INT8_FLOAT_OPS if quantize == "int8" else ()
    if quantize == "int8" and export_mask_mode is None and config.attention_mask_mode == "add":
        export_mask_mode = "fill"
    return tuple(float_ops), export_mask_mode


def export_checkpoint(checkpoint_dir: str, out: str, quantize: str = "none", seq_len: int = 128,
                      calibration_data: str = "gensim_wiki", num_calibration: int = 100,
                      tokenizer_path: str | None = None, float_ops: Iterable[str] | None = None,
                      export_mask_mode: str | None = None) -> dict[str, Any]:
    """Exports a project checkpoint directory to a `.tflite` file; returns a summary dict.
    Unset `float_ops` / `export_mask_mode` take `default_options`."""
    from mobilebert_jax import checkpoint
    from mobilebert_jax.data.tokenizers import check_vocab, load_tokenizer

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}")
    if not 1 <= seq_len <= 512:
        raise ValueError(f"seq_len must be in [1, 512], got {seq_len}")
    out = files.resolve(out)
    files.check_can_create(out)
    if not files.is_remote(out) and not os.path.isdir(os.path.dirname(out)):
        raise FileNotFoundError(f"output directory does not exist: {os.path.dirname(out)}")
    config, params = checkpoint.load_pretrained(checkpoint_dir)
    representative = None
    if quantize == "int8":
        tok_path = tokenizer_path or checkpoint.tokenizer_file(checkpoint_dir)
        if tok_path is None:
            raise ValueError(f"{checkpoint_dir} stores no tokenizer; pass --tokenizer for the "
                             "int8 calibration text")
        tokenizer = load_tokenizer(tok_path)
        check_vocab(tokenizer, config.vocab_size)
        representative = representative_inputs(tokenizer, seq_len, num_calibration,
                                               calibration_data)
    float_ops, export_mask_mode = default_options(config, quantize, float_ops, export_mask_mode)
    data = to_tflite(config, params, seq_len, quantize, representative, float_ops=float_ops,
                     export_mask_mode=export_mask_mode)
    files.write_bytes(out, data)
    return {"out": out, "bytes": len(data), "task": task_of(params),
            "outputs": output_names(params), "quantize": quantize, "seq_len": seq_len,
            "mask_mode": export_mask_mode or config.attention_mask_mode,
            "float_ops": float_ops}
