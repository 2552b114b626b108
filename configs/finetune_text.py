"""Fine-tuning on your own labelled files from any project checkpoint directory.

    python -m mobilebert_jax.main --config=configs/finetune_text.py --workdir=DIR \\
        --config.init_checkpoint=CKPT_DIR --config.train_file=train.csv

Sentence-level files are CSV, TSV (a header row names the columns) or JSON Lines (one object
per line), local or gs://; `text_column` (and `text_pair_column` for pairs) hold the text,
`label_column` the target:
* classification (the default): one label per row; the label names come from the training
  file (sorted; numerically when all are integers) and are stored in the workdir's task.json;
* multi_label: several labels per row (a JSON list, or names separated by `label_separator`);
  sigmoid outputs, binary cross-entropy; micro/macro F1;
* regression: a number per row; squared error; Pearson/Spearman.
The variant `token_classification` (or `--config.problem=token_classification`) tags words
(NER) from CoNLL files: one token per line with its tag in the last column, a blank line
between sentences; entity F1 as seqeval scores it; predictions written back as CoNLL.
Without a `dev_file`, a seeded `dev_fraction` of the training rows is held out. The recipe is
the GLUE one (docs/finetuning.md).
"""
import ml_collections

from mobilebert_jax.config_defaults import finetune_fields


def get_config(problem: str = "") -> ml_collections.ConfigDict:
    config = finetune_fields(ml_collections.ConfigDict())
    config.trainer = "finetune_text"
    # classification | multi_label | regression | token_classification (checked by the trainer)
    config.problem = problem or "classification"
    config.task_name = ""  # a name for logs and the task card (empty: "text" / "tagging")
    config.train_file = ""  # required
    config.dev_file = ""  # empty: dev_fraction of the training rows, held out with `seed`
    config.test_file = ""  # optional: predictions written to WORKDIR/test_predictions.*
    config.dev_fraction = 0.1
    config.data_format = ""  # csv | tsv | jsonl; empty: from the file's extension
    config.encoding = ""  # empty: UTF-8, or detected for files that are not (see docs/data.md)
    config.text_column = "text"
    config.text_pair_column = ""  # set for sentence-pair tasks
    config.label_column = "label"
    config.label_separator = ","  # multi_label in CSV/TSV: "sports,politics"
    return config
