"""Predictions on raw text from a checkpoint directory, as an app would ask for them.

    python -m mobilebert_jax.predict --checkpoint=DIR --input=FILE|- [--output=FILE]

`--checkpoint` is a fine-tuning workdir (its task card, `task.json`, says what the model does, which
labels it outputs in which order, the text columns, the maximum length and the step that
predicts: the best evaluated one) or any other project checkpoint directory (an encoder: a
teacher, a distilled student, a converted model), whose prediction is the pooled [CLS] vector.
The tokenizer is the one stored beside the params. It may also be a `.tflite` file exported
with `--format=mediapipe` (its tokenizer, labels and task card are packed inside): the same file
an app runs in MediaPipe, run here with the LiteRT interpreter, one row at a time at its length.

Input: one text per line (a plain-text file or stdin), JSON Lines (one object per line with the
card's text columns: `text`, or `text` and `text_pair` or whatever the fine-tuning named them;
`question` and `context` for a SQuAD model; `tokens` (a list of words) or `text` for a tagger),
or a CSV/TSV file with a header naming those columns. Output: one JSON object per input row,
in order, on stdout or in `--output`: the input's text columns (and its `id`, when it has one)
with

* classification: `label`, its `score` (softmax) and every label's `scores`;
* multi_label: the `labels` whose sigmoid score is at least 0.5, and every label's `scores`;
* regression: `score`;
* token_classification: `tokens` (the text split on white space) and one of `tags` per token;
* question_answering: `answer` (the text span, "" when a v2.0 model finds none) and `score`
  (its probability among the n-best spans);
* an encoder: `embedding`.

Rows are predicted in batches of `--batch_size` at the card's `max_seq_length` (the padded
shape is fixed, so the model compiles once). The same rows give the same results through
`Predictor` in Python:

    from mobilebert_jax.predict import Predictor
    Predictor.load("runs/reviews").predict([{"text": "works great"}])
"""
from __future__ import annotations

import json
import sys
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax import checkpoint, cli, files
from mobilebert_jax.data import labelled_files, model_inputs, tokenizers
from mobilebert_jax.data import squad as squad_data
from mobilebert_jax.models import qat
from mobilebert_jax.models.encoder import MobileBertModel
from mobilebert_jax.models.heads import (
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
)
from mobilebert_jax.train import finetune_tasks

ENCODER = "encoder"  # the kind of a checkpoint without a task card
DEFAULT_MAX_SEQ_LENGTH = 128  # an encoder's (or its max_position_embeddings if fewer)
TABLE_FORMATS = (".csv", ".tsv", ".jsonl", ".json")
# SQuAD decoding settings a card may lack (the fine-tuning defaults)
QA_DEFAULTS = {"version": "1.1", "doc_stride": 128, "max_query_length": 64, "n_best_size": 20,
               "max_answer_length": 30, "null_score_diff_threshold": 0.0}


def model_for(kind: str, model_config, num_labels: int):
    """The Linen model whose params a checkpoint of this kind holds."""
    if kind == ENCODER:
        return MobileBertModel(model_config)
    if kind == "question_answering":
        return MobileBertForQuestionAnswering(model_config)
    if kind == "token_classification":
        return MobileBertForTokenClassification(model_config, num_labels)
    return MobileBertForSequenceClassification(model_config, num_labels)


