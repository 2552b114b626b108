"""SQuAD v1.1 and v2.0 exact-match and F1, as the official evaluation scripts define them.

Both versions normalize an answer by lower-casing it, removing punctuation, removing the
articles "a", "an" and "the", and collapsing whitespace; a question's score is the maximum over
its gold answers.

* v1.1 (`squad_v1_scores`): every question in the data set counts; a question without a
  prediction scores 0. The result holds `exact_match` and `f1` on a 0-100 scale.
* v2.0 (`squad_v2_scores`): gold answers that normalize to nothing are dropped and a question
  left without any has the single gold answer "" (no answer); an empty prediction and an empty
  gold token list match only each other. Questions without a prediction are left out. With
  null odds (the model's "no answer" score per question) a prediction is replaced by "no answer"
  when its odds exceed `na_prob_thresh`, and the best thresholds for exact match and F1 are
  searched. Keys: exact, f1, total, HasAns_*, NoAns_* (each present when the data set has such
  questions), and best_exact, best_exact_thresh, best_f1, best_f1_thresh (with null odds).

`squad_scores` picks the version from the data set's "version" field.
"""
from __future__ import annotations

import collections
import re
import string
import sys
from typing import Any, Mapping

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-cases, drops punctuation and articles, and collapses whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(prediction: str, gold: str) -> int:
    """1 when the normalized prediction equals the normalized gold answer, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score_v1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the v1.1 script (0 when nothing overlaps, also for two empty answers)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score_v2(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the v2.0 script: an empty side scores 1 only against an empty side."""
    pred_tokens = _answer_tokens(prediction)
    gold_tokens = _answer_tokens(gold)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _iter_questions(dataset: Any):
    """Yields each question dict of a SQuAD `data` list, checking the layout on the way."""
    if not isinstance(dataset, list):
        raise ValueError("SQuAD data must be a list of articles (the JSON's 'data' field)")
    for a_idx, article in enumerate(dataset):
        if not isinstance(article, dict) or "paragraphs" not in article:
            raise ValueError(f"SQuAD article {a_idx} has no 'paragraphs' key")
        for p_idx, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or "qas" not in paragraph:
                raise ValueError(f"SQuAD article {a_idx} paragraph {p_idx} has no 'qas' key")
            for qa in paragraph["qas"]:
                for key in ("id", "answers"):
                    if not isinstance(qa, dict) or key not in qa:
                        where = qa.get("id", "?") if isinstance(qa, dict) else "?"
                        raise ValueError(
                            f"SQuAD question {where} (article {a_idx}, paragraph {p_idx}) "
                            f"has no '{key}' key")
                yield qa


def _answer_texts(qa: Mapping[str, Any]) -> list[str]:
    texts = []
    for answer in qa["answers"]:
        if not isinstance(answer, dict) or "text" not in answer:
            raise ValueError(f"SQuAD question {qa['id']} has an answer without a 'text' key")
        texts.append(answer["text"])
    return texts


def squad_v1_scores(dataset: Any, predictions: Mapping[str, str],
                    warn_missing: bool = True) -> dict[str, float]:
    """The v1.1 script's result: {"exact_match": ..., "f1": ...} on a 0-100 scale.

    Args:
      dataset: the JSON's `data` list (articles → paragraphs → qas).
      predictions: question id → predicted answer text.
      warn_missing: print one line to stderr per question without a prediction.
    """
    exact = f1 = 0.0
    total = 0
    for qa in _iter_questions(dataset):
        total += 1
        if qa["id"] not in predictions:
            if warn_missing:
                print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
            continue
        golds = _answer_texts(qa)
        if not golds:
            continue
        prediction = predictions[qa["id"]]
        exact += max(exact_score(prediction, g) for g in golds)
        f1 += max(f1_score_v1(prediction, g) for g in golds)
    if total == 0:
        raise ValueError("SQuAD data holds no questions")
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _raw_v2_scores(dataset: Any, predictions: Mapping[str, str], warn_missing: bool):
    """Per-question exact and F1 (before thresholds) and question id → has an answer."""
    exact, f1, has_answer = {}, {}, {}
    for qa in _iter_questions(dataset):
        qid = qa["id"]
        golds = _answer_texts(qa)
        has_answer[qid] = bool(golds)
        golds = [g for g in golds if normalize_answer(g)] or [""]
        if qid not in predictions:
            if warn_missing:
                print(f"Missing prediction for {qid}", file=sys.stderr)
            continue
        prediction = predictions[qid]
        exact[qid] = max(exact_score(prediction, g) for g in golds)
        f1[qid] = max(f1_score_v2(prediction, g) for g in golds)
    return exact, f1, has_answer


def _apply_null_threshold(scores, null_odds, has_answer, threshold):
    return {
        qid: (float(not has_answer[qid]) if null_odds[qid] > threshold else score)
        for qid, score in scores.items()
    }


