"""A vocabulary for your own language or domain, trained on the corpus pretraining reads:

    python -m mobilebert_jax.data.vocab --corpus=text:my/*.txt --kind=wordpiece \\
        --size=30522 --out=DIR [--overwrite] [--lower_case=false]

`--corpus` takes the specs `data.prepare` and the trainers' `data.corpus` take (read and
decoded the same way, `corpus.py`). The corpus's sentences train:

* `wordpiece`: the `tokenizers` library's BERT WordPiece trainer (`BertWordPieceTokenizer`:
  BERT's normalizer, lower-casing and accent stripping with `--lower_case`, punctuation and CJK
  splitting, `##` continuation pieces) with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4; writes
  DIR/vocab.txt. The trainers read WordPiece text lower-cased (BERT uncased), as does
  `data.prepare` unless `--lower_case=false`.
* `sentencepiece`: a unigram SentencePiece model (`tokenizers.train_sentencepiece`, the same
  special tokens at ids 0-4); writes DIR/spm.model and DIR/spm.vocab.

DIR is what `--config.data.tokenizer=DIR` (teacher pretraining), `data.prepare --tokenizer=DIR`
and the fine-tuning configs' `tokenizer` take; a pretraining run whose `model.vocab_size` is not
given on the command line takes its size from the tokenizer (main.py). The vocabulary may come
out smaller than `--size` when the corpus holds fewer distinct pieces; it says so. DIR is built
in a temporary directory beside it and renamed into place: an existing non-empty DIR is
replaced only with `--overwrite`, and a failed run leaves nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Iterator, Sequence

from mobilebert_jax import cli, files
from mobilebert_jax.data import corpus as corpus_lib
from mobilebert_jax.data import tokenizers

KINDS = ("wordpiece", "sentencepiece")
SENTENCEPIECE_NAME = "spm"  # DIR/spm.model: the name checkpoints store it under


def _sentences(specs) -> Iterator[str]:
    for doc in corpus_lib.iter_documents(specs):
        yield from doc


def _train_wordpiece(specs, size: int, lower_case: bool, out: str) -> None:
    from tokenizers import BertWordPieceTokenizer

    # strip_accents=None follows lower_case, as BERT's BasicTokenizer and WordPieceTokenizer do
    tok = BertWordPieceTokenizer(lowercase=lower_case, strip_accents=None, clean_text=True,
                                 handle_chinese_chars=True, wordpieces_prefix="##")
    tok.train_from_iterator(_sentences(specs), vocab_size=size, min_frequency=2,
                            special_tokens=list(tokenizers.SPECIAL_TOKENS), show_progress=False,
                            wordpieces_prefix="##")
    tok.save_model(out)


def _train_sentencepiece(specs, size: int, out: str) -> None:
    text = os.path.join(out, ".sentences.txt")
    with open(text, "w", encoding="utf-8") as f:
        for sentence in _sentences(specs):
            f.write(sentence.replace("\n", " ") + "\n")
    try:
        # hard_vocab_limit off: a smaller vocabulary than asked when the corpus is small
        tokenizers.train_sentencepiece([text], os.path.join(out, SENTENCEPIECE_NAME), size,
                                       extra_options={"hard_vocab_limit": False})
    finally:
        os.remove(text)


def train_vocab(corpus_spec: str, kind: str, size: int, out_dir: str, overwrite: bool = False,
                lower_case: bool = True) -> tokenizers.Tokenizer:
    """Trains a `kind` vocabulary of at most `size` entries on `corpus_spec` into `out_dir`
    (module docstring); returns it loaded."""
    if kind not in KINDS:
        raise ValueError(f"--kind={kind!r}: expected one of {', '.join(KINDS)}")
    if size <= len(tokenizers.SPECIAL_TOKENS):
        raise ValueError(f"--size={size} must exceed the {len(tokenizers.SPECIAL_TOKENS)} "
                         "special tokens")
    if files.is_remote(out_dir):
        raise ValueError(f"--out={out_dir}: write the vocabulary to a local directory (copy it "
                         "to the bucket after)")
    out_dir = os.path.abspath(files.resolve(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty (pass --overwrite to "
                              "replace it)")
    specs = corpus_lib.parse_corpus_specs(corpus_spec)
    files.check_can_create(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        if kind == "wordpiece":
            _train_wordpiece(specs, size, lower_case, staging)
        else:
            _train_sentencepiece(specs, size, staging)
        os.chmod(staging, 0o755)
        old = None
        if os.path.lexists(out_dir):
            old = f"{out_dir}.old-{os.getpid()}"
            os.rename(out_dir, old)
        os.rename(staging, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizers.load_tokenizer(out_dir, lower_case=lower_case)


def _define_flags():
    from absl import flags

    flags.DEFINE_string("corpus", None, "Corpus spec, as data.prepare takes it: sources "
                        "separated by ';': gensim_wiki[:PATH], text:PATH[,PATH...]"
                        "[,encoding=NAME], wiki_articles:PATH[,...], "
                        "tfds:NAME[:SPLIT[:KEY]][@DATA_DIR].")
    flags.DEFINE_enum("kind", "wordpiece", KINDS, "Vocabulary kind.")
    flags.DEFINE_integer("size", 30522, "Vocabulary size (at most; special tokens included).")
    flags.DEFINE_string("out", None, "Output directory (local).")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.")
    flags.DEFINE_bool("lower_case", True, "Lower-case and strip accents (WordPiece).")
    return flags.FLAGS


@cli.guarded
def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # gensim's and tfds's INFO lines
    f = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected argument {argv[1]!r}")
    if not f.corpus:
        raise ValueError("--corpus is required (the corpus spec data.prepare reads)")
    if not f.out:
        raise ValueError("--out is required")
    start = time.perf_counter()
    tok = train_vocab(f.corpus, f.kind, f.size, f.out, overwrite=f.overwrite,
                      lower_case=f.lower_case)
    short = f" (the corpus holds fewer pieces than --size={f.size})" \
        if tok.vocab_size < f.size else ""
    print(f"wrote {os.path.dirname(tok.path)}: {f.kind} vocabulary of {tok.vocab_size} entries"
          f"{short} in {time.perf_counter() - start:.1f} s; use it with "
          f"--config.data.tokenizer={os.path.dirname(tok.path)}")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
