"""SQuAD v1.1 / v2.0: reading, featurization into model windows, and answer postprocessing.

* `read_squad` reads the official JSON (or a prepared TFDS `squad/v1.1`, `squad/v2.0`) into
  `SquadExample`s; `to_squad_json` turns examples back into the official layout for scoring.
* `featurize_squad` cuts each example into `[CLS] question [SEP] context-window [SEP]` features
  (BERT's sliding windows: max_seq_length 384, doc_stride 128, max_query_length 64). Answer
  spans are mapped to tokens through the tokenizer's character offsets, and each feature keeps
  its token → character offsets and BERT's "token is max context" flags (a token counts in the
  window where it has the most context on its shorter side, ties going to the first window).
* `postprocess_squad` turns start/end logits into answer texts (n-best 20, max answer length
  30; for v2.0 the null-score threshold), cut from the original context by character offsets;
  `write_predictions` writes `predictions.json`, `null_odds.json` and `nbest_predictions.json`
  in the official format.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mobilebert_jax import files

# Null odds recorded for a question whose features offer no valid answer span at all.
NO_SPAN_NULL_ODDS = 1e6


@dataclasses.dataclass
class SquadExample:
    """One question; `answers` holds (text, start character) pairs ([] when impossible)."""

    qas_id: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    is_impossible: bool = False
    title: str = ""


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"SQuAD JSON: {where} has no '{key}' key")
    return mapping[key]


def _normalize_version(version: str | None) -> str | None:
    if version is None:
        return None
    version = str(version).lstrip("v")
    if version not in ("1.1", "2.0"):
        raise ValueError(f"unknown SQuAD version {version!r} (expected '1.1' or '2.0')")
    return version


def parse_squad_json(squad_json: Any, version: str | None = None) -> list[SquadExample]:
    """Examples from a loaded official SQuAD JSON; `version` defaults to the file's own."""
    data = _require(squad_json, "data", "the top level")
    if version is None:
        file_version = str(squad_json.get("version", "1.1")).lstrip("v")
        version = "2.0" if file_version.startswith("2") else "1.1"
    version = _normalize_version(version)
    if not isinstance(data, list):
        raise ValueError("SQuAD JSON: 'data' must be a list of articles")
    examples = []
    for a_idx, article in enumerate(data):
        paragraphs = _require(article, "paragraphs", f"article {a_idx}")
        title = article.get("title", "")
        for p_idx, paragraph in enumerate(paragraphs):
            where = f"article {a_idx} paragraph {p_idx}"
            context = _require(paragraph, "context", where)
            for qa in _require(paragraph, "qas", where):
                qid = _require(qa, "id", f"a question of {where}")
                question = _require(qa, "question", f"question {qid}")
                answers = []
                for answer in _require(qa, "answers", f"question {qid}"):
                    text = _require(answer, "text", f"an answer of question {qid}")
                    start = _require(answer, "answer_start", f"an answer of question {qid}")
                    answers.append((text, int(start)))
                impossible = bool(qa.get("is_impossible", False)) if version == "2.0" else False
                if impossible:
                    answers = []
                elif not answers:
                    if version == "1.1":
                        raise ValueError(f"SQuAD JSON: question {qid} has no answers "
                                         "(v1.1 questions always have one)")
                    impossible = True
                examples.append(SquadExample(str(qid), question, context, answers,
                                             impossible, title))
    return examples


def answer_in_place(example: SquadExample) -> bool:
    """Whether some answer of a question has its text at its `answer_start` in the context (an
    impossible question, which has none, counts as in place)."""
    return example.is_impossible or any(
        text and example.context[start:start + len(text)] == text
        for text, start in example.answers)


