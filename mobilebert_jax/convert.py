"""Checkpoint conversion between this project's checkpoint directory and the outside formats.

    python -m mobilebert_jax.convert --from=hf  --src=HF_DIR --out=DIR
    python -m mobilebert_jax.convert --from=tf1 --src=CKPT_PREFIX --config=JSON --out=DIR
    python -m mobilebert_jax.convert --to=hf    --src=DIR --out=HF_DIR

A fine-tuned workdir exports as the HF class of its task (its task card, `task.json`): a
sequence classifier (single-label, multi-label or regression, with its label names), a token
classifier or a question-answering model; any other checkpoint as MobileBertForPreTraining.

The project's parameter paths are the official TF1 variable names (`bert/encoder/layer_3/
attention/self/query/kernel`, ...), so TF1 import is a name-for-name copy with shape checks.
HF names are derived from them: `mobilebert.`/`bert.` prefix, `layer.{i}`, `ffn.{j}`,
`LayerNorm.{weight,bias}`, Linear weights transposed to [out, in], and the MLM extra columns
stored as `cls.predictions.dense.weight` [H − E, V].
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from mobilebert_jax import checkpoint, cli, files
from mobilebert_jax.models import config as config_lib
from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.models.heads import MobileBertForPreTraining

# HF keys that carry no information of their own (buffers, tied copies).
_HF_IGNORED = re.compile(r"(^|\.)(position_ids|token_type_ids)$|^cls\.predictions\.decoder\.")
_TF1_SKIPPED = re.compile(r"(adam_m|adam_v|global_step|Momentum|lamb_m|lamb_v)")


def expected_shapes(config: MobileBertConfig) -> dict[str, tuple[int, ...]]:
    """'/'-joined parameter path → shape, for the encoder with pretraining heads."""
    model = MobileBertForPreTraining(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"]
    flat = traverse_util.flatten_dict(nn.meta.unbox(abstract), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def hf_name(path: str, model_type: str, prefix: str) -> tuple[str, bool]:
    """The HF state-dict key of a project parameter path, and whether it is transposed."""
    if path == "cls/predictions/output_bias":
        return "cls.predictions.bias", False
    if path == "cls/predictions/extra_output_weights":
        return "cls.predictions.dense.weight", True
    if path == "cls/seq_relationship/output_weights":
        return "cls.seq_relationship.weight", False
    if path == "cls/seq_relationship/output_bias":
        return "cls.seq_relationship.bias", False
    parts = path.split("/")
    if parts[0] == "bert":
        parts = parts[1:]
        if prefix:
            parts = [prefix] + parts
    out, transpose = [], False
    for p in parts:
        if m := re.fullmatch(r"layer_(\d+)", p):
            out += ["layer", m.group(1)]
        elif m := re.fullmatch(r"ffn_layer_(\d+)", p):
            out += ["ffn", m.group(1)]
        elif p == "FakeLayerNorm":
            out.append("LayerNorm")
        elif p == "gamma":
            out.append("weight")
        elif p == "beta":
            out.append("bias")
        elif p == "kernel":
            out.append("weight")
            transpose = True
        elif p.endswith("_embeddings"):
            out += [p, "weight"]
        else:
            out.append(p)
    return ".".join(out), transpose


def _assemble(config: MobileBertConfig, lookup, source: str) -> dict:
    """Builds the params tree from `lookup(path) -> array | None`, checking names and shapes.

    The `cls/` heads may be absent as a whole (an encoder-only source); anything else missing,
    or any shape mismatch, raises ValueError naming the variable.
    """
    shapes = expected_shapes(config)
    flat = {}
    for path, shape in shapes.items():
        value = lookup(path)
        if value is None:
            if path.startswith("cls/"):
                continue
            raise ValueError(f"{source}: variable for {path} not found (config mismatch?)")
        value = np.asarray(value, dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"{source}: {path} has shape {value.shape}, config expects {shape}")
        flat[path] = value
    heads = [p for p in shapes if p.startswith("cls/")]
    present = [p for p in heads if p in flat]
    if present and len(present) != len(heads):
        missing = sorted(set(heads) - set(present))[0]
        raise ValueError(f"{source}: pretraining heads incomplete, {missing} not found")
    return traverse_util.unflatten_dict(flat, sep="/")


# -- HF -------------------------------------------------------------------------------------------
def read_hf_state_dict(hf_dir: str) -> dict[str, np.ndarray]:
    st = files.join(hf_dir, "model.safetensors")
    pt = files.join(hf_dir, "pytorch_model.bin")
    if files.isfile(st):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return dict(load_file(files.local_copy(st)))
        except SafetensorError as e:
            raise ValueError(f"{st}: not a readable safetensors file ({e})") from None
    if files.isfile(pt):
        import pickle

        import torch
        try:  # weights only: a pickle that would run code is refused
            state = torch.load(files.local_copy(pt), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            why = (f"it pickles {found[1]}, not only tensors" if found
                   else "not a PyTorch state dict of tensors")
            raise ValueError(f"{pt}: refused by torch.load(weights_only=True): {why}") from None
        if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
            raise ValueError(f"{pt}: not a state dict of tensors")
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {hf_dir}")


def _hf_prefix(state: dict[str, np.ndarray], model_type: str) -> str:
    return model_type if any(k.startswith(model_type + ".") for k in state) else ""


def import_hf(hf_dir: str) -> tuple[MobileBertConfig, dict]:
    """(config, params) from a HuggingFace MobileBERT or BERT directory."""
    hf_dir = files.resolve(hf_dir)
    if not files.isdir(hf_dir):
        raise FileNotFoundError(f"HF directory not found: {hf_dir}")
    raw = checkpoint_json(files.join(hf_dir, "config.json"))
    config = config_lib.from_hf_config(raw, files.join(hf_dir, "config.json"))
    state = read_hf_state_dict(hf_dir)
    model_type = raw["model_type"]
    prefix = _hf_prefix(state, model_type)
    used = set()

    def lookup(path):
        key, transpose = hf_name(path, model_type, prefix)
        if key not in state:
            return None
        used.add(key)
        return state[key].T if transpose else state[key]

    params = _assemble(config, lookup, f"HF checkpoint {hf_dir}")
    unused = sorted(k for k in state if k not in used and not _HF_IGNORED.search(k)
                    and not (k.startswith("cls.") and "cls" not in params))
    if unused:
        raise ValueError(f"HF checkpoint {hf_dir}: weight {unused[0]} has no place in the "
                         f"config ({len(unused)} unused weights)")
    return config, params


# A fine-tuned model's HF class (after the `MobileBert`/`Bert` prefix) and problem type, by the
# kind in its task card (checkpoint.TASK_CARD).
HF_TASK_CLASSES = {"classification": ("ForSequenceClassification", "single_label_classification"),
                   "multi_label": ("ForSequenceClassification", "multi_label_classification"),
                   "regression": ("ForSequenceClassification", "regression"),
                   "token_classification": ("ForTokenClassification", None),
                   "question_answering": ("ForQuestionAnswering", None)}


def hf_task_fields(card: dict, model_type: str) -> dict:
    """The HF config fields of a fine-tuned model: its architecture, and for classifiers the
    label names in output order (`id2label`, `label2id`, `num_labels`) and problem type."""
    suffix, problem = HF_TASK_CLASSES[card["kind"]]
    fields: dict[str, Any] = {
        "architectures": [("Bert" if model_type == "bert" else "MobileBert") + suffix]}
    if problem:
        fields["problem_type"] = problem
    if card["kind"] == "regression":
        fields["num_labels"] = 1
    elif card.get("labels"):
        names = [str(n) for n in card["labels"]]
        fields.update(num_labels=len(names), id2label=dict(enumerate(names)),
                      label2id={n: i for i, n in enumerate(names)})
    return fields


def export_hf(config: MobileBertConfig, params: dict, out_dir: str,
              tokenizer_path: str | None = None, task_card: dict | None = None) -> str:
    """Writes `config.json` + `model.safetensors` that `transformers` loads:
    MobileBertForPreTraining (BertModel for plain BERT configs), or, for a fine-tuned model
    (`task_card`), the `...ForSequenceClassification` / `ForTokenClassification` /
    `ForQuestionAnswering` class of its task with its label names."""
    from safetensors.numpy import save_file

    out_dir = files.resolve(out_dir)
    if files.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new --out")
    hf_config = config_lib.to_hf_config(config)
    plain_bert = hf_config["model_type"] == "bert"
    if task_card:
        hf_config.update(hf_task_fields(task_card, hf_config["model_type"]))
    prefix = "" if plain_bert else "mobilebert"
    flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params), sep="/")
    state = {}
    for path, value in flat.items():
        if plain_bert and path.startswith("cls/"):
            continue  # BertModel carries no pretraining heads
        key, transpose = hf_name(path, hf_config["model_type"], prefix)
        state[key] = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
    if "cls.predictions.bias" in state:
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    # Written in a local directory, then renamed into place (or uploaded, config.json last).
    remote = files.is_remote(out_dir)
    parent = None if remote else os.path.dirname(out_dir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".hf_export_", dir=parent)
    try:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
        if tokenizer_path and tokenizer_path.endswith("vocab.txt"):
            files.copy_file(tokenizer_path, os.path.join(tmp, "vocab.txt"))
        if remote:
            files.copy_tree(tmp, out_dir, last=["config.json"])
        else:
            if os.path.isdir(out_dir):
                os.rmdir(out_dir)
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# -- TF1 ------------------------------------------------------------------------------------------
def import_tf1(ckpt_prefix: str, config_json: str,
               scope: str = "") -> tuple[MobileBertConfig, dict]:
    """(config, params) from an official TF1 checkpoint and its JSON config. `scope` selects a
    prefix (e.g. "teacher" for the teacher inside a distillation checkpoint)."""
    import tensorflow as tf

    config = config_lib.from_official_json(config_json)
    if not tf.io.gfile.glob(ckpt_prefix + ".index"):
        raise FileNotFoundError(f"TF1 checkpoint not found: {ckpt_prefix}(.index)")
    reader = tf.train.load_checkpoint(ckpt_prefix)
    names = {n for n in reader.get_variable_to_shape_map() if not _TF1_SKIPPED.search(n)}
    root = f"{scope.strip('/')}/" if scope else ""
    used = set()

    def lookup(path):
        name = root + path
        if name not in names:
            return None
        used.add(name)
        return reader.get_tensor(name)

    params = _assemble(config, lookup, f"TF1 checkpoint {ckpt_prefix}")
    ours = {n for n in names
            if n.startswith(root) and n[len(root):].split("/")[0] in ("bert", "cls")}
    unused = sorted(ours - used)
    if unused:
        raise ValueError(f"TF1 checkpoint {ckpt_prefix}: variable {unused[0]} has no place in "
                         f"the config ({len(unused)} unused)")
    return config, params


def checkpoint_json(path: str) -> dict[str, Any]:
    return files.read_json(path)


# -- CLI ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    from absl import app, flags

    flags.DEFINE_enum("from", None, ["hf", "tf1"], "Import from this format.")
    flags.DEFINE_enum("to", None, ["hf"], "Export to this format.")
    flags.DEFINE_string("src", None, "Source: HF dir, TF1 checkpoint prefix, or project dir.")
    flags.DEFINE_string("config", None, "Official JSON config (with --from=tf1).")
    flags.DEFINE_string("scope", "", "Variable scope inside a TF1 checkpoint (e.g. teacher).")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("tokenizer", None, "Tokenizer file to store beside the params.")
    FLAGS = flags.FLAGS
    app.define_help_flags()  # --help prints the flags
    try:
        FLAGS(argv or sys.argv)
    except flags.Error as e:
        return cli.fail(e)
    try:
        src, out = FLAGS.src, FLAGS.out
        if not src or not out:
            raise ValueError("--src and --out are required")
        if (FLAGS["from"].value is None) == (FLAGS.to is None):
            raise ValueError("give exactly one of --from or --to")
        files.check_can_create(out)
        if FLAGS.to == "hf":
            config, params = checkpoint.load_pretrained(src)
            export_hf(config, params, out, FLAGS.tokenizer or checkpoint.tokenizer_file(src),
                      checkpoint.load_task_card(src))
        else:
            if FLAGS["from"].value == "hf":
                config, params = import_hf(src)
                tok = FLAGS.tokenizer or _existing(files.join(src, "vocab.txt"))
            else:
                if not FLAGS.config:
                    raise ValueError("--from=tf1 needs --config=JSON (the official config)")
                config, params = import_tf1(src, FLAGS.config, FLAGS.scope)
                tok = FLAGS.tokenizer
            checkpoint.save_pretrained(out, config, params, tokenizer_path=tok)
    except cli.EXPECTED as e:
        return cli.fail(e)
    print(f"wrote {out}")
    return 0


def _existing(path: str) -> str | None:
    return path if files.isfile(path) else None


if __name__ == "__main__":
    sys.exit(main())
