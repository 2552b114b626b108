"""Inputs of the fine-tuning trainer: tokenizer, examples, features, batches.

* `resolve_tokenizer` picks the tokenizer (config field `tokenizer`, else the vocab stored in
  the init checkpoint directory) and checks it against the model's vocabulary size.
* `GlueData` / `SquadData` / `TextData` (your own CSV/TSV/JSON Lines) / `TaggingData` (CoNLL)
  hold the featurized train and eval sets (and the test sets whose predictions are written).
* `epoch_order` is the example order of one epoch (a permutation from seed and epoch), shared
  with the HF benchmark so both frameworks see the same batches; `batches` cuts features into
  fixed-size batches, padding the last one with zero-weight rows.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

from mobilebert_jax import checkpoint, files
from mobilebert_jax.console import log
from mobilebert_jax.data import glue as glue_data
from mobilebert_jax.data import labelled_files, model_inputs, tokenizers
from mobilebert_jax.data import squad as squad_data

# The nine GLUE tasks one fine-tunes on (the diagnostic set ax is scored with an MNLI model).
GLUE_FINETUNE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
MODEL_INPUTS = ("input_ids", "input_mask", "segment_ids")


def glue_task(name: str) -> glue_data.GlueTask:
    """The registry entry of a fine-tuning task; a one-line error for anything else."""
    task = glue_data.get_task(name)
    if task.name not in GLUE_FINETUNE_TASKS:
        raise ValueError(f"task {task.name!r} is not a fine-tuning task (expected one of "
                         f"{', '.join(GLUE_FINETUNE_TASKS)}; ax is scored with an MNLI model)")
    return task


def resolve_tokenizer(config, vocab_size: int) -> tokenizers.Tokenizer:
    """`config.tokenizer`, or the tokenizer file stored in `config.init_checkpoint`."""
    path = config.get("tokenizer", "") or checkpoint.tokenizer_file(config.init_checkpoint)
    if not path:
        raise ValueError(f"checkpoint {config.init_checkpoint} stores no vocab.txt or spm.model; "
                         "set --config.tokenizer=PATH (the vocabulary the model was trained with)")
    tokenizer = tokenizers.load_tokenizer(path, lower_case=config.get("lower_case", True))
    tokenizers.check_vocab(tokenizer, vocab_size)
    return tokenizer


def epoch_order(num_examples: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the training features (seeded permutation)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


def batch_at(features: dict[str, np.ndarray], order: Sequence[int], index: int,
             batch_size: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Batch `index` of `keys` in `order`, plus `weights` (1 for real rows, 0 for the padding
    rows that fill the last batch to `batch_size`)."""
    order = np.asarray(order)
    idx = order[index * batch_size:(index + 1) * batch_size]
    real = len(idx)
    if real < batch_size:
        idx = np.concatenate([idx, np.full(batch_size - real, idx[0])])
    batch = {k: features[k][idx] for k in keys}
    weights = np.zeros(batch_size, np.float32)
    weights[:real] = 1.0
    batch["weights"] = weights
    return batch


def batches(features: dict[str, np.ndarray], order: Sequence[int], batch_size: int,
            keys: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """All batches of `order` (see `batch_at`)."""
    for index in range(num_batches(len(order), batch_size)):
        yield batch_at(features, order, index, batch_size, keys)


def num_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


# -- GLUE ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class GlueSplit:
    name: str
    examples: list[glue_data.GlueExample]
    features: dict[str, np.ndarray]


@dataclasses.dataclass
class GlueData:
    task: glue_data.GlueTask
    train: GlueSplit
    dev: list[GlueSplit]
    test: list[GlueSplit]


def _glue_split(task, data_dir: str, split: str, tokenizer, max_seq_length: int,
                limit: int = 0) -> GlueSplit:
    examples = glue_data.load_glue(task, data_dir, split)
    if limit:
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"{split} split of task {task.name} in {data_dir} holds no examples")
    features = glue_data.featurize_glue(examples, tokenizer, max_seq_length, task)
    return GlueSplit(split, examples, features)