def training_examples(examples: Sequence[SquadExample], where: str) -> list[SquadExample]:
    """The questions of training file `where` whose answer is where the file says it is; the
    others (answer text not at its `answer_start`: a file whose offsets count something else,
    or whose context was edited) are skipped and reported in one line, and a file none of
    whose questions is usable is refused."""
    from mobilebert_jax.console import log

    kept = [ex for ex in examples if answer_in_place(ex)]
    skipped = [ex for ex in examples if not answer_in_place(ex)]
    if not kept:
        raise ValueError(f"{where}: none of its {len(examples)} questions has its answer text at "
                         f"its answer_start in the context (first: {skipped[0].qas_id}); "
                         "answer_start counts characters of the context from 0")
    if skipped:
        log(f"warning: {where}: skipped {len(skipped)} of {len(examples)} training questions "
            f"whose answer text is not at its answer_start (first: {skipped[0].qas_id})")
    return kept


def _read_squad_tfds(version: str, split: str, data_dir: str | None) -> list[SquadExample]:
    import tensorflow_datasets as tfds

    builder = tfds.builder(f"squad/v{version}", data_dir=data_dir)
    try:
        dataset = tfds.as_numpy(builder.as_dataset(split=split))
    except AssertionError:  # what TFDS raises for a data set that was never prepared
        raise FileNotFoundError(f"TFDS dataset squad/v{version} is not prepared in "
                                f"{builder.data_dir}; prepare it with tfds build first") from None
    examples = []
    for row in dataset:
        texts = [t.decode("utf-8") for t in row["answers"]["text"]]
        starts = [int(s) for s in row["answers"]["answer_start"]]
        impossible = bool(row.get("is_impossible", False))
        id_ = row["id"]
        examples.append(SquadExample(
            id_.decode("utf-8") if isinstance(id_, bytes) else str(id_),
            row["question"].decode("utf-8"), row["context"].decode("utf-8"),
            [] if impossible else list(zip(texts, starts)), impossible,
            row["title"].decode("utf-8")))
    return examples


def read_squad_json(path: os.PathLike | str) -> dict:
    """The loaded official SQuAD JSON file, with one-line errors for a missing or malformed
    file."""
    data = files.read_json(str(path), "SQuAD file")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: SQuAD JSON needs a top-level 'data' list of articles")
    return data


def read_squad(path: os.PathLike | str, version: str | None = None, split: str = "validation",
               tfds_data_dir: str | None = None) -> list[SquadExample]:
    """Reads SQuAD from the official JSON file at `path`, or from TFDS when `path` is "tfds".

    `version` ("1.1" or "2.0") defaults to the JSON's "version" field (and to "1.1" for TFDS);
    `split` and `tfds_data_dir` apply to TFDS only. Raises FileNotFoundError for a missing file
    and ValueError naming the place of a missing key.
    """
    if str(path) == "tfds":
        return _read_squad_tfds(_normalize_version(version) or "1.1", split, tfds_data_dir)
    return parse_squad_json(read_squad_json(path), version)


def to_squad_json(examples: Sequence[SquadExample], version: str = "1.1") -> dict:
    """The official JSON layout of `examples` (one paragraph per question), for scoring."""
    version = _normalize_version(version)
    articles = []
    for ex in examples:
        qa = {"id": ex.qas_id, "question": ex.question,
              "answers": [{"text": t, "answer_start": s} for t, s in ex.answers]}
        if version == "2.0":
            qa["is_impossible"] = ex.is_impossible
        articles.append({"title": ex.title, "paragraphs": [{"context": ex.context,
                                                             "qas": [qa]}]})
    return {"version": "1.1" if version == "1.1" else "v2.0", "data": articles}


