"""TFLite export (float, float16, dynamic-range and full-integer int8): the only module that
touches jax2tf and the TFLite converter/interpreter.

Path: the Flax model is wrapped in a pure function of (params, inputs), converted with
`jax2tf.convert(..., native_serialization=False, enable_xla=False)` (plain TF ops that the TFLite
converter understands), placed in a `tf.function` with a fixed `[batch, seq_len]` int32 input
signature whose params are `tf.Variable`s of a `tf.Module`, and handed to
`tf.lite.TFLiteConverter.from_concrete_functions`. The resulting model has one signature,
`serving_default`, with named inputs `input_ids`, `attention_mask`, `token_type_ids` and named
outputs chosen from the checkpoint's head:

* `classifier` params  → `logits` [B, num_labels]
* `qa_outputs` params  → `start_logits`, `end_logits` [B, S]
* encoder only         → `sequence_output` [B, S, H], `pooled_output` [B, H]

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

Reading the result: `TFLiteModel` runs a `.tflite` file with the LiteRT interpreter
(`ai-edge-litert`, XNNPACK), falling back to `tf.lite.Interpreter` when that is not installed.

CLI:
    python -m mobilebert_jax.export --checkpoint=DIR --format=tflite \
        --quantize={none,float16,dynamic,int8} --seq_len=128 --out=FILE
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable, Iterable

import jax
import numpy as np
from flax.core import meta

from mobilebert_jax import cli, files
from mobilebert_jax.models import (MobileBertConfig, MobileBertForQuestionAnswering,
                                   MobileBertForSequenceClassification, MobileBertModel)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
FLOAT16_MAX = 65504.0
SIGNATURE_KEY = "serving_default"
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


# -- the function to export ------------------------------------------------------------------
def task_of(params: dict) -> str:
    """The head a params tree carries: "classification", "question_answering" or "encoder"."""
    if "bert" not in params:
        raise ValueError("params have no 'bert' subtree; not a MobileBERT checkpoint")
    if "classifier" in params:
        return "classification"
    if "qa_outputs" in params:
        return "question_answering"
    return "encoder"


def output_names(params: dict) -> tuple[str, ...]:
    """Names of the exported outputs for the head `params` carry."""
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


def inference_fn(config: MobileBertConfig, params: dict) -> Callable:
    """`f(params, input_ids, attention_mask, token_type_ids) -> {name: array}` in inference
    mode (no dropout, float32) for the head `params` carry."""
    config = config.replace(dtype="float32", remat="none")
    task = task_of(params)
    if task == "classification":
        model = MobileBertForSequenceClassification(
            config, int(np.shape(params["classifier"]["kernel"])[-1]))
    elif task == "question_answering":
        model = MobileBertForQuestionAnswering(config)
    else:
        model = MobileBertModel(config)

    def apply(p, input_ids, attention_mask, token_type_ids):
        if task == "encoder":
            out = model.apply({"params": p["bert"]}, input_ids, token_type_ids, attention_mask)
            return {"sequence_output": out.sequence_output, "pooled_output": out.pooled_output}
        out = model.apply({"params": p}, input_ids, token_type_ids, attention_mask)
        if task == "classification":
            return {"logits": out.logits}
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    return apply


# -- conversion ----------------------------------------------------------------------------------
def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    return tf


def _converter(config: MobileBertConfig, params: dict, seq_len: int, batch_size: int):
    """A TFLiteConverter for the model's serving function, and the module owning its params."""
    tf = _tf()
    from jax.experimental import jax2tf

    if not 1 <= seq_len <= config.max_position_embeddings:
        raise ValueError(f"seq_len must be in [1, {config.max_position_embeddings}], got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    params = inference_params(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        converted = jax2tf.convert(inference_fn(config, params), native_serialization=False,
                                   enable_xla=False, with_gradient=False)
    module = tf.Module()
    module.params = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), params)
    spec = [tf.TensorSpec((batch_size, seq_len), tf.int32, name=n) for n in INPUT_NAMES]

    @tf.function(autograph=False, input_signature=spec)
    def serve(input_ids, attention_mask, token_type_ids):
        return converted(module.params, input_ids, attention_mask, token_type_ids)

    module.serve = serve
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concrete = serve.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], module), module


