"""Entity-level scores of tagging (NER) predictions, as `seqeval` computes them (the CoNLL
definition: an entity counts when its type and its span both match; IOB1/IOB2/IOE/IOBES tags
read in seqeval's default mode)."""
from __future__ import annotations

from typing import Sequence

from seqeval import metrics as seqeval_metrics


def entity_metrics(gold: Sequence[Sequence[str]],
                   predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity precision, recall, F1 (micro over entity types) and token accuracy."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    if not gold:
        raise ValueError("no sentences to score")
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} words")
    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    return {"precision": float(seqeval_metrics.precision_score(gold, predicted,
                                                               zero_division=0)),
            "recall": float(seqeval_metrics.recall_score(gold, predicted, zero_division=0)),
            "f1": float(seqeval_metrics.f1_score(gold, predicted, zero_division=0)),
            "accuracy": float(seqeval_metrics.accuracy_score(gold, predicted))}