def load_glue_data(config, tokenizer) -> GlueData:
    """Train, dev and (where the files exist) test sets of `config.task`, featurized.

    `config.train_subset` / `config.eval_subset` (0: all) keep the first N examples.
    """
    task = glue_task(config.task)
    if not config.data_dir:
        raise ValueError(f"config.data_dir is not set: pass --config.data_dir=GLUE_DIR (the GLUE "
                         f"root with {task.dir_name}/train.tsv and dev.tsv, as GLUE's download "
                         f"script lays it out) or --config.data_dir=tfds (TFDS {task.tfds_name}, "
                         f"prepared with `tfds build {task.tfds_name}`)")
    data_dir = config.data_dir if config.data_dir == "tfds" else files.resolve(config.data_dir)
    if data_dir != "tfds" and not files.isdir(data_dir):
        raise FileNotFoundError(f"GLUE data_dir not found: {data_dir}")
    seq = int(config.max_seq_length)
    train = _glue_split(task, data_dir, task.train_splits[0], tokenizer, seq,
                        int(config.get("train_subset", 0)))
    dev = [_glue_split(task, data_dir, s, tokenizer, seq, int(config.get("eval_subset", 0)))
           for s in task.dev_splits]
    test = []
    if config.get("predict_test", True):
        for split in task.test_splits:
            try:
                test.append(_glue_split(task, data_dir, split, tokenizer, seq))
            except FileNotFoundError:
                continue
    return GlueData(task, train, dev, test)


# -- SQuAD ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class SquadSplit:
    squad_json: dict
    examples: list[squad_data.SquadExample]
    features: dict[str, np.ndarray]


@dataclasses.dataclass
class SquadData:
    version: str
    train: SquadSplit
    eval: SquadSplit
    test: SquadSplit | None


def squad_version(version: Any) -> str:
    text = str(version).lstrip("v")
    if text not in ("1.1", "2.0"):
        raise ValueError(f"unknown SQuAD version {version!r} (expected 1.1 or 2.0)")
    return text


def _articles(squad_json: dict, start: int, stop: int | None) -> dict:
    return {"version": squad_json.get("version", "1.1"), "data": squad_json["data"][start:stop]}


def _squad_split(squad_json: dict, version: str, tokenizer, config,
                 is_training: bool, where: str) -> SquadSplit:
    try:
        examples = squad_data.parse_squad_json(squad_json, version)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not examples:
        raise ValueError(f"{where} holds no questions")
    if is_training:
        examples = squad_data.training_examples(examples, where)
    features = squad_data.featurize_squad(
        examples, tokenizer, int(config.max_seq_length), int(config.doc_stride),
        int(config.max_query_length), is_training=is_training)
    if not len(features["input_ids"]):
        raise ValueError(f"{where}: no question could be featurized for training")
    return SquadSplit(squad_json, examples, features)


def load_squad_data(config, tokenizer) -> SquadData:
    """Train and eval sets from `train_file` / `eval_file` (defaults: `train-v<V>.json` and
    `dev-v<V>.json` in `data_dir`). With `train_articles` > 0 both come from `train_file`:
    its first `train_articles` articles train, the next `eval_articles` (0: all the rest)
    evaluate. `predict_file` (optional) is predicted with the best checkpoint;
    `train_subset` > 0 keeps that many training windows, drawn at random with `seed`."""
    version = squad_version(config.version)
    if not config.data_dir and not (config.train_file and (config.eval_file
                                                            or config.train_articles)):
        raise ValueError(f"config.data_dir is not set: pass --config.data_dir=SQUAD_DIR (holding "
                         f"train-v{version}.json and dev-v{version}.json from the SQuAD site) or "
                         f"--config.train_file and --config.eval_file")
    data_dir = files.resolve(config.data_dir)
    train_file = files.resolve(config.train_file or files.join(data_dir, f"train-v{version}.json"))
    eval_file = files.resolve(config.eval_file or files.join(data_dir, f"dev-v{version}.json"))
    train_json = squad_data.read_squad_json(train_file)
    n_train, n_eval = int(config.train_articles), int(config.eval_articles)
    if n_train > 0:
        if n_train >= len(train_json["data"]):
            raise ValueError(f"train_articles={n_train} leaves no article of {train_file} "
                             f"({len(train_json['data'])} articles) for evaluation")
        eval_json = _articles(train_json, n_train, n_train + n_eval if n_eval else None)
        train_json = _articles(train_json, 0, n_train)
        eval_file = f"{train_file} (articles {n_train}..)"
    else:
        eval_json = squad_data.read_squad_json(eval_file)
    train = _squad_split(train_json, version, tokenizer, config, True, str(train_file))
    keep = int(config.get("train_subset", 0))
    if 0 < keep < len(train.features["input_ids"]):
        # N training windows drawn at random (seeded), so that they span all the articles
        rng = np.random.default_rng(int(config.seed))
        idx = np.sort(rng.choice(len(train.features["input_ids"]), keep, replace=False))
        train.features = {k: v[idx] for k, v in train.features.items()}
    evaluation = _squad_split(eval_json, version, tokenizer, config, False, str(eval_file))
    test = None
    if config.get("predict_file", ""):
        path = files.resolve(config.predict_file)
        test = _squad_split(squad_data.read_squad_json(path), version, tokenizer, config, False,
                            path)
    return SquadData(version, train, evaluation, test)


