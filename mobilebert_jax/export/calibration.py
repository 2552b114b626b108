"""Calibration text for full-integer export: real inputs tokenized with the checkpoint's
tokenizer, from the Wikipedia sample in the gensim wheel or a GLUE task directory."""
from __future__ import annotations

import os

import numpy as np

from mobilebert_jax.export.runtime import INPUT_NAMES


def representative_inputs(tokenizer, seq_len: int, num_examples: int = 100,
                          source: str = "gensim_wiki", seed: int = 0) -> dict[str, np.ndarray]:
    """Real inputs for int8 calibration: `num_examples` rows of [CLS] a [SEP] (b [SEP]).

    `source`: "gensim_wiki" (sentence pairs of varied length from the Wikipedia sample in the
    gensim wheel) or a GLUE task directory (e.g. /data/glue/SST-2; its train.tsv, else dev.tsv).
    """
    from mobilebert_jax.data import glue

    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    rng = np.random.default_rng(seed)
    if source == "gensim_wiki":
        examples = _wiki_examples(rng, num_examples, seq_len)
    else:
        task = _glue_task_of_dir(source)
        split = "train" if os.path.isfile(os.path.join(source, "train.tsv")) else "dev"
        pool = glue.load_glue(task, source, split)
        idx = rng.choice(len(pool), size=min(num_examples, len(pool)), replace=False)
        examples = [pool[i] for i in idx]
    feats = glue.featurize_glue(examples, tokenizer, seq_len)
    return {n: feats[n] for n in INPUT_NAMES}


def _wiki_examples(rng: np.random.Generator, num_examples: int, seq_len: int) -> list:
    """Word spans of Wikipedia text, their lengths spread from a few words to past `seq_len`
    tokens (so calibration sees padded and full rows), half of them split into pairs."""
    from mobilebert_jax.data.corpus import iter_documents
    from mobilebert_jax.data.glue import GlueExample

    examples = []
    for doc in iter_documents("gensim_wiki"):
        words = " ".join(doc).split()
        i = 0
        while len(examples) < num_examples:
            n = int(rng.integers(4, max(5, seq_len)))
            if i + n > len(words):
                break
            span, i = words[i:i + n], i + n
            cut = int(rng.integers(1, n)) if rng.random() < 0.5 else n
            examples.append(GlueExample(f"wiki-{len(examples)}", " ".join(span[:cut]),
                                        " ".join(span[cut:]) or None, None))
        if len(examples) >= num_examples:
            break
    if not examples:
        raise ValueError("the gensim Wikipedia sample yielded no text")
    return examples


def _glue_task_of_dir(path: str) -> str:
    from mobilebert_jax.data import glue

    if not os.path.isdir(path):
        raise FileNotFoundError(f"calibration data directory not found: {path}")
    return glue.get_task(os.path.basename(os.path.normpath(path))).name