class Predictor:
    """A checkpoint's model, tokenizer and task card, ready to predict on records
    (`{column: text}` dicts); see the module docstring for what each kind returns."""

    def __init__(self, directory: str, card: dict, tokenizer, model_config, params,
                 batch_size: int = 32, max_seq_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.directory, self.card, self.tokenizer = directory, card, tokenizer
        self.kind = card["kind"]
        self.labels = card.get("labels") or []
        self.columns = list(card.get("text_columns") or ["text"])
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length or card.get("max_seq_length") or min(
            DEFAULT_MAX_SEQ_LENGTH, model_config.max_position_embeddings))
        if not 3 <= self.max_seq_length <= model_config.max_position_embeddings:
            raise ValueError(f"max_seq_length={self.max_seq_length}: the model takes 3 to "
                             f"{model_config.max_position_embeddings} tokens")
        self.lower_text = False
        num_labels = 1 if self.kind == "regression" else len(self.labels)
        model = model_for(self.kind, model_config, num_labels)
        if card.get("qat"):  # predicts as it was trained and evaluated: int8 fake quantization
            model = qat.quantization_aware(model)
        self.params = jax.device_put(params["bert"] if self.kind == ENCODER else params)

        def apply(params, ids, mask, segments):
            out = model.apply({"params": params}, ids, segments, mask, deterministic=True)
            if self.kind == ENCODER:
                return {"embedding": out.pooled_output.astype(jnp.float32)}
            if self.kind == "question_answering":
                return {"start_logits": out.start_logits, "end_logits": out.end_logits}
            return {"logits": out.logits}
        self._apply = jax.jit(apply)

    @classmethod
    def load(cls, directory: str, batch_size: int = 32,
             max_seq_length: int | None = None) -> Predictor:
        """The model of a project checkpoint directory, at its task card's best step (the
        latest step for an encoder), or of a `.tflite` exported for MediaPipe."""
        if str(directory).endswith(".tflite"):
            return TFLitePredictor.load(directory, max_seq_length)
        model_config = checkpoint.load_config(directory)
        card = checkpoint.load_task_card(directory)
        if card is None:
            card = {"kind": ENCODER, "labels": None, "text_columns": ["text"],
                    "lower_case": _run_lower_case(directory)}
        elif max_seq_length and max_seq_length != card.get("max_seq_length"):
            raise ValueError(f"{directory}: the model was fine-tuned at max_seq_length="
                             f"{card.get('max_seq_length')}; --max_seq_length applies to an "
                             f"encoder only")
        vocab = checkpoint.tokenizer_file(directory)
        if not vocab:
            raise ValueError(f"{directory} stores no vocab.txt or spm.model: not a checkpoint "
                             "that can read text")
        tokenizer = tokenizers.load_tokenizer(vocab, lower_case=card.get("lower_case", True))
        tokenizers.check_vocab(tokenizer, model_config.vocab_size)
        _, params = checkpoint.load_pretrained(directory)
        return cls(directory, card, tokenizer, model_config, params, batch_size,
                   max_seq_length)

    # -- inputs ----------------------------------------------------------------------------------
    def record_of(self, text: str) -> dict:
        """The record of one plain-text line (a model that reads one text)."""
        if self.kind == "question_answering" or len(self.columns) > 1:
            raise ValueError(f"this model reads {' and '.join(self.columns)}: give JSON Lines "
                             f"(one object per line with those keys) or a CSV/TSV file with "
                             f"those columns")
        return {"tokens" if self.kind == "token_classification" else self.columns[0]: text}

    def _texts(self, records: Sequence[dict], where: Sequence[str]) -> list[list]:
        """Each column's values, every record checked (a missing or empty text names its row)."""
        columns = self.columns
        if self.kind == "token_classification":
            words = []
            for record, at in zip(records, where):
                value = record.get("tokens", record.get("text"))
                if isinstance(value, str):
                    value = value.split()
                if not isinstance(value, list) or not value or not all(
                        isinstance(w, str) and w.strip() for w in value):
                    raise ValueError(f"{at}: needs 'tokens' (a list of words) or 'text' "
                                     "(words separated by spaces), not empty")
                words.append(value)
            return [words]
        values = []
        for column in columns:
            column_values = []
            for record, at in zip(records, where):
                value = record.get(column)
                if not isinstance(value, str):
                    raise ValueError(f"{at}: column {column!r} is missing" if value is None
                                     else f"{at}: column {column!r} is not text")
                if not value.strip():
                    raise ValueError(f"{at}: column {column!r} is empty")
                column_values.append(value)
            values.append(column_values)
        return values

    # -- the model ---------------------------------------------------------------------------------
    def _run(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model over all rows, in fixed-shape batches (the last one padded)."""
        n, b = len(features["input_ids"]), self.batch_size
        outs: dict[str, list] = {}
        for start in range(0, n, b):
            rows = {k: features[k][start:start + b] for k in model_inputs.INPUT_NAMES}
            real = len(rows["input_ids"])
            rows = {k: np.pad(v, ((0, b - real), (0, 0))) for k, v in rows.items()}
            out = self._apply(self.params, rows["input_ids"], rows["input_mask"],
                              rows["segment_ids"])
            for k, v in out.items():
                outs.setdefault(k, []).append(np.asarray(v)[:real])
        return {k: np.concatenate(v) for k, v in outs.items()}

    def predict(self, records: Sequence[dict], where: Sequence[str] | None = None) -> list[dict]:
        """One result dict per record, in order (`where`: each record's place, for errors)."""
        records = list(records)
        if not records:
            return []
        where = list(where or [f"record {i + 1}" for i in range(len(records))])
        texts = self._texts(records, where)
        if self.lower_text:  # as MediaPipe feeds an exported model, whatever its vocabulary
            texts = [[t.lower() for t in column] for column in texts]
        echo = [dict({c: r[c] for c in self.columns if c in r and self.kind !=
                      "token_classification"}, **({"id": r["id"]} if "id" in r else {}))
                for r in records]
        if self.kind == "token_classification":
            results = self._tag(texts[0])
        elif self.kind == "question_answering":
            results = self._answer(texts[0], texts[1])
        else:
            features = model_inputs.encode_sentences(
                self.tokenizer, texts[0], texts[1] if len(texts) > 1 else None,
                self.max_seq_length)
            out = self._run(features)
            if self.kind == ENCODER:
                results = [{"embedding": [float(x) for x in row]} for row in out["embedding"]]
            elif "scores" in out:  # an exported model computes the scores itself
                results = finetune_tasks.score_records(self.kind, self.labels, out["scores"])
            else:
                results = finetune_tasks.prediction_records(self.kind, self.labels,
                                                            out["logits"])
        return [dict(e, **r) for e, r in zip(echo, results)]

    def _tag(self, sentences: list[list[str]]) -> list[dict]:
        from mobilebert_jax.data.finetune_input import encode_words

        features, _ = encode_words(self.tokenizer, sentences, self.max_seq_length)
        logits = self._run(features)["logits"]
        return [{"tokens": words, "tags": finetune_tasks.word_tags(
                    logits[i], features["word_index"][i], len(words), self.labels)}
                for i, words in enumerate(sentences)]

    def _answer(self, questions: list[str], contexts: list[str]) -> list[dict]:
        settings = {k: self.card.get(k, v) for k, v in QA_DEFAULTS.items()}
        examples = [squad_data.SquadExample(str(i), q, c, [])
                    for i, (q, c) in enumerate(zip(questions, contexts))]
        features = squad_data.featurize_squad(
            examples, self.tokenizer, self.max_seq_length, int(settings["doc_stride"]),
            int(settings["max_query_length"]), is_training=False)
        out = self._run(features)
        answers, _, nbest = squad_data.postprocess_squad(
            examples, features, out["start_logits"], out["end_logits"],
            n_best_size=int(settings["n_best_size"]),
            max_answer_length=int(settings["max_answer_length"]),
            version=str(settings["version"]),
            null_score_diff_threshold=float(settings["null_score_diff_threshold"]))
        results = []
        for ex in examples:
            answer = answers[ex.qas_id]
            top = next((c for c in nbest[ex.qas_id] if c["text"] == answer), None)
            results.append({"answer": answer,
                            "score": float(top["probability"]) if top else 0.0})
        return results


class TFLitePredictor(Predictor):
    """A `.tflite` exported with `--format=mediapipe`, predicted as MediaPipe's TextClassifier
    / TextEmbedder runs it: the tokenizer, labels and task card packed in the file, one row
    of [1, L] int32 inputs at a time (LiteRT interpreter)."""

    def __init__(self, path: str, card: dict, tokenizer, model):
        self.directory, self.card, self.tokenizer = path, card, tokenizer
        self.kind = card["kind"]
        self.labels = card.get("labels") or []
        self.columns = list(card.get("text_columns") or ["text"])
        self.batch_size, self.lower_text = 1, True
        self.max_seq_length = int(model.input_shape[1])
        self._model = model

    @classmethod
    def load(cls, path: str, max_seq_length: int | None = None) -> TFLitePredictor:
        import tempfile
        import zipfile

        from mobilebert_jax.export import mediapipe_task
        from mobilebert_jax.export.runtime import TFLiteModel

        path = files.resolve(path)
        if not files.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        local = files.local_copy(path)
        try:
            packed = zipfile.ZipFile(local)
        except zipfile.BadZipFile:
            packed = None
        names = packed.namelist() if packed else []
        if mediapipe_task.CARD_FILE not in names:
            raise ValueError(f"{path} carries no task card: predict runs models exported with "
                             "--format=mediapipe (the plain TFLite export has no tokenizer "
                             "inside)")
        card = json.loads(packed.read(mediapipe_task.CARD_FILE))
        vocab = next((n for n in names if n == "vocab.txt" or n.endswith(".model")), None)
        if vocab is None:
            raise ValueError(f"{path} carries no vocab.txt or SentencePiece model")
        folder = tempfile.mkdtemp(prefix="mobilebert_jax_tflite_")
        with open(f"{folder}/{vocab}", "wb") as f:
            f.write(packed.read(vocab))
        tokenizer = tokenizers.load_tokenizer(f"{folder}/{vocab}", lower_case=True)
        model = TFLiteModel(local, num_threads=1)
        if max_seq_length and max_seq_length != model.input_shape[1]:
            raise ValueError(f"{path} takes {model.input_shape[1]} tokens; --max_seq_length "
                             f"cannot change an exported model")
        return cls(path, card, tokenizer, model)

    def _run(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._model.predict({k: features[k] for k in model_inputs.INPUT_NAMES})


def _run_lower_case(directory: str) -> bool:
    """Whether the run that wrote `directory` lower-cased its text (its config.json; True,
    BERT uncased, when no run config says otherwise)."""
    path = files.join(directory, "config.json")
    if files.isfile(path):
        run = files.read_json(path, "run config")
        data = run.get("data") if isinstance(run.get("data"), dict) else {}
        for value in (run.get("lower_case"), data.get("lower_case")):
            if isinstance(value, bool):
                return value
    return True


def read_records(path: str, predictor: Predictor) -> tuple[list[dict], list[str]]:
    """The records of an input file (or "-": stdin) and where each comes from (`file:line`):
    CSV/TSV/JSON Lines by extension, else one text per line (a line that is a JSON object is
    read as one)."""
    name = "<stdin>" if path == "-" else str(path)
    if path != "-" and str(path).lower().endswith(TABLE_FORMATS):
        _, rows = labelled_files.read_table(path)
        return [row for _, row in rows], [f"{name}:{line}" for line, _ in rows]
    if path == "-":
        text = sys.stdin.read()
    else:
        text = labelled_files.read_file_text(files.resolve(path))
    records, where = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{name}:{number}: not a JSON object")
        else:
            record = predictor.record_of(line.strip())
        records.append(record)
        where.append(f"{name}:{number}")
    return records, where


def write_records(results: Iterable[dict], output: str | None) -> int:
    """JSON Lines on stdout, or written atomically to `output`; returns the count."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in results]
    if output:
        files.write_text(output, "".join(lines))
    else:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    return len(lines)


def parse_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mobilebert_jax.predict",
                                     description="Predict on raw text with a checkpoint.")
    parser.add_argument("--checkpoint", required=True,
                        help="A fine-tuning workdir (or any project checkpoint: embeddings).")
    parser.add_argument("--input", required=True,
                        help="Text lines, JSON Lines, CSV or TSV file; '-' reads stdin.")
    parser.add_argument("--output", default=None, help="JSON Lines file (default: stdout).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=None,
                        help="An encoder's input length (default 128; a fine-tuned model "
                        "uses its own).")
    return parser.parse_args(argv)


@cli.guarded
def main(argv=None) -> int:
    args = parse_args(list(sys.argv if argv is None else argv)[1:])
    predictor = Predictor.load(args.checkpoint, args.batch_size, args.max_seq_length)
    records, where = read_records(args.input, predictor)
    if not records:
        raise ValueError(f"{args.input}: holds no text to predict on")
    count = write_records(predictor.predict(records, where), args.output)
    if args.output:
        print(f"wrote {args.output} ({count} predictions, {predictor.kind}, "
              f"step {predictor.card.get('best_step', 'latest')})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