def to_tflite(config: MobileBertConfig, params: dict, seq_len: int = 128,
              quantize: str = "none", representative: dict | None = None,
              batch_size: int = 1, float_ops: Iterable[str] = (),
              export_mask_mode: str | None = None) -> bytes:
    """The `.tflite` flatbuffer of the model `params` carry.

    `representative`: int32 arrays `input_ids`, `attention_mask`, `token_type_ids` of shape
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
    tf = _tf()
    converter, _module = _converter(config, params, seq_len, batch_size)
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
                    float_model = _converter(config, params, seq_len, batch_size)[0].convert()
                names = _float_node_names(float_model, groups)
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
    tf = _tf()
    op_types = [op for op in float_ops if op not in FLOAT_NODE_GROUPS]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=op_types or None, denylisted_nodes=mask_nodes or None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: iter(batches), debug_options=options)
        return debugger.get_nondebug_quantized_model()


def _float_node_names(float_model: bytes, groups: list[str]) -> list[str]:
    """Output tensor names, in a float model, of the ops in the named `FLOAT_NODE_GROUPS`."""
    import re

    pattern = re.compile("|".join(FLOAT_NODE_GROUPS[g] for g in groups))
    interp = _plain_interpreter(float_model)
    produced = {int(i) for op in interp._get_ops_details() for i in op["outputs"]}
    return [d["name"] for d in interp.get_tensor_details()
            if int(d["index"]) in produced and pattern.search(d["name"])]


# -- representative data -------------------------------------------------------------------------
def representative_inputs(tokenizer, seq_len: int, num_examples: int = 100,
                          source: str = "gensim_wiki", seed: int = 0) -> dict[str, np.ndarray]:
    """Real inputs for int8 calibration: `num_examples` rows of [CLS] a [SEP] (b [SEP]).

    `source`: "gensim_wiki" (sentence pairs of varied length from the Wikipedia sample in the
    gensim wheel) or a GLUE task directory (e.g. /data/glue/SST-2; its train.tsv, else dev.tsv).
    """
    from mobilebert_jax.data import glue

    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    rng = np.random.default_rng(seed)
    if source == "gensim_wiki":
        examples = _wiki_examples(rng, num_examples, seq_len)
    else:
        task = _glue_task_of_dir(source)
        split = "train" if os.path.isfile(os.path.join(source, "train.tsv")) else "dev"
        pool = glue.load_glue(task, source, split)
        idx = rng.choice(len(pool), size=min(num_examples, len(pool)), replace=False)
        examples = [pool[i] for i in idx]
    feats = glue.featurize_glue(examples, tokenizer, seq_len)
    return {n: feats[n] for n in INPUT_NAMES}


def _wiki_examples(rng: np.random.Generator, num_examples: int, seq_len: int) -> list:
    """Word spans of Wikipedia text, their lengths spread from a few words to past `seq_len`
    tokens (so calibration sees padded and full rows), half of them split into pairs."""
    from mobilebert_jax.data.corpus import iter_documents
    from mobilebert_jax.data.glue import GlueExample

    examples = []
    for doc in iter_documents("gensim_wiki"):
        words = " ".join(doc).split()
        i = 0
        while len(examples) < num_examples:
            n = int(rng.integers(4, max(5, seq_len)))
            if i + n > len(words):
                break
            span, i = words[i:i + n], i + n
            cut = int(rng.integers(1, n)) if rng.random() < 0.5 else n
            examples.append(GlueExample(f"wiki-{len(examples)}", " ".join(span[:cut]),
                                        " ".join(span[cut:]) or None, None))
        if len(examples) >= num_examples:
            break
    if not examples:
        raise ValueError("the gensim Wikipedia sample yielded no text")
    return examples


def _glue_task_of_dir(path: str) -> str:
    from mobilebert_jax.data import glue

    if not os.path.isdir(path):
        raise FileNotFoundError(f"calibration data directory not found: {path}")
    return glue.get_task(os.path.basename(os.path.normpath(path))).name


# -- running and inspecting ------------------------------------------------------------------------
class TFLiteModel:
    """A `.tflite` model (path or bytes) run through its `serving_default` signature."""

    def __init__(self, model: str | bytes, num_threads: int = 2, use_xnnpack: bool = True):
        interpreter_cls, resolver = _interpreter_class(use_xnnpack)
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


def _interpreter_class(use_xnnpack: bool):
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:  # pragma: no cover - depends on the installed runtime
        litert = _tf().lite
        resolver_enum = litert.experimental.OpResolverType
    else:
        resolver_enum = litert.OpResolverType
    resolver = None if use_xnnpack else resolver_enum.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return litert.Interpreter, resolver


def constant_tensors(model: bytes | str) -> dict[str, np.ndarray]:
    """Every constant (weight, bias, scalar) of a `.tflite` model by tensor name, dequantized
    to float64 where the tensor carries quantization parameters."""
    interp = _plain_interpreter(model)
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


def _plain_interpreter(model: bytes | str):
    """An allocated interpreter without delegates, for reading the graph and its constants."""
    interpreter_cls, resolver = _interpreter_class(use_xnnpack=False)
    interp = interpreter_cls(model_content=_read_model(model), num_threads=1,
                             experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def _read_model(model: bytes | str) -> bytes:
    if isinstance(model, bytes):
        return model
    with open(model, "rb") as f:
        return f.read()


def op_names(model: bytes | str) -> set[str]:
    """The TFLite builtin op names the model uses."""
    interp = _plain_interpreter(model)
    return {op["op_name"] for op in interp._get_ops_details()}


# -- checkpoint → file ---------------------------------------------------------------------------
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


def parse_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mobilebert_jax.export",
                                     description="Export a checkpoint to TFLite.")
    parser.add_argument("--checkpoint", required=True, help="Project checkpoint directory.")
    parser.add_argument("--format", default="tflite", choices=["tflite"], help="Output format.")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_MODES)
    parser.add_argument("--seq_len", type=int, default=128,
                        help="Fixed sequence length of the exported model.")
    parser.add_argument("--out", required=True, help="Output .tflite file.")
    parser.add_argument("--calibration_data", default="gensim_wiki",
                        help="int8 calibration text: 'gensim_wiki' or a GLUE task directory.")
    parser.add_argument("--num_calibration", type=int, default=100,
                        help="Calibration examples for int8.")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer (default: the checkpoint's).")
    parser.add_argument("--float_ops", default=None,
                        help="int8: comma-separated TFLite op types or node groups kept in "
                        f"float (default {','.join(INT8_FLOAT_OPS)}; '' for none; node groups: "
                        f"{', '.join(FLOAT_NODE_GROUPS)}).")
    parser.add_argument("--mask_mode", default=None, choices=["add", "fill"],
                        help="Override the attention mask mode at export (default: the "
                        "model's; for int8, fill).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv if argv is None else argv)[1:])
    try:
        if not args.checkpoint or not args.out:
            raise ValueError("--checkpoint and --out are required")
        summary = export_checkpoint(args.checkpoint, args.out, args.quantize, args.seq_len,
                                    args.calibration_data, args.num_calibration,
                                    args.tokenizer,
                                    None if args.float_ops is None
                                    else [o for o in args.float_ops.split(",") if o],
                                    args.mask_mode)
    except cli.EXPECTED as e:
        return cli.fail(e)
    print(f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB, {summary['task']}, "
          f"outputs {', '.join(summary['outputs'])}, quantize={summary['quantize']}, "
          f"seq_len={summary['seq_len']}, mask={summary['mask_mode']}"
          f"{', float ' + '+'.join(summary['float_ops']) if summary['float_ops'] else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
