"""Checkpoint conversion: HF parity fixtures, TF1 import, HF export round trip, real MiniLM
weights against transformers, and bad input."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

import mobilebert_jax
from mobilebert_jax import checkpoint, convert
from mobilebert_jax.models import MobileBertForPreTraining, MobileBertModel, get_config
from tests.helpers import FIXTURES, TINY_MODEL

PARITY_ATOL = 1e-5


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.convert", *args],
                          capture_output=True, text=True, timeout=300)


def outputs(config, params, e):
    out = MobileBertForPreTraining(config).apply(
        {"params": params}, e["input_ids"], e["token_type_ids"], e["attention_mask"])
    return np.stack(out.hidden_states), np.asarray(out.mlm_logits), np.asarray(out.nsp_logits)


@pytest.mark.parametrize("name", ["mobilebert", "tiny", "no_opt", "bert"])
def test_hf_parity(name):
    src = FIXTURES / f"hf_{name}"
    config, params = convert.import_hf(str(src))
    e = np.load(src / "expected.npz")
    hidden, mlm, nsp = outputs(config, params, e)
    assert np.abs(hidden - e["hidden_states"]).max() <= PARITY_ATOL
    assert np.abs(mlm - e["mlm_logits"]).max() <= PARITY_ATOL
    assert np.abs(nsp - e["nsp_logits"]).max() <= PARITY_ATOL
    assert np.abs(e["hidden_states"]).max() > 1.0  # the fixture's activations are not trivial


def test_cli_import_then_load_pretrained(tmp_path):
    src = FIXTURES / "hf_tiny"
    out = tmp_path / "ckpt"
    r = run_cli("--from=hf", f"--src={src}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    config, params = mobilebert_jax.load_pretrained(str(out))
    assert config.use_bottleneck_attention and config.classifier_activation
    e = np.load(src / "expected.npz")
    hidden, _, nsp = outputs(config, params, e)
    assert np.abs(hidden - e["hidden_states"]).max() <= PARITY_ATOL
    # a second conversion into the same directory is refused, and the first stays intact
    r = run_cli("--from=hf", f"--src={src}", f"--out={out}")
    assert r.returncode == 1 and r.stderr.startswith("error:") and "already holds" in r.stderr
    assert checkpoint.latest_step(str(out)) == 0


def _write_tf1_checkpoint(prefix, named_arrays):
    import tensorflow as tf
    variables = {name: tf.Variable(value) for name, value in named_arrays.items()}
    saver = tf.compat.v1.train.Saver(var_list=variables)
    saver.save(sess=None, save_path=prefix, write_meta_graph=False)


def _official_config(config):
    keys = ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob",
            "embedding_size", "hidden_size", "initializer_range", "intermediate_size",
            "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
            "type_vocab_size", "vocab_size", "trigram_input", "use_bottleneck",
            "intra_bottleneck_size", "use_bottleneck_attention", "key_query_shared_bottleneck",
            "num_feedforward_networks", "normalization_type", "classifier_activation")
    return {k: getattr(config, k) for k in keys}


@pytest.mark.parametrize("scope", ["", "teacher"])
def test_tf1_import_official_names(tmp_path, scope):
    config = get_config("mobilebert", **dict(TINY_MODEL, vocab_size=50))
    shapes = convert.expected_shapes(config)
    rng = np.random.default_rng(0)
    known = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    root = f"{scope}/" if scope else ""
    arrays = {root + k: v for k, v in known.items()}
    # optimizer slots and the step counter are present in real checkpoints and are skipped
    arrays[root + "bert/encoder/layer_0/attention/self/query/kernel/adam_m"] = known[
        "bert/encoder/layer_0/attention/self/query/kernel"]
    arrays["global_step"] = np.array(7, np.int64)
    assert "bert/encoder/layer_1/ffn_layer_2/output/FakeLayerNorm/gamma" in known
    assert "cls/seq_relationship/output_weights" in known and \
        known["cls/seq_relationship/output_weights"].shape == (2, 32)
    prefix = str(tmp_path / "tf1" / "model.ckpt")
    _write_tf1_checkpoint(prefix, arrays)
    cfg_path = tmp_path / "bert_config.json"
    cfg_path.write_text(json.dumps(_official_config(config)))
    out = tmp_path / "ckpt"
    args = ["--from=tf1", f"--src={prefix}", f"--config={cfg_path}", f"--out={out}"]
    r = run_cli(*args, f"--scope={scope}")
    assert r.returncode == 0, r.stderr
    loaded_config, params = mobilebert_jax.load_pretrained(str(out))
    assert loaded_config == config
    flat = traverse_util.flatten_dict(params, sep="/")
    assert set(flat) == set(known)
    for name, value in known.items():
        np.testing.assert_array_equal(flat[name], value)


def test_tf1_import_shape_mismatch_names_variable(tmp_path):
    config = get_config("mobilebert", **dict(TINY_MODEL, vocab_size=50, num_hidden_layers=1))
    arrays = {k: np.zeros(s, np.float32) for k, s in convert.expected_shapes(config).items()}
    arrays["bert/encoder/layer_0/intermediate/dense/kernel"] = np.zeros((16, 99), np.float32)
    prefix = str(tmp_path / "model.ckpt")
    _write_tf1_checkpoint(prefix, arrays)
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(_official_config(config)))
    r = run_cli("--from=tf1", f"--src={prefix}", f"--config={cfg_path}", f"--out={tmp_path}/o")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "bert/encoder/layer_0/intermediate/dense/kernel has shape (16, 99)" in r.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_hf_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="HF directory not found"):
        convert.import_hf(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "hf_bert", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"bert/encoder/layer_0/intermediate/dense/\w+ "
                                         r"has shape \(\d+,?\d*\), config expects"):
        convert.import_hf(str(bad))
    cfg["intermediate_size"] = 96
    cfg["num_hidden_layers"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"weight bert\.encoder\.layer\.1\..* has no place"):
        convert.import_hf(str(bad))
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        convert.import_hf(str(bad))
    r = run_cli("--from=hf", f"--src={tmp_path}/missing", f"--out={tmp_path}/o")
    assert r.returncode == 1 and r.stderr.startswith("error: HF directory not found")
    with pytest.raises(FileNotFoundError, match="not a project checkpoint directory"):
        mobilebert_jax.load_pretrained(str(tmp_path))


@pytest.mark.parametrize("name", ["mobilebert", "bert"])
def test_hf_export_round_trip_is_exact(tmp_path, name):
    config, params = convert.import_hf(str(FIXTURES / f"hf_{name}"))
    if name == "bert":
        params = {"bert": params["bert"]}  # BertModel carries the encoder only
    src = tmp_path / "ckpt"
    checkpoint.save_pretrained(str(src), config, params)
    hf_dir = tmp_path / "hf"
    r = run_cli("--to=hf", f"--src={src}", f"--out={hf_dir}")
    assert r.returncode == 0, r.stderr
    back_config, back = convert.import_hf(str(hf_dir))
    assert back_config == config
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(back)


def test_hf_export_loads_in_transformers(tmp_path):
    import torch
    import transformers
    src = FIXTURES / "hf_mobilebert"
    config, params = convert.import_hf(str(src))
    convert.export_hf(config, params, str(tmp_path / "hf"))
    model = transformers.MobileBertForPreTraining.from_pretrained(str(tmp_path / "hf"))
    model.eval()
    e = np.load(src / "expected.npz")
    with torch.no_grad():
        out = model(input_ids=torch.tensor(e["input_ids"]).long(),
                    token_type_ids=torch.tensor(e["token_type_ids"]).long(),
                    attention_mask=torch.tensor(e["attention_mask"]).long())
    np.testing.assert_allclose(out.prediction_logits.numpy(), e["mlm_logits"], atol=PARITY_ATOL)
    np.testing.assert_allclose(out.seq_relationship_logits.numpy(), e["nsp_logits"],
                               atol=PARITY_ATOL)


SENTENCES = [
    "MobileBERT is a thin version of BERT_LARGE, equipped with bottleneck structures.",
    "The quick brown fox jumps over the lazy dog.",
    "Zürich's café served crème brûlée — twice!",
]


def test_minilm_real_weights_match_transformers(minilm_dir, tmp_path):
    import torch
    import transformers
    out = tmp_path / "minilm"
    r = run_cli("--from=hf", f"--src={minilm_dir}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    assert checkpoint.tokenizer_file(str(out)).endswith("vocab.txt")
    config, params = mobilebert_jax.load_pretrained(str(out))
    assert (config.num_hidden_layers, config.hidden_size,
            config.hidden_act) == (6, 384, "gelu_exact")
    tok = transformers.BertTokenizerFast(vocab_file=str(minilm_dir / "vocab.txt"))
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ours = MobileBertModel(config).apply({"params": params["bert"]}, enc["input_ids"],
                                         enc["token_type_ids"], enc["attention_mask"])
    hf = transformers.BertModel.from_pretrained(str(minilm_dir))
    hf.eval()
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v).long() for k, v in enc.items()})
    mask = enc["attention_mask"][..., None].astype(bool)
    diff = np.abs(np.asarray(ours.sequence_output) - ref.last_hidden_state.numpy())
    assert np.where(mask, diff, 0).max() <= 1e-4
    assert np.abs(np.asarray(ours.pooled_output) - ref.pooler_output.numpy()).max() <= 1e-4
    assert os.path.isfile(out / "model_config.json")