# -- your own files: sentence classification, multi-label, regression ----------------------------
@dataclasses.dataclass
class TextSplit:
    name: str
    path: str
    examples: list
    features: dict[str, np.ndarray]


@dataclasses.dataclass
class TextData:
    labels: list[str] | None  # output order; None for regression
    train: TextSplit
    dev: TextSplit
    test: TextSplit | None


def _text_targets(examples, problem: str, labels: list[str] | None) -> np.ndarray:
    if problem == "regression":
        return np.array([ex.target for ex in examples], np.float32)
    index = {name: i for i, name in enumerate(labels)}
    if problem == "classification":
        return np.array([index[ex.target] for ex in examples], np.int32)
    multi_hot = np.zeros((len(examples), len(labels)), np.float32)
    for row, ex in enumerate(examples):
        multi_hot[row, [index[n] for n in ex.target]] = 1.0
    return multi_hot


def _text_split(name: str, path: str, examples, tokenizer, config,
                labels: list[str] | None, labelled: bool = True) -> TextSplit:
    features = model_inputs.encode_sentences(
        tokenizer, [ex.text_a for ex in examples], [ex.text_b for ex in examples],
        int(config.max_seq_length))
    if labelled:
        features["labels"] = _text_targets(examples, config.problem, labels)
    return TextSplit(name, path, examples, features)


def held_out_split(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, dev rows): a seeded `fraction` of the rows held out, at least one each."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"dev_fraction={fraction} must be in (0, 1) when there is no dev_file")
    n_dev = min(max(1, int(round(fraction * num_examples))), num_examples - 1)
    if n_dev < 1:
        raise ValueError(f"{num_examples} training example(s) cannot be split for a dev set; "
                         f"give a dev_file")
    order = np.random.default_rng(int(seed)).permutation(num_examples)
    return np.sort(order[n_dev:]), np.sort(order[:n_dev])


def load_text_data(config, tokenizer) -> TextData:
    """Train, dev (`dev_file`, or a seeded `dev_fraction` of `train_file`) and optional test
    sets of your own CSV/TSV/JSON Lines files, featurized; label names from the training file."""
    if not config.train_file:
        raise ValueError("config.train_file is not set: pass --config.train_file=FILE "
                         "(CSV, TSV or JSON Lines with a header / keys naming the columns)")
    problem = config.problem
    pair = config.text_pair_column

    def read(path, labelled=True):
        return labelled_files.read_examples(
            files.resolve(path), config.text_column, pair, config.label_column, problem,
            config.data_format, config.encoding, config.label_separator, labelled)

    train_path = files.resolve(config.train_file)
    train = read(train_path)
    labels = None if problem == "regression" else labelled_files.label_names(train, problem)
    if labels is not None and problem == "classification" and len(labels) < 2:
        raise ValueError(f"{train_path}: column {config.label_column!r} holds one label only "
                         f"({labels[0]!r}); classification needs at least two")
    if labels is not None and not labels:
        raise ValueError(f"{train_path}: column {config.label_column!r} holds no labels")
    if config.dev_file:
        dev_path = files.resolve(config.dev_file)
        dev = read(dev_path)
        if labels is not None:
            labelled_files.check_known_labels(dev_path, dev, labels, config.label_column, problem)
    else:
        keep, held = held_out_split(len(train), float(config.dev_fraction), int(config.seed))
        dev_path = f"{train_path} (held-out {len(held)} rows, seed {config.seed})"
        train, dev = [train[i] for i in keep], [train[i] for i in held]
    if int(config.get("train_subset", 0)):
        train = train[:int(config.train_subset)]
    test = None
    if config.test_file:
        test_path = files.resolve(config.test_file)
        test = _text_split("test", test_path, read(test_path, labelled=False), tokenizer,
                           config, labels, labelled=False)
    return TextData(labels, _text_split("train", str(train_path), train, tokenizer, config,
                                        labels),
                    _text_split("dev", str(dev_path), dev, tokenizer, config, labels), test)


# -- your own files: token classification (CoNLL) ------------------------------------------------
@dataclasses.dataclass
class TaggingData:
    labels: list[str]
    train: TextSplit
    dev: TextSplit
    test: TextSplit | None


