"""Corpus sources for pretraining: each yields documents, a document being a list of sentences.

Sources, selected by a `--corpus` spec string (`parse_corpus_spec`):

* `gensim_wiki[:PATH]` - the embedded default: the English Wikipedia sample shipped inside the
  `gensim` wheel (or another `pages-articles*.xml.bz2` dump at PATH), parsed with gensim's
  `extract_pages` + `filter_wiki`; redirects and pages under 50 words are skipped.
* `text:PATH[,PATH...]` - plain text in BERT's layout: one sentence or paragraph per line, a
  blank line between documents. PATH may be a glob.
* `wiki_articles:PATH[,PATH...]` - articles that start with a `= Title =` line, then one
  paragraph per line (the layout of `shared/data/text/wiki_sample.txt`).
* `tfds:NAME[:SPLIT[:TEXT_KEY]][@DATA_DIR]` - a prepared TFDS text dataset, e.g.
  `tfds:wikipedia/20230601.en:train:text`; each example is one document whose lines are
  paragraphs. Nothing is downloaded.

Lines and paragraphs are split into sentences by `split_sentences`, a small regex splitter:
a sentence ends at `.`, `!` or `?` (plus closing quotes/brackets) followed by whitespace and an
upper-case letter, digit or opening quote, unless the word before the stop is a known
abbreviation (Mr., Dr., e.g., ...) or a single capital initial (J. R. R. Tolkien).
"""
from __future__ import annotations

import bz2
import dataclasses
import glob
import hashlib
import os
import re
import sys
from typing import Iterator

Document = list[str]

GENSIM_WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_ARTICLE_WORDS = 50
MIN_WIKI_LINE_WORDS = 3
MAX_BAD_LINE_FRACTION = 0.1  # lines not UTF-8 text, above which a file is refused

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig figs no nos vol vols ed eds "
    "approx ca c inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec gen col "
    "lt sgt capt rev gov sen rep u.s u.k a.d b.c p pp ph.d op".split())
