"""TFLite export: float fidelity against JAX on real text, named signatures per head, float16
safety of every constant, dynamic/int8 quantization, and the CLI's handling of bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from mobilebert_jax import checkpoint
from mobilebert_jax.data.tokenizers import load_tokenizer, packaged_bert_uncased_vocab
from mobilebert_jax.export import calibration, flatbuffer, runtime, tflite
from mobilebert_jax.export.__main__ import main as export_cli
from mobilebert_jax.models import (
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertModel,
    get_config,
)

SEQ_LEN = 32


def tiny_config(**overrides):
    """MobileBERT-shaped (trigram, bottleneck, NoNorm, stacked FFNs), two blocks, real vocab."""
    return get_config("mobilebert", num_hidden_layers=2, **overrides)


def init_params(model, seed=0):
    variables = model.init(jax.random.PRNGKey(seed), jnp.ones((1, SEQ_LEN), jnp.int32))
    params = meta.unbox(variables["params"])
    # Non-trivial NoNorm parameters, so the norms are not identities.
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
        if "beta" in str(p) or "gamma" in str(p) else x, params)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bert-base-uncased")


@pytest.fixture(scope="module")
def real_inputs(tokenizer):
    """Real Wikipedia text (single sentences and pairs) tokenized with the BERT vocab."""
    return calibration.representative_inputs(tokenizer, SEQ_LEN, num_examples=12)


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    config = tiny_config()
    params = init_params(MobileBertForSequenceClassification(config, 3))
    directory = str(tmp_path_factory.mktemp("ckpt") / "classifier")
    checkpoint.save_pretrained(directory, config, params,
                               tokenizer_path=packaged_bert_uncased_vocab())
    return directory


def jax_outputs(config, params, inputs):
    params = tflite.inference_params(params)
    fn = jax.jit(tflite.inference_fn(config, params))
    out = fn(params, inputs["input_ids"], inputs["input_mask"], inputs["segment_ids"])
    return {k: np.asarray(v) for k, v in out.items()}


def test_representative_inputs_are_real_padded_text(real_inputs, tokenizer):
    ids, mask, types = (real_inputs[n] for n in runtime.INPUT_NAMES)
    assert ids.shape == (12, SEQ_LEN) and ids.dtype == np.int32
    assert np.all(ids[:, 0] == tokenizer.cls_id)
    assert mask.sum(1).min() < SEQ_LEN, "some rows must carry padding"
    assert types.max() == 1, "some rows must be sentence pairs"
    words = tokenizer.decode(ids[0][mask[0] == 1])
    assert len(words.split()) >= 2 and sum(c.isalpha() for c in words) > 5


def test_cli_float_export_matches_jax_on_real_text(classifier_checkpoint, real_inputs, tmp_path):
    out = str(tmp_path / "model.tflite")
    rc = export_cli(["export", f"--checkpoint={classifier_checkpoint}", "--format=tflite",
                      "--quantize=none", f"--seq_len={SEQ_LEN}", f"--out={out}"])
    assert rc == 0 and os.path.isfile(out)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    model = runtime.TFLiteModel(out, num_threads=2)
    assert set(model.input_names) == set(runtime.INPUT_NAMES)
    assert model.output_names == ("logits",)
    assert model.input_shape == (1, SEQ_LEN)
    got = model.predict(real_inputs)["logits"]
    config, params = checkpoint.load_pretrained(classifier_checkpoint)
    want = jax_outputs(config, params, real_inputs)["logits"]
    assert got.shape == want.shape == (12, 3)
    assert np.abs(want).max() > 1e-3  # a non-degenerate output
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["question_answering", "encoder"])
def test_heads_export_named_outputs(head, real_inputs):
    config = tiny_config(attention_mask_mode="fill")
    model = (MobileBertForQuestionAnswering(config) if head == "question_answering"
             else MobileBertModel(config))
    params = init_params(model, seed=1)
    if head == "encoder":
        params = {"bert": params}
    data = tflite.to_tflite(config, params, SEQ_LEN)
    tfl = runtime.TFLiteModel(data)
    names = {"question_answering": ("end_logits", "start_logits"),
             "encoder": ("pooled_output", "sequence_output")}[head]
    assert tuple(sorted(tfl.output_names)) == names
    got, want = tfl.predict(real_inputs), jax_outputs(config, params, real_inputs)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)


@pytest.mark.parametrize("mask_mode", ["add", "fill"])
def test_no_constant_overflows_float16(mask_mode, classifier_checkpoint, real_inputs):
    config, params = checkpoint.load_pretrained(classifier_checkpoint)
    data = tflite.to_tflite(config, params, SEQ_LEN, "float16", export_mask_mode=mask_mode)
    constants = flatbuffer.constant_tensors(data)
    assert len(constants) > 20  # the weights are among them
    assert any(v.dtype == np.float16 for v in constants.values())
    assert flatbuffer.float16_overflows(data) == []
    assert flatbuffer.max_abs_float_constant(data) <= flatbuffer.FLOAT16_MAX
    mask_constant = -10000.0 if mask_mode == "add" else -6.0
    assert any(v.size == 1 and float(v.ravel()[0]) == mask_constant
               for v in constants.values() if v.dtype.kind == "f")
    # The float16-weight model runs with finite outputs close to float32 JAX.
    want = jax_outputs(config.replace(attention_mask_mode=mask_mode), params, real_inputs)
    got = runtime.TFLiteModel(data).predict(real_inputs)["logits"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want["logits"], atol=5e-3, rtol=0)


def test_overflow_check_catches_a_large_constant():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    def masked(x):
        return x + tf.constant(-1e9, tf.float32) * tf.cast(x < 0, tf.float32)

    data = tf.lite.TFLiteConverter.from_concrete_functions(
        [masked.get_concrete_function()]).convert()
    assert flatbuffer.max_abs_float_constant(data) == pytest.approx(1e9)
    assert len(flatbuffer.float16_overflows(data)) == 1


def test_dynamic_and_int8_quantize(classifier_checkpoint, real_inputs, tmp_path):
    config, params = checkpoint.load_pretrained(classifier_checkpoint)
    float_bytes = 4 * sum(np.size(x) for x in jax.tree_util.tree_leaves(
        tflite.inference_params(params)))
    dynamic = tflite.to_tflite(config, params, SEQ_LEN, "dynamic")
    out = str(tmp_path / "int8.tflite")
    summary = tflite.export_checkpoint(classifier_checkpoint, out, "int8", SEQ_LEN,
                                       num_calibration=16)
    # The additive-mask checkpoint is exported with the int8-safe fill mask.
    assert config.attention_mask_mode == "add" and summary["mask_mode"] == "fill"
    with open(out, "rb") as f:
        int8 = f.read()
    # The embedding table stays float in the dynamic model; full int8 quantizes it too.
    assert len(dynamic) < 0.8 * float_bytes and len(int8) < 0.4 * float_bytes
    for data, mode in ((dynamic, "add"), (int8, "fill")):
        want = jax_outputs(config.replace(attention_mask_mode=mode), params,
                           real_inputs)["logits"]
        got = runtime.TFLiteModel(data).predict(real_inputs)["logits"]
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max() + 1e-3, rtol=0)
    interp = runtime.plain_interpreter(int8)
    int8_activations = [d for d in interp.get_tensor_details()
                        if d["dtype"] == np.int8 and "FullyConnected" not in d["name"]]
    assert len(int8_activations) > 10, "full int8 must quantize activations, not only weights"
    assert "QUANTIZE" in flatbuffer.op_names(int8)
    assert flatbuffer.float16_overflows(int8) == []
    # The attention core and the residual stream stay float by default; projections and FFN
    # matmuls are int8.
    assert summary["float_ops"] == tflite.INT8_FLOAT_OPS
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
    inputs_of = {}
    for op in interp._get_ops_details():
        inputs_of.setdefault(op["op_name"], []).extend(int(i) for i in op["inputs"] if i >= 0)
    assert {dtypes[i] for i in inputs_of["BATCH_MATMUL"]} == {np.dtype(np.float32)}
    assert {dtypes[i] for i in inputs_of["SOFTMAX"]} == {np.dtype(np.float32)}
    assert np.dtype(np.int8) in {dtypes[i] for i in inputs_of["FULLY_CONNECTED"]}
    residual = set(flatbuffer.float_node_names(int8, [tflite.FLOAT_NODE_GROUPS["RESIDUAL"]]))
    assert residual, "the model's residual additions must be found"
    assert {np.dtype(d["dtype"]) for d in interp.get_tensor_details()
            if d["name"] in residual} == {np.dtype(np.float32)}


def test_int8_needs_representative_data(classifier_checkpoint):
    config, params = checkpoint.load_pretrained(classifier_checkpoint)
    with pytest.raises(ValueError, match="representative"):
        tflite.to_tflite(config, params, SEQ_LEN, "int8")
    with pytest.raises(ValueError, match="representative arrays"):
        tflite.to_tflite(config, params, SEQ_LEN, "int8",
                         {n: np.zeros((2, SEQ_LEN + 1), np.int32) for n in runtime.INPUT_NAMES})


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=/nonexistent/ckpt"], "checkpoint directory not found"),
    (["--seq_len=0"], "seq_len"),
    (["--seq_len=513"], "seq_len"),
])
def test_cli_bad_input_is_one_line_error(args, message, classifier_checkpoint, tmp_path,
                                         capsys):
    out = tmp_path / "bad.tflite"
    argv = ["export", f"--checkpoint={classifier_checkpoint}", f"--out={out}", *args]
    assert export_cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not os.listdir(tmp_path)


def test_cli_missing_output_directory(classifier_checkpoint, tmp_path, capsys):
    out = tmp_path / "missing" / "m.tflite"
    assert export_cli(["export", f"--checkpoint={classifier_checkpoint}", f"--out={out}"]) == 1
    assert "output directory does not exist" in capsys.readouterr().err


def test_tflite_model_rejects_missing_file():
    with pytest.raises(FileNotFoundError):
        runtime.TFLiteModel("/nonexistent/model.tflite")


def test_int8_exact_gelu_model_runs(real_inputs):
    """A LayerNorm + exact-GELU (erf) BERT, like HF BERT checkpoints: the erf polynomial stays
    in float (in int8 it aborts the TFLite runtime) and the rest is int8."""
    config = get_config("bert_base", num_hidden_layers=1, hidden_size=64, embedding_size=64,
                        intra_bottleneck_size=64, intermediate_size=128,
                        num_attention_heads=2, hidden_act="gelu_exact")
    params = init_params(MobileBertForSequenceClassification(config, 2))
    data = tflite.to_tflite(config, params, SEQ_LEN, "int8", real_inputs)
    got = runtime.TFLiteModel(data).predict(real_inputs)["logits"]
    want = jax_outputs(config, params, real_inputs)["logits"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max() + 1e-3, rtol=0)
    interp = runtime.plain_interpreter(data)
    erf_types = {d["dtype"] for d in interp.get_tensor_details() if "/erfc" in d["name"]}
    assert np.float32 in erf_types and np.int8 not in erf_types