def _summary(exact, f1, qids=None) -> dict[str, float]:
    qids = list(exact) if qids is None else qids
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def _best_threshold(predictions, scores, null_odds, has_answer):
    """Sweeps the null-odds threshold; returns (best score in %, threshold)."""
    current = sum(1 for qid in has_answer if not has_answer[qid])
    best, best_thresh = current, 0.0
    for qid in sorted(null_odds, key=lambda q: null_odds[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_thresh = current, null_odds[qid]
    return 100.0 * best / len(scores), best_thresh


def squad_v2_scores(dataset: Any, predictions: Mapping[str, str],
                    null_odds: Mapping[str, float] | None = None,
                    na_prob_thresh: float = 1.0,
                    warn_missing: bool = True) -> dict[str, float]:
    """The v2.0 script's result (see the module docstring for the keys).

    Args:
      dataset: the JSON's `data` list (articles → paragraphs → qas).
      predictions: question id → predicted answer text ("" for no answer).
      null_odds: question id → no-answer score; when given, the best thresholds are searched.
      na_prob_thresh: predict "no answer" where the null odds exceed this value.
      warn_missing: print one line to stderr per question without a prediction.
    """
    exact_raw, f1_raw, has_answer = _raw_v2_scores(dataset, predictions, warn_missing)
    if not exact_raw:
        raise ValueError("no SQuAD question has a prediction")
    odds = {qid: 0.0 for qid in predictions} if null_odds is None else dict(null_odds)
    missing = [qid for qid in exact_raw if qid not in odds]
    if missing:
        raise ValueError(f"null odds lack question {missing[0]} ({len(missing)} missing)")
    exact = _apply_null_threshold(exact_raw, odds, has_answer, na_prob_thresh)
    f1 = _apply_null_threshold(f1_raw, odds, has_answer, na_prob_thresh)
    result = _summary(exact, f1)
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, has in has_answer.items() if has == wanted and q in exact]
        if qids:
            for key, value in _summary(exact, f1, qids).items():
                result[f"{prefix}_{key}"] = value
    if null_odds is not None:
        best_exact, exact_thresh = _best_threshold(predictions, exact_raw, odds, has_answer)
        best_f1, f1_thresh = _best_threshold(predictions, f1_raw, odds, has_answer)
        result.update(best_exact=best_exact, best_exact_thresh=exact_thresh,
                      best_f1=best_f1, best_f1_thresh=f1_thresh)
    return result


def dataset_version(squad_json: Mapping[str, Any]) -> str:
    """"1.1" or "2.0" from a SQuAD JSON's "version" field (or its questions when it has none)."""
    version = str(squad_json.get("version", "")).lstrip("v")
    if version.startswith("2"):
        return "2.0"
    if version.startswith("1"):
        return "1.1"
    for qa in _iter_questions(squad_json.get("data", [])):
        if "is_impossible" in qa:
            return "2.0"
    return "1.1"


def _question_ids(dataset: Any, source: str) -> set[str]:
    """The question ids of the JSON's `data` list; ValueError naming the first place where
    the official layout (articles → paragraphs → qas with an id) is not followed."""
    ids = set()
    for a, article in enumerate(dataset if isinstance(dataset, list) else [None]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise ValueError(f"{source}: data[{a}] has no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise ValueError(f"{source}: data[{a}].paragraphs[{p}] has no 'qas' list")
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict) or "id" not in qa:
                    raise ValueError(f"{source}: data[{a}].paragraphs[{p}].qas[{q}] has no "
                                     "'id'")
                ids.add(qa["id"])
    return ids


def squad_scores(squad_json: Mapping[str, Any], predictions: Mapping[str, str],
                 null_odds: Mapping[str, float] | None = None,
                 version: str | None = None, na_prob_thresh: float = 1.0,
                 warn_missing: bool = True, source: str = "SQuAD JSON") -> dict[str, float]:
    """Scores predictions against a loaded SQuAD JSON with the script of its version.

    A v1.1 data set is scored as v1.1 unless null odds are given or `version="2.0"`;
    `na_prob_thresh` applies to v2.0 scoring. `source` names the data in error messages.
    """
    if not isinstance(squad_json, Mapping) or "data" not in squad_json:
        raise ValueError(f"{source}: no 'data' key")
    if not isinstance(predictions, Mapping):
        raise ValueError("SQuAD predictions must be a JSON object of question id → answer text")
    bad = next((q for q, text in predictions.items() if not isinstance(text, str)), None)
    if bad is not None:
        raise ValueError(f"SQuAD prediction for question {bad} is not a string")
    known = _question_ids(squad_json["data"], source)
    if warn_missing:
        for what, ids in (("predictions", predictions), ("null odds", null_odds or {})):
            unknown = sorted(set(ids) - known)
            if unknown:  # the official scripts ignore them silently
                print(f"warning: ignored {len(unknown)} of {len(ids)} {what} whose question "
                      f"id is not in the data (first: {unknown[0]})", file=sys.stderr)
    if version is None:
        version = "2.0" if null_odds is not None else dataset_version(squad_json)
    version = version.lstrip("v")
    if version == "1.1":
        return squad_v1_scores(squad_json["data"], predictions, warn_missing)
    if version == "2.0":
        return squad_v2_scores(squad_json["data"], predictions, null_odds, na_prob_thresh,
                               warn_missing=warn_missing)
    raise ValueError(f"unknown SQuAD version {version!r} (expected '1.1' or '2.0')")