# A candidate boundary: terminal punctuation, optional closers, whitespace, then a likely
# sentence start.
_BOUNDARY = re.compile(r"""([.!?]+)(["'\u201d\u2019)\]]*)(\s+)(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
_WORD_BEFORE = re.compile(r"(\S+)$")
_WIKI_TITLE = re.compile(r"^\s*=\s+(.*?)\s+=\s*$")
_WIKI_HEADING = re.compile(r"^\s*=+.*=+\s*$")
_WIKI_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_WIKI_QUOTES = re.compile(r"'{2,}")
# NAME[:SPLIT[:TEXT_KEY]]; a split may hold a slice with colons, e.g. train[:1%].
_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+)(?::(?P<split>[^:\[]*(?:\[[^\]]*\])?))?"
                        r"(?::(?P<key>[^:]+))?$")
_SPEC_KINDS = ("gensim_wiki", "text", "wiki_articles", "tfds")


def split_sentences(text: str) -> list[str]:
    """Splits a paragraph into sentences with the regex rules in the module docstring."""
    text = " ".join(text.split())
    if not text:
        return []
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if m.group(1) == ".":
            word = _WORD_BEFORE.search(text, start, m.start())
            prev = word.group(1).lstrip("\"'(\u201c\u2018[") if word else ""
            if prev.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", prev):
                continue
        end = m.start(3)
        sentences.append(text[start:end])
        start = m.end()
    sentences.append(text[start:])
    return [s for s in sentences if s]


def _paragraphs_to_document(paragraphs: list[str]) -> Document:
    return [s for p in paragraphs for s in split_sentences(p)]


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A parsed `--corpus` value: `kind` is one of gensim_wiki, text, wiki_articles, tfds."""

    kind: str
    paths: tuple[str, ...] = ()
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_text_key: str = "text"
    tfds_data_dir: str | None = None


def parse_corpus_spec(spec: str) -> CorpusSpec:
    """Parses a `--corpus` spec string (forms in the module docstring)."""
    spec = (spec or "").strip()
    kind, _, rest = spec.partition(":")
    if kind not in _SPEC_KINDS:
        raise ValueError(f"unknown corpus spec {spec!r}: expected gensim_wiki[:PATH], "
                         "text:PATH[,PATH...], wiki_articles:PATH[,PATH...] or "
                         "tfds:NAME[:SPLIT[:TEXT_KEY]][@DATA_DIR]")
    if kind == "gensim_wiki":
        if rest:
            return CorpusSpec(kind, paths=(os.path.expanduser(rest),))
        from gensim.test.utils import datapath
        return CorpusSpec(kind, paths=(datapath(GENSIM_WIKI_SAMPLE),))
    if kind == "tfds":
        rest, _, data_dir = rest.partition("@")
        m = _TFDS_SPEC.match(rest)
        if not m:
            raise ValueError(f"bad corpus spec {spec!r}: expected tfds:NAME[:SPLIT[:TEXT_KEY]]")
        return CorpusSpec(kind, tfds_name=m["name"], tfds_split=m["split"] or "train",
                          tfds_text_key=m["key"] or "text",
                          tfds_data_dir=os.path.expanduser(data_dir) if data_dir else None)
    patterns = [p.strip() for p in rest.split(",") if p.strip()]
    if not patterns:
        raise ValueError(f"corpus spec {spec!r} names no file")
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if glob.has_magic(pattern):
            matched = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matched:
                raise FileNotFoundError(f"corpus pattern {pattern} matches no file")
            paths.extend(matched)
        else:
            if not os.path.isfile(pattern):
                raise FileNotFoundError(f"corpus file {pattern} does not exist")
            paths.append(pattern)
    return CorpusSpec(kind, paths=tuple(paths))


def read_text_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 text file. A line that is not UTF-8 (or holds a NUL byte) is
    skipped, and the count is reported on stderr at the end of the file; a file where more than
    `MAX_BAD_LINE_FRACTION` of the lines are such is refused as not text (a binary file)."""
    bad, total, first_bad = 0, 0, None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            total += 1
            try:
                if b"\0" in raw:
                    raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), 1, "NUL byte")
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
                first_bad = first_bad or number
                if bad > 100 and bad > MAX_BAD_LINE_FRACTION * total:
                    break  # refused below: no need to read the rest
                continue
            yield line
    if bad > MAX_BAD_LINE_FRACTION * total:
        raise ValueError(f"{path}: not a UTF-8 text file ({bad} of the first {total} lines "
                         f"are not UTF-8 text, from line {first_bad})")
    if bad:
        print(f"warning: {path}: skipped {bad} of {total} lines that are not UTF-8 text "
              f"(first: line {first_bad})", file=sys.stderr)


def iter_text_documents(paths: tuple[str, ...] | list[str]) -> Iterator[Document]:
    """Documents of plain text files in BERT's layout (a blank line ends a document)."""
    for path in paths:
        doc: Document = []
        for line in read_text_lines(path):
            if not line.strip():
                if doc:
                    yield doc
                doc = []
            else:
                doc.extend(split_sentences(line))
        if doc:
            yield doc


def iter_wiki_article_documents(paths: tuple[str, ...] | list[str]) -> Iterator[Document]:
    """Documents of `= Title =` article files (one paragraph per line; title not included)."""
    for path in paths:
        doc: Document = []
        for line in read_text_lines(path):
            if _WIKI_TITLE.match(line):
                if doc:
                    yield doc
                doc = []
            elif line.strip():
                doc.extend(split_sentences(line))
        if doc:
            yield doc


def clean_wiki_markup(text: str) -> list[str]:
    """Paragraphs of a `filter_wiki` output: headings, list markers, leftover ''/''' quotes
    and lines under MIN_WIKI_LINE_WORDS words removed."""
    paragraphs = []
    for line in text.splitlines():
        if _WIKI_HEADING.match(line):
            continue
        line = _WIKI_QUOTES.sub("", _WIKI_LIST_MARKER.sub("", line.strip()))
        line = " ".join(line.split())
        if len(line.split()) >= MIN_WIKI_LINE_WORDS:
            paragraphs.append(line)
    return paragraphs


def iter_gensim_wiki_documents(path: str) -> Iterator[Document]:
    """Articles of a Wikipedia XML `.bz2` dump, parsed with gensim's wiki utilities."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Wikipedia dump {path} does not exist")
    try:
        with bz2.open(path, "rb") as f:
            for _, text, _ in extract_pages(f, filter_namespaces=("0",)):
                if not text or text.lstrip().lower().startswith("#redirect"):
                    continue
                paragraphs = clean_wiki_markup(filter_wiki(text))
                if sum(len(p.split()) for p in paragraphs) < MIN_ARTICLE_WORDS:
                    continue
                doc = _paragraphs_to_document(paragraphs)
                if doc:
                    yield doc
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read Wikipedia dump {path}: {e}") from None
    except Exception as e:  # XML parse errors from a corrupt dump
        if type(e).__name__ == "ParseError":
            raise ValueError(f"corrupt Wikipedia dump {path}: {e}") from None
        raise


def iter_tfds_documents(name: str, split: str = "train", text_key: str = "text",
                        data_dir: str | None = None) -> Iterator[Document]:
    """Documents of a prepared TFDS text dataset (never downloads); lines are paragraphs."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown/unprepared datasets
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"TFDS dataset {name!r} not found or not prepared"
                         f"{' in ' + data_dir if data_dir else ''} ({first_line})") from None
    if not builder.info.splits:
        raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; "
                         "prepare it first (no download is attempted)")
    if text_key not in builder.info.features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {text_key!r} "
                         f"(features: {sorted(builder.info.features.keys())})")
    try:
        ds = builder.as_dataset(split=split)
    except Exception as e:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r} ({e})") from None
    bad = 0
    for example in tfds.as_numpy(ds):
        text = example[text_key]
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
                continue
        doc = _paragraphs_to_document([line for line in str(text).splitlines() if line.strip()])
        if doc:
            yield doc
    if bad:
        print(f"warning: TFDS dataset {name!r} ({split}): skipped {bad} examples whose "
              f"{text_key!r} is not UTF-8 text", file=sys.stderr)


