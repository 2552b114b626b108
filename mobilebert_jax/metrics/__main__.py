"""Scores saved predictions with no model in the loop; prints the metrics as JSON.

SQuAD (the official scripts' output; v1.1 data gives `exact_match` and `f1`, v2.0 data or any
data scored with null odds gives `exact`, `f1`, `total`, the HasAns_/NoAns_ breakdown and, with
null odds, the best thresholds):

    python -m mobilebert_jax.metrics squad --data=dev-v2.0.json \\
        --predictions=predictions.json [--null_odds=null_odds.json] [--version=2.0]

GLUE (the task's metrics, see `metrics/glue.py`):

    python -m mobilebert_jax.metrics glue --task=mrpc --data=dev.tsv --predictions=P [--split=dev]

A GLUE predictions file is either the submission TSV (an `index<TAB>prediction` header, then one
row per example; rows are matched to the data file's examples by index: the file's index/id
column, or the 0-based row number for files without one), or plain text with one prediction per
line in the data file's order. A prediction is a label name ("entailment"), a label id ("0"), or
a score for STS-B. The data file's split is taken from its name (dev.tsv, dev_matched.tsv, ...)
unless --split is given.

Bad input prints `error: ...` and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from mobilebert_jax import cli, files


def _load_json(path: str, what: str):
    return files.read_json(str(path), f"{what} file")


def _score_squad(args: argparse.Namespace) -> dict:
    from mobilebert_jax.metrics.squad import squad_scores

    data = _load_json(args.data, "SQuAD data")
    predictions = _load_json(args.predictions, "predictions")
    null_odds = _load_json(args.null_odds, "null odds") if args.null_odds else None
    if null_odds is not None and not isinstance(null_odds, dict):
        raise ValueError(f"{args.null_odds} must hold a JSON object of question id → odds")
    return squad_scores(data, predictions, null_odds, version=args.version,
                        na_prob_thresh=args.na_prob_thresh, source=str(args.data))


def _score_glue(args: argparse.Namespace) -> dict:
    from mobilebert_jax.data.glue import get_task, read_glue_predictions, read_glue_tsv
    from mobilebert_jax.metrics.glue import glue_metrics

    task = get_task(args.task)
    split = args.split
    if split is None:
        stem = pathlib.Path(args.data).stem
        split = stem if stem in task.splits else (task.dev_splits or task.splits)[0]
    examples = read_glue_tsv(args.data, task, split)
    if any(ex.label is None for ex in examples):
        raise ValueError(f"{args.data} has no labels (split {split!r}); score a dev file")
    predictions = read_glue_predictions(args.predictions, task, examples)
    return glue_metrics(task, predictions, [ex.label for ex in examples], split=split)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mobilebert_jax.metrics",
        description="Score saved SQuAD or GLUE predictions; prints JSON.")
    commands = parser.add_subparsers(dest="command", required=True)
    squad = commands.add_parser("squad", help="official SQuAD v1.1 / v2.0 scores")
    squad.add_argument("--data", required=True, help="SQuAD JSON (dev-v1.1.json, dev-v2.0.json)")
    squad.add_argument("--predictions", required=True, help="predictions.json (id → text)")
    squad.add_argument("--null_odds", default=None, help="null_odds.json (id → no-answer odds)")
    squad.add_argument("--version", choices=("1.1", "2.0"), default=None,
                       help="scoring script to follow (default: the data file's version)")
    squad.add_argument("--na_prob_thresh", type=float, default=1.0,
                       help="v2.0: predict no answer where the null odds exceed this")
    glue = commands.add_parser("glue", help="GLUE task metrics")
    glue.add_argument("--task", required=True, help="cola, sst2, mrpc, stsb, qqp, mnli, ...")
    glue.add_argument("--data", required=True, help="the task's labelled TSV (e.g. dev.tsv)")
    glue.add_argument("--predictions", required=True,
                      help="submission TSV or one prediction per line")
    glue.add_argument("--split", default=None,
                      help="split of --data (default: from its file name, else dev)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _score_squad(args) if args.command == "squad" else _score_glue(args)
    except cli.EXPECTED as e:
        return cli.fail(e)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