def _doc_spans(num_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """BERT's sliding windows over the context: (start, length) pairs."""
    spans, start = [], 0
    while True:
        length = min(num_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= num_tokens:
            return spans
        start += min(length, doc_stride)


def _max_context_owner(spans: Sequence[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """For each context token, the index of the window in which it has the most context."""
    scores = np.full((len(spans), max(num_tokens, 1)), -np.inf)
    for i, (start, length) in enumerate(spans):
        pos = np.arange(length)
        scores[i, start:start + length] = np.minimum(pos, length - 1 - pos) + 0.01 * length
    return scores.argmax(axis=0)


def _answer_char_span(example: SquadExample,
                      doc_offsets: np.ndarray) -> tuple[int, int] | None:
    """(start, end) characters of the training answer in the context.

    An answer is placed at its given offset when its text is there on token boundaries, else
    at the nearest occurrence of its text on token boundaries (offsets in some files point into
    a longer word). The first answer that can be placed so is used; failing that, the nearest
    occurrence of the first answer found anywhere.
    """
    starts, ends = set(doc_offsets[:, 0].tolist()), set(doc_offsets[:, 1].tolist())
    fallback = None
    for text, start in example.answers:
        if not text:
            continue
        hits, pos = [], example.context.find(text)
        while pos >= 0:
            hits.append(pos)
            pos = example.context.find(text, pos + 1)
        aligned = [h for h in hits if h in starts and h + len(text) in ends]
        if aligned:
            best = min(aligned, key=lambda h: abs(h - start))
            return best, best + len(text)
        if hits and fallback is None:
            best = min(hits, key=lambda h: abs(h - start))
            fallback = (best, best + len(text))
    return fallback


def featurize_squad(examples: Sequence[SquadExample], tokenizer, max_seq_length: int = 384,
                    doc_stride: int = 128, max_query_length: int = 64,
                    is_training: bool = False) -> dict[str, np.ndarray]:
    """Model windows of SQuAD examples (see the module docstring).

    Returns, for N features: `input_ids`, `input_mask`, `segment_ids` int32 [N, L];
    `example_index` int32 [N] (position of the feature's example in `examples`);
    `offset_mapping` int32 [N, L, 2] (character span in the context, -1 for non-context
    tokens); `token_is_max_context` bool [N, L]; and when `is_training`, `start_positions` and
    `end_positions` int32 [N] (0, the [CLS] index, for an impossible question or an answer not
    inside the window). Training examples whose answer text is not in the context are dropped.
    """
    if max_query_length <= 0:
        raise ValueError(f"max_query_length must be positive, got {max_query_length}")
    if doc_stride <= 0:
        raise ValueError(f"doc_stride must be positive, got {doc_stride}")
    questions = tokenizer.encode_batch([ex.question for ex in examples])
    contexts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for ex in examples:
        if ex.context not in contexts:
            ids, offsets = tokenizer.encode_with_offsets(ex.context)
            contexts[ex.context] = (np.asarray(ids, dtype=np.int32),
                                    np.asarray(offsets, dtype=np.int32).reshape(-1, 2))
    rows: dict[str, list] = {k: [] for k in ("input_ids", "segment_ids", "offset_mapping",
                                             "token_is_max_context", "example_index",
                                             "lengths", "start_positions", "end_positions")}
    dropped = 0
    for ex_idx, ex in enumerate(examples):
        query = np.asarray(questions[ex_idx][:max_query_length], dtype=np.int32)
        doc_ids, doc_offsets = contexts[ex.context]
        answer_tokens = None
        if is_training and not ex.is_impossible and ex.answers:
            char_span = _answer_char_span(ex, doc_offsets)
            if char_span is not None:
                first = int(np.searchsorted(doc_offsets[:, 1], char_span[0], side="right"))
                last = int(np.searchsorted(doc_offsets[:, 0], char_span[1], side="left")) - 1
                if first <= last:
                    answer_tokens = (first, last)
            if answer_tokens is None:
                dropped += 1
                continue
        prefix = len(query) + 2
        if max_seq_length - prefix - 1 <= 0:
            raise ValueError(f"max_seq_length={max_seq_length} leaves no room for the context "
                             f"after the {len(query)}-token question {ex.qas_id}")
        spans = _doc_spans(len(doc_ids), max_seq_length - prefix - 1, doc_stride)
        owner = _max_context_owner(spans, len(doc_ids))
        for span_idx, (start, length) in enumerate(spans):
            total = prefix + length + 1
            ids = np.concatenate([[tokenizer.cls_id], query, [tokenizer.sep_id],
                                  doc_ids[start:start + length], [tokenizer.sep_id]])
            types = np.zeros(total, dtype=np.int32)
            types[prefix:] = 1
            offsets = np.full((total, 2), -1, dtype=np.int32)
            offsets[prefix:prefix + length] = doc_offsets[start:start + length]
            max_context = np.zeros(total, dtype=bool)
            max_context[prefix:prefix + length] = owner[start:start + length] == span_idx
            start_pos = end_pos = 0
            if answer_tokens is not None:
                first, last = answer_tokens
                if start <= first and last < start + length:
                    start_pos, end_pos = first - start + prefix, last - start + prefix
            for key, value in (("input_ids", ids), ("segment_ids", types),
                               ("offset_mapping", offsets), ("token_is_max_context", max_context),
                               ("example_index", ex_idx), ("lengths", total),
                               ("start_positions", start_pos), ("end_positions", end_pos)):
                rows[key].append(value)
    if dropped:
        logging.warning("dropped %d training questions whose answer is not in the context",
                        dropped)
    return _pad_features(rows, max_seq_length, tokenizer.pad_id, is_training)


def _pad_features(rows: Mapping[str, list], max_seq_length: int, pad_id: int,
                  is_training: bool) -> dict[str, np.ndarray]:
    n = len(rows["lengths"])
    out = {
        "input_ids": np.full((n, max_seq_length), pad_id, dtype=np.int32),
        "input_mask": np.zeros((n, max_seq_length), dtype=np.int32),
        "segment_ids": np.zeros((n, max_seq_length), dtype=np.int32),
        "offset_mapping": np.full((n, max_seq_length, 2), -1, dtype=np.int32),
        "token_is_max_context": np.zeros((n, max_seq_length), dtype=bool),
    }
    for i, length in enumerate(rows["lengths"]):
        out["input_ids"][i, :length] = rows["input_ids"][i]
        out["input_mask"][i, :length] = 1
        out["segment_ids"][i, :length] = rows["segment_ids"][i]
        out["offset_mapping"][i, :length] = rows["offset_mapping"][i]
        out["token_is_max_context"][i, :length] = rows["token_is_max_context"][i]
    out["example_index"] = np.asarray(rows["example_index"], dtype=np.int32)
    if is_training:
        out["start_positions"] = np.asarray(rows["start_positions"], dtype=np.int32)
        out["end_positions"] = np.asarray(rows["end_positions"], dtype=np.int32)
    return out


def _feature_candidates(start_logits: np.ndarray, end_logits: np.ndarray,
                        context: np.ndarray, max_context: np.ndarray, n_best_size: int,
                        max_answer_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Valid (start, end) pairs among the top-n start and end positions of one feature."""
    starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
    ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    s, e = np.meshgrid(starts, ends, indexing="ij")
    valid = (context[s] & context[e] & max_context[s] & (e >= s)
             & (e - s + 1 <= max_answer_length))
    return s[valid], e[valid]


def _softmax(scores: Sequence[float]) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def postprocess_squad(examples: Sequence[SquadExample], features: Mapping[str, np.ndarray],
                      start_logits: Any, end_logits: Any, n_best_size: int = 20,
                      max_answer_length: int = 30, version: str = "1.1",
                      null_score_diff_threshold: float = 0.0
                      ) -> tuple[dict[str, str], dict[str, float], dict[str, list[dict]]]:
    """Answer texts from span logits, as BERT's SQuAD prediction writer picks them.

    For each question, the top `n_best_size` start and end positions of each of its features
    form candidate spans (inside the context, start in a token's max-context window, end not
    before start, at most `max_answer_length` tokens); candidates are ranked by start + end
    logit and their text is cut from the original context by character offsets. For v2.0 the
    no-answer score is the smallest [CLS] start + end logit over the features; the question is
    answered "" when that score exceeds the best non-empty span's by more than
    `null_score_diff_threshold`.

    Returns (predictions: id → text, null_odds: id → null score minus best span score (empty
    for v1.1), nbest: id → list of {text, probability, start_logit, end_logit}).
    """
    version = _normalize_version(version)
    start_logits = np.asarray(start_logits, dtype=np.float32)
    end_logits = np.asarray(end_logits, dtype=np.float32)
    n_features = len(features["example_index"])
    if start_logits.shape != end_logits.shape or start_logits.shape[0] != n_features:
        raise ValueError(f"logits of shapes {start_logits.shape} and {end_logits.shape} do not "
                         f"match {n_features} features")
    if start_logits.shape[1] != features["offset_mapping"].shape[1]:
        raise ValueError(f"logits have {start_logits.shape[1]} positions, features "
                         f"{features['offset_mapping'].shape[1]}")
    is_context = features["offset_mapping"][:, :, 0] >= 0
    max_context = features["token_is_max_context"]
    offsets = features["offset_mapping"]
    by_example: dict[int, list[int]] = {}
    for f_idx, ex_idx in enumerate(features["example_index"].tolist()):
        by_example.setdefault(ex_idx, []).append(f_idx)
    predictions, null_odds, nbest_all = {}, {}, {}
    for ex_idx, example in enumerate(examples):
        candidates = []  # (score, start_logit, end_logit, text or None for the null answer)
        null = None
        for f_idx in by_example.get(ex_idx, []):
            sl, el = start_logits[f_idx], end_logits[f_idx]
            if version == "2.0":
                null_score = float(sl[0] + el[0])
                if null is None or null_score < null[0]:
                    null = (null_score, float(sl[0]), float(el[0]))
            for s, e in zip(*_feature_candidates(sl, el, is_context[f_idx], max_context[f_idx],
                                                 n_best_size, max_answer_length)):
                text = example.context[offsets[f_idx, s, 0]:offsets[f_idx, e, 1]]
                candidates.append((float(sl[s] + el[e]), float(sl[s]), float(el[e]), text))
        if null is not None:
            candidates.append((null[0], null[1], null[2], ""))
        candidates.sort(key=lambda c: -c[0])
        nbest, seen = [], set()
        for score, s_logit, e_logit, text in candidates:
            if len(nbest) >= n_best_size:
                break
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": s_logit, "end_logit": e_logit})
        if null is not None and "" not in seen:
            nbest.append({"text": "", "start_logit": null[1], "end_logit": null[2]})
        if not nbest:
            nbest.append({"text": "", "start_logit": 0.0, "end_logit": 0.0})
        probs = _softmax([c["start_logit"] + c["end_logit"] for c in nbest])
        nbest_all[example.qas_id] = [
            {"text": c["text"], "probability": float(p), "start_logit": c["start_logit"],
             "end_logit": c["end_logit"]} for c, p in zip(nbest, probs)]
        if version == "1.1":
            predictions[example.qas_id] = nbest[0]["text"]
            continue
        best = next((c for c in nbest if c["text"]), None)
        if best is None:
            null_odds[example.qas_id] = NO_SPAN_NULL_ODDS
            predictions[example.qas_id] = ""
            continue
        null_score = null[0] if null is not None else -np.inf
        diff = null_score - best["start_logit"] - best["end_logit"]
        null_odds[example.qas_id] = float(diff)
        predictions[example.qas_id] = "" if diff > null_score_diff_threshold else best["text"]
    return predictions, null_odds, nbest_all


def write_predictions(out_dir: os.PathLike | str, predictions: Mapping[str, str],
                      null_odds: Mapping[str, float] | None = None,
                      nbest: Mapping[str, list] | None = None) -> dict[str, Any]:
    """Writes `predictions.json` (and `null_odds.json`, `nbest_predictions.json` when given)
    into `out_dir` (a local path or a URI), each atomically. Returns the paths."""
    files.makedirs(out_dir)
    out = files.resolve(out_dir)
    outputs = {"predictions": ("predictions.json", predictions)}
    if null_odds:
        outputs["null_odds"] = ("null_odds.json", null_odds)
    if nbest:
        outputs["nbest"] = ("nbest_predictions.json", nbest)
    for name, obj in outputs.values():
        files.write_text(files.join(out, name),
                         json.dumps(dict(obj), indent=2, ensure_ascii=False) + "\n")
    return {key: files.epath_of(files.join(out, name)) for key, (name, _) in outputs.items()}