def iter_documents(spec: str | CorpusSpec) -> Iterator[Document]:
    """Documents (lists of sentences) of a corpus spec; empty documents are skipped."""
    if isinstance(spec, str):
        spec = parse_corpus_spec(spec)
    if spec.kind == "text":
        yield from iter_text_documents(spec.paths)
    elif spec.kind == "wiki_articles":
        yield from iter_wiki_article_documents(spec.paths)
    elif spec.kind == "gensim_wiki":
        yield from iter_gensim_wiki_documents(spec.paths[0])
    elif spec.kind == "tfds":
        yield from iter_tfds_documents(spec.tfds_name, spec.tfds_split, spec.tfds_text_key,
                                       spec.tfds_data_dir)
    else:
        raise ValueError(f"unknown corpus kind {spec.kind!r}")


def load_documents(spec: str | CorpusSpec) -> list[Document]:
    """All documents of a corpus; ValueError if it holds no text."""
    docs = list(iter_documents(spec))
    if not docs:
        raise ValueError(f"corpus {describe_corpus(spec)} is empty (no documents with text)")
    return docs


def describe_corpus(spec: str | CorpusSpec) -> str:
    """A short human-readable name of a corpus spec."""
    if isinstance(spec, str):
        return spec
    if spec.kind == "tfds":
        return f"tfds:{spec.tfds_name}:{spec.tfds_split}:{spec.tfds_text_key}"
    return f"{spec.kind}:{','.join(spec.paths)}"


def corpus_fingerprint(spec: str | CorpusSpec) -> str:
    """A hash of the corpus identity (paths with sizes and mtimes, or the TFDS name/split)."""
    if isinstance(spec, str):
        spec = parse_corpus_spec(spec)
    digest = hashlib.sha256(describe_corpus(spec).encode())
    for path in spec.paths:
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    digest.update(str(spec.tfds_data_dir).encode())
    return digest.hexdigest()[:16]


def corpus_num_bytes(docs: list[Document]) -> int:
    """UTF-8 bytes of the documents' sentence text (for throughput figures)."""
    return sum(len(s.encode("utf-8")) + 1 for doc in docs for s in doc)