def encode_words(tokenizer, sentences: Sequence[Sequence[str]], max_seq_length: int,
                 tags: Sequence[Sequence[int]] | None = None) -> tuple[dict, np.ndarray]:
    """Word-piece inputs of pre-split sentences `[CLS] pieces [SEP]`; `labels` [N, S] hold
    each word's tag id on its first piece and -1 elsewhere (all -1 without `tags`). Returns the
    features and the number of words of each sentence that fit (the rest are cut)."""
    n = len(sentences)
    flat = [w for words in sentences for w in words]
    pieces = tokenizer.encode_batch(flat)
    input_ids = np.full((n, max_seq_length), tokenizer.pad_id, np.int32)
    input_mask = np.zeros((n, max_seq_length), np.int32)
    labels = np.full((n, max_seq_length), -1, np.int32)
    first_piece = np.full((n, max_seq_length), -1, np.int32)  # word index on its first piece
    kept = np.zeros(n, np.int64)
    k = 0
    for i, words in enumerate(sentences):
        tokens = [tokenizer.cls_id]
        for j in range(len(words)):
            word = pieces[k + j] or [tokenizer.unk_id]
            if len(tokens) + len(word) > max_seq_length - 1:
                break
            first_piece[i, len(tokens)] = j
            if tags is not None:
                labels[i, len(tokens)] = tags[i][j]
            tokens.extend(word)
            kept[i] = j + 1
        k += len(words)
        tokens.append(tokenizer.sep_id)
        input_ids[i, :len(tokens)] = tokens
        input_mask[i, :len(tokens)] = 1
    features = {"input_ids": input_ids, "input_mask": input_mask,
                "segment_ids": np.zeros_like(input_ids), "labels": labels,
                "word_index": first_piece}
    return features, kept


def _tagging_split(name: str, path: str, sentences, tokenizer, config,
                   labels: list[str]) -> TextSplit:
    index = {t: i for i, t in enumerate(labels)}
    tags = None
    if sentences[0].tags is not None:
        tags = []
        for s in sentences:
            unknown = next((t for t in s.tags if t not in index), None)
            if unknown is not None:
                raise ValueError(f"{path}:{s.line}: tag {unknown!r} (in this sentence) is not "
                                 f"among the training file's tags ({', '.join(labels[:10])})")
            tags.append([index[t] for t in s.tags])
    features, kept = encode_words(tokenizer, [s.words for s in sentences],
                                  int(config.max_seq_length), tags)
    cut = int(sum(len(s.words) - k for s, k in zip(sentences, kept)))
    if cut:
        log(f"{path}: {cut} words past max_seq_length={config.max_seq_length} word pieces are "
            f"cut ({int(np.sum(kept < [len(s.words) for s in sentences]))} sentences) and "
            f"predicted as {labels[0]!r}; raise max_seq_length to keep them")
    return TextSplit(name, path, sentences, features)


def tag_names(sentences) -> list[str]:
    """The tags of the training sentences: "O" first, then the rest sorted by entity type and
    prefix (B- before I-)."""
    names = {t for s in sentences for t in s.tags}
    return sorted(names, key=lambda t: (t != "O", t[2:] if t[1:2] == "-" else t, t))


def load_tagging_data(config, tokenizer) -> TaggingData:
    """Train, dev (`dev_file` or a seeded `dev_fraction`) and optional test sentences of CoNLL
    files, featurized; tag names from the training file."""
    if not config.train_file:
        raise ValueError("config.train_file is not set: pass --config.train_file=FILE "
                         "(CoNLL: one token and its tag per line, a blank line between "
                         "sentences)")
    train_path = files.resolve(config.train_file)
    train = labelled_files.read_conll(train_path, config.encoding)
    labels = tag_names(train)
    if config.dev_file:
        dev_path = files.resolve(config.dev_file)
        dev = labelled_files.read_conll(dev_path, config.encoding)
    else:
        keep, held = held_out_split(len(train), float(config.dev_fraction), int(config.seed))
        dev_path = f"{train_path} (held-out {len(held)} sentences, seed {config.seed})"
        train, dev = [train[i] for i in keep], [train[i] for i in held]
    if int(config.get("train_subset", 0)):
        train = train[:int(config.train_subset)]
    test = None
    if config.test_file:
        test_path = files.resolve(config.test_file)
        test = _tagging_split("test", test_path, labelled_files.read_conll(
            test_path, config.encoding, tagged=False), tokenizer, config, labels)
    return TaggingData(labels, _tagging_split("train", str(train_path), train, tokenizer, config,
                                              labels),
                       _tagging_split("dev", str(dev_path), dev, tokenizer, config, labels), test)
