"""Export for MediaPipe Tasks: a `.tflite` that MediaPipe's `TextClassifier` or `TextEmbedder`
loads as it is, tokenizer and labels inside (`python -m mobilebert_jax.export
--format=mediapipe`).

* a fine-tuned sentence classifier (its task card, `task.json`, names the labels) exports its
  params at the card's `best_step` with one output `scores` [1, num_labels]: softmax
  probabilities (single-label), sigmoid probabilities (multi-label) or the score (regression),
  which MediaPipe reports as they are, by label name, from `labels.txt`;
* an encoder (a pretrained or distilled checkpoint without a task head) exports one output
  `embedding` [1, H], the pooled output, for `TextEmbedder`.

What MediaPipe's BERT text preprocessing needs (its BertPreprocessorCalculator and
tokenizers): three int32 inputs of shape [1, L], found through the input tensor metadata by
the names `ids`, `mask` and `segment_ids`; the tokenizer as the first input process unit
(`BertTokenizerOptions` with the WordPiece `vocab.txt`, or `SentencePieceTokenizerOptions` with
the `.model`, as associated files). It lower-cases the text (ASCII only), tokenizes it, and
feeds `[CLS] pieces [SEP]` truncated to L, segment 0, mask 1 over the tokens, padding 0: the
model's own featurization of one lower-cased text. What it cannot feed is refused, in one line:
a cased vocabulary or a model fine-tuned on cased text, a sentence-pair task, a question
answering or token classification head, a classifier with no label names, and a SentencePiece
model whose [CLS] / [SEP] have other spellings. Unlike the project's WordPiece tokenizer,
MediaPipe's does not strip accents, so non-ASCII text can tokenize differently.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

from mobilebert_jax import files
from mobilebert_jax.export import metadata as tflite_metadata
from mobilebert_jax.export import tflite

# The model's input tensors by the metadata names MediaPipe looks them up with.
INPUT_METADATA_NAMES = {"input_ids": "ids", "input_mask": "mask", "segment_ids": "segment_ids"}
# The `serving` output (tflite.SERVING_OUTPUTS) of each task-card kind; None: an encoder.
SERVING = {"classification": "softmax", "multi_label": "sigmoid", "regression": "score",
           None: "embedding"}
LABELS_FILE = "labels.txt"
# The task card packed with the model (the checkpoint's, or an encoder's), so that
# `mobilebert_jax.predict` runs the same file with the same labels and outputs.
CARD_FILE = "task.json"


def refusal(card: dict | None, where: str) -> str | None:
    """Why MediaPipe cannot run the model a task card describes, or None."""
    if card is None:
        return None
    kind = card["kind"]
    if kind == "question_answering":
        return (f"{where} is a question answering model; MediaPipe's text tasks (TextClassifier, "
                "TextEmbedder) have no question answering head")
    if kind == "token_classification":
        return (f"{where} is a token classification (tagging) model; MediaPipe's "
                "TextClassifier labels whole texts")
    if len(card.get("text_columns") or []) > 1:
        return (f"{where} classifies sentence pairs ({' + '.join(card['text_columns'])}); "
                "MediaPipe's TextClassifier takes one text")
    if kind != "regression" and not card.get("labels"):
        return f"{where}: its task card names no labels; MediaPipe reports labels by name"
    if card.get("lower_case") is False:
        return (f"{where} was fine-tuned on cased text (lower_case=false); MediaPipe "
                "lower-cases the text it classifies")
    if card.get("best_step") is None:
        return f"{where}: its task card has no best_step yet (no evaluation has finished)"
    return None


def tokenizer_refusal(tokenizer) -> str | None:
    """Why MediaPipe cannot tokenize for this vocabulary, or None."""
    for token in ("[CLS]", "[SEP]"):
        if tokenizer.token_to_id(token) is None:
            return (f"tokenizer {tokenizer.path} has no {token} piece; MediaPipe adds [CLS] and "
                    "[SEP] by those spellings")
    cased = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)
             if not tokenizer.is_special(i)
             and any("A" <= c <= "Z" for c in tokenizer.id_to_token(i))]
    if cased:
        return (f"tokenizer {tokenizer.path} is cased (it has upper-case entries such as "
                f"{cased[0]!r}); MediaPipe lower-cases the text it tokenizes")
    return None


def model_metadata(name: str, description: str, input_names: list[str], tokenizer_file: str,
                   output_name: str, labels: bool):
    """The `ModelMetadataT` MediaPipe reads: inputs named by `INPUT_METADATA_NAMES` in the
    model's input order, the tokenizer as the input process unit, one output (with its label
    file when `labels`)."""
    metadata_fb, _ = tflite_metadata.schemas()

    def feature_tensor(tensor_name: str, description: str, associated=()):
        tensor = metadata_fb.TensorMetadataT()
        tensor.name, tensor.description = tensor_name, description
        tensor.content = metadata_fb.ContentT()
        tensor.content.contentPropertiesType = metadata_fb.ContentProperties.FeatureProperties
        tensor.content.contentProperties = metadata_fb.FeaturePropertiesT()
        tensor.associatedFiles = list(associated) or None
        return tensor

    def associated_file(file_name: str, kind: int, description: str):
        f = metadata_fb.AssociatedFileT()
        f.name, f.type, f.description = file_name, kind, description
        return f

    inputs = []
    for tensor_name in input_names:
        key = next((k for k in INPUT_METADATA_NAMES if k in tensor_name), None)
        if key is None:
            raise ValueError(f"exported model has an unexpected input tensor {tensor_name!r}")
        inputs.append(feature_tensor(INPUT_METADATA_NAMES[key], key))
    unit = metadata_fb.ProcessUnitT()
    if tokenizer_file.endswith(".model"):
        unit.optionsType = metadata_fb.ProcessUnitOptions.SentencePieceTokenizerOptions
        unit.options = metadata_fb.SentencePieceTokenizerOptionsT()
        unit.options.sentencePieceModel = [associated_file(
            tokenizer_file, metadata_fb.AssociatedFileType.DESCRIPTIONS,
            "The SentencePiece model of the tokenizer.")]
    else:
        unit.optionsType = metadata_fb.ProcessUnitOptions.BertTokenizerOptions
        unit.options = metadata_fb.BertTokenizerOptionsT()
        unit.options.vocabFile = [associated_file(
            tokenizer_file, metadata_fb.AssociatedFileType.VOCABULARY,
            "The WordPiece vocabulary of the tokenizer.")]
    label_files = [associated_file(LABELS_FILE, metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS,
                                   "The label of each score, in output order.")] if labels else []
    output = feature_tensor(output_name, "scores by label" if labels else "the pooled output",
                            label_files)

    graph = metadata_fb.SubGraphMetadataT()
    graph.inputTensorMetadata = inputs
    graph.outputTensorMetadata = [output]
    graph.inputProcessUnits = [unit]
    model = metadata_fb.ModelMetadataT()
    model.name, model.description = name, description
    model.subgraphMetadata = [graph]
    model.associatedFiles = [associated_file(
        CARD_FILE, metadata_fb.AssociatedFileType.DESCRIPTIONS,
        "The task card: what the model does, its labels in output order, its text column.")]
    return model


def mediapipe_model(config, params: dict, tokenizer, card: dict | None, seq_len: int,
                    quantize: str = "none", representative: dict | None = None,
                    float_ops: Iterable[str] = (), export_mask_mode: str | None = None
                    ) -> tuple[bytes, list[str] | None, str]:
    """(the `.tflite` with its metadata, the labels in output order or None, the output name)
    for a classifier described by `card` (None: an encoder, for TextEmbedder)."""
    kind = card["kind"] if card else None
    serving = SERVING[kind]
    model = tflite.to_tflite(config, params, seq_len, quantize, representative,
                             float_ops=float_ops, export_mask_mode=export_mask_mode,
                             serving=serving)
    labels = None
    if kind == "regression":
        labels = [card.get("name") or "score"]
    elif kind is not None:
        labels = list(card["labels"])
    output_name = tflite.output_names(params, serving)[0]
    tokenizer_name = os.path.basename(tokenizer.path)
    title = card.get("name", "text") if card else "encoder"
    description = (f"MobileBERT {kind.replace('_', '-')} text classifier ({len(labels)} "
                   f"label{'s' if len(labels) != 1 else ''}), sequence length {seq_len}"
                   if kind else f"MobileBERT text embedder (pooled output, {config.hidden_size} "
                   f"dimensions), sequence length {seq_len}")
    meta = model_metadata(title, description, tflite_metadata.input_tensor_names(model),
                          tokenizer_name, output_name, labels is not None)
    with open(tokenizer.path, "rb") as f:
        packed = {tokenizer_name: f.read()}
    packed[CARD_FILE] = json.dumps(dict(card or {"kind": "encoder", "labels": None,
                                                  "text_columns": ["text"]},
                                        max_seq_length=seq_len, lower_case=True)).encode()
    if labels is not None:
        packed[LABELS_FILE] = "".join(f"{label}\n" for label in labels).encode()
    return tflite_metadata.populate(model, meta, packed), labels, output_name


def export_mediapipe(checkpoint_dir: str, out: str, quantize: str = "none", seq_len: int = 128,
                     calibration_data: str = "gensim_wiki", num_calibration: int = 100,
                     tokenizer_path: str | None = None, float_ops: Iterable[str] | None = None,
                     export_mask_mode: str | None = None) -> dict[str, Any]:
    """Exports a fine-tuned classifier or an encoder checkpoint for MediaPipe Tasks (see the
    module docstring); returns a summary dict. Refusals are ValueErrors naming the reason."""
    from mobilebert_jax import checkpoint
    from mobilebert_jax.data.tokenizers import check_vocab, load_tokenizer
    from mobilebert_jax.export.calibration import representative_inputs

    if quantize not in tflite.QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of "
                         f"{tflite.QUANTIZE_MODES}")
    if not 2 <= seq_len <= 512:  # [CLS] and [SEP] at least
        raise ValueError(f"seq_len must be in [2, 512], got {seq_len}")
    tflite_metadata.schemas()  # the mediapipe wheel, before any work
    out = files.resolve(out)
    files.check_can_create(out)
    if not files.is_remote(out) and not os.path.isdir(os.path.dirname(out)):
        raise FileNotFoundError(f"output directory does not exist: {os.path.dirname(out)}")

    config = checkpoint.load_config(checkpoint_dir)
    card = checkpoint.load_task_card(checkpoint_dir)
    problem = refusal(card, checkpoint_dir)
    if problem:
        raise ValueError(problem)
    tok_path = tokenizer_path or checkpoint.tokenizer_file(checkpoint_dir)
    if tok_path is None:
        raise ValueError(f"{checkpoint_dir} stores no tokenizer; pass --tokenizer (MediaPipe "
                         "needs it inside the model)")
    tokenizer = load_tokenizer(tok_path)
    check_vocab(tokenizer, config.vocab_size)
    problem = tokenizer_refusal(tokenizer)
    if problem:
        raise ValueError(problem)

    step = card["best_step"] if card else None
    config, params = checkpoint.load_pretrained(checkpoint_dir, step)
    task = tflite.task_of(params)
    if card is None and task != "encoder":
        raise ValueError(
            f"{checkpoint_dir} has a {task.replace('_', ' ')} head but no task card "
            f"({checkpoint.TASK_CARD}) naming its labels; MediaPipe reports labels by name"
            if task == "classification" else
            f"{checkpoint_dir} is a question answering model; MediaPipe's text tasks have no "
            "question answering head")
    kind = card["kind"] if card else None
    if card is not None:
        width = int(params["classifier"]["kernel"].shape[-1]) if task == "classification" else 0
        want = 1 if kind == "regression" else len(card["labels"])
        if width != want:
            raise ValueError(f"{checkpoint_dir}: its task card describes {want} output(s), its "
                             f"params at step {step} have {width or 'no classifier head'}")
    representative = None
    if quantize == "int8":
        representative = representative_inputs(tokenizer, seq_len, num_calibration,
                                               calibration_data)
    float_ops, export_mask_mode = tflite.default_options(config, quantize, float_ops,
                                                         export_mask_mode)
    data, labels, output_name = mediapipe_model(config, params, tokenizer, card, seq_len,
                                                quantize, representative, float_ops,
                                                export_mask_mode)
    files.write_bytes(out, data)
    return {"out": out, "bytes": len(data), "task": kind or "encoder",
            "mediapipe_task": "TextEmbedder" if kind is None else "TextClassifier",
            "outputs": (output_name,), "labels": labels, "step": step, "quantize": quantize,
            "seq_len": seq_len, "mask_mode": export_mask_mode or config.attention_mask_mode,
            "float_ops": float_ops}
