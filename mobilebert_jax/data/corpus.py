"""Corpus sources for pretraining: each yields documents, a document being a list of sentences.

Sources, selected by a `--corpus` spec string (`parse_corpus_specs`: one or more sources
separated by `;`, mixed in one dataset); every PATH may be local or a `gs://` URI:

* `gensim_wiki[:PATH]` - the embedded default: the English Wikipedia sample shipped inside the
  `gensim` wheel (or another `pages-articles*.xml.bz2` dump at PATH), parsed with gensim's
  `extract_pages` + `filter_wiki`; redirects and pages under 50 words are skipped.
* `text:PATH[,PATH...][,encoding=NAME]` - plain text in BERT's layout: one sentence or
  paragraph per line, a blank line between documents. PATH may be a glob (on gs://, in its
  last component).
* `wiki_articles:PATH[,PATH...][,encoding=NAME]` - articles that start with a `= Title =`
  line, then one paragraph per line (the layout of `shared/data/text/wiki_sample.txt`).
* `tfds:NAME[:SPLIT[:TEXT_KEY]][@DATA_DIR]` - a prepared TFDS text dataset, e.g.
  `tfds:wikipedia/20230601.en:train:text`; each example is one document whose lines are
  paragraphs. Nothing is downloaded.

Text files are decoded by `text_files`: each file's encoding is chosen once, from its first MB
(`encoding=NAME` declares it for every file of a source; otherwise UTF-8, UTF-8 with a few stray
bytes read as Windows-1252, or the legacy encoding `charset-normalizer` detects), and said in one
`note:`/`warning:` line per file that is not plain UTF-8, with a count; a binary file is refused
by name.

For parallel reading a source is cut into `ReadTask`s (byte ranges of text files, example
ranges of TFDS splits; a `.bz2` dump is one task); each document has a key that does not depend
on the cut nor on the file's encoding (`task_documents`: a text document's key is its source,
its file and a hash of its text).

Lines and paragraphs become sentences in `sentences.py`.
"""
from __future__ import annotations

import bz2
import dataclasses
import glob
import hashlib
import re
import sys
from typing import Iterator

from mobilebert_jax import files
from mobilebert_jax.data import text_files
from mobilebert_jax.data.sentences import (
    WIKI_TITLE,
    clean_wiki_markup,
    paragraphs_to_document,
    split_sentences,
)

Document = list[str]

GENSIM_WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_ARTICLE_WORDS = 50
MAX_BAD_LINE_FRACTION = 0.1  # lines with NUL bytes, above which a file is refused

# NAME[:SPLIT[:TEXT_KEY]]; a split may hold a slice with colons, e.g. train[:1%].
_TFDS_SPEC = re.compile(r"^(?P<name>[^:\[\]]+)(?::(?P<split>[^:\[]*(?:\[[^\]]*\])?))?"
                        r"(?::(?P<key>[^:]+))?$")
_SPEC_KINDS = ("gensim_wiki", "text", "wiki_articles", "tfds")


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A parsed `--corpus` value: `kind` is one of gensim_wiki, text, wiki_articles, tfds."""

    kind: str
    paths: tuple[str, ...] = ()
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_text_key: str = "text"
    tfds_data_dir: str | None = None
    encoding: str = ""  # text files' declared encoding; empty: detected per file


def parse_corpus_specs(spec: str) -> list[CorpusSpec]:
    """Parses a `--corpus` value of one or more sources separated by `;` (mixed in one
    dataset, as the paper mixes Wikipedia and books)."""
    parts = [p.strip() for p in (spec or "").split(";") if p.strip()]
    if not parts:
        raise ValueError("the corpus spec is empty")
    return [parse_corpus_spec(p) for p in parts]


def parse_corpus_spec(spec: str) -> CorpusSpec:
    """Parses one source of a `--corpus` spec (forms in the module docstring)."""
    spec = (spec or "").strip()
    kind, _, rest = spec.partition(":")
    if kind not in _SPEC_KINDS:
        raise ValueError(f"unknown corpus spec {spec!r}: expected gensim_wiki[:PATH], "
                         "text:PATH[,PATH...][,encoding=NAME], wiki_articles:PATH[,PATH...]"
                         "[,encoding=NAME] or tfds:NAME[:SPLIT[:TEXT_KEY]][@DATA_DIR]")
    if kind == "gensim_wiki":
        if rest:
            return CorpusSpec(kind, paths=(files.resolve(rest),))
        from gensim.test.utils import datapath
        return CorpusSpec(kind, paths=(datapath(GENSIM_WIKI_SAMPLE),))
    if kind == "tfds":
        rest, _, data_dir = rest.partition("@")
        m = _TFDS_SPEC.match(rest)
        if not m:
            raise ValueError(f"bad corpus spec {spec!r}: expected tfds:NAME[:SPLIT[:TEXT_KEY]]")
        return CorpusSpec(kind, tfds_name=m["name"], tfds_split=m["split"] or "train",
                          tfds_text_key=m["key"] or "text",
                          tfds_data_dir=files.resolve(data_dir) if data_dir else None)
    patterns, encoding = [], ""
    for item in (p.strip() for p in rest.split(",") if p.strip()):
        name, eq, value = item.partition("=")
        if eq and name.strip() == "encoding":
            try:
                encoding = text_files.check_encoding(value.strip())
            except ValueError as e:
                raise ValueError(f"corpus spec {spec!r}: {e}") from None
        else:
            patterns.append(item)
    if not patterns:
        raise ValueError(f"corpus spec {spec!r} names no file")
    paths: list[str] = []
    for pattern in patterns:
        pattern = files.resolve(pattern)
        if glob.has_magic(pattern):
            matched = files.glob_files(pattern)
            if not matched:
                raise FileNotFoundError(f"corpus pattern {pattern} matches no file")
            paths.extend(matched)
        else:
            if not files.isfile(pattern):
                raise FileNotFoundError(f"corpus file {pattern} does not exist")
            paths.append(pattern)
    return CorpusSpec(kind, paths=tuple(paths), encoding=encoding)


@dataclasses.dataclass(frozen=True)
class ReadTask:
    """One unit of parallel reading: the documents of source `source` that start in bytes
    [start, end) of a text file, all pages of a Wikipedia dump, or examples [start, end) of a
    TFDS split. Each document gets a key that does not depend on how a source is cut into
    tasks (the source number, the file number and the byte offset where the document starts,
    or the page / example index)."""

    source: int
    kind: str
    path: str = ""
    file_index: int = 0
    start: int = 0
    end: int = 0
    tfds: tuple = ()  # (name, split, text key, data dir) of a TFDS source
    # a text file's encoding (chosen once per file) and the bytes its choice already reported
    decoding: text_files.Choice | None = None
    reported_bytes: int = 0

    def describe(self) -> str:
        if self.kind == "tfds":
            return f"tfds:{self.tfds[0]}:{self.tfds[1]}[{self.start}:{self.end}]"
        if self.kind == "gensim_wiki":
            return self.path
        return f"{self.path} bytes {self.start}-{self.end}"


def _tfds_builder(name: str, data_dir: str | None):
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
    return builder


def read_tasks(specs: list[CorpusSpec], chunk_bytes: int = 8 << 20
               ) -> tuple[list[ReadTask], int]:
    """The read tasks of the sources (text files cut into `chunk_bytes` ranges, TFDS splits
    into example ranges of about as many bytes) and the corpus's size in input bytes."""
    tasks: list[ReadTask] = []
    total = 0
    choices: list[tuple[str, text_files.Choice]] = []
    for source, spec in enumerate(specs):
        if spec.kind in ("text", "wiki_articles"):
            for file_index, path in enumerate(spec.paths):
                choice, sampled = text_files.file_encoding(path, spec.encoding)
                choices.append((path, choice))
                n = files.size(path)
                total += n
                for start in range(0, max(n, 1), chunk_bytes):
                    tasks.append(ReadTask(source, spec.kind, path, file_index, start,
                                          min(start + chunk_bytes, n), decoding=choice,
                                          reported_bytes=sampled))
        elif spec.kind == "gensim_wiki":
            if not files.isfile(spec.paths[0]):
                raise FileNotFoundError(f"Wikipedia dump {spec.paths[0]} does not exist")
            total += files.size(spec.paths[0])
            tasks.append(ReadTask(source, spec.kind, spec.paths[0]))
        else:
            builder = _tfds_builder(spec.tfds_name, spec.tfds_data_dir)
            if spec.tfds_text_key not in builder.info.features:
                raise ValueError(f"TFDS dataset {spec.tfds_name!r} has no feature "
                                 f"{spec.tfds_text_key!r} (features: "
                                 f"{sorted(builder.info.features.keys())})")
            tfds_args = (spec.tfds_name, spec.tfds_split, spec.tfds_text_key,
                         spec.tfds_data_dir)
            if "[" in spec.tfds_split:  # a slice of a split: one task reads it
                tasks.append(ReadTask(source, "tfds", tfds=tfds_args, start=0, end=-1))
                continue
            split_info = builder.info.splits.get(spec.tfds_split)
            if split_info is None:
                raise ValueError(f"TFDS dataset {spec.tfds_name!r} has no split "
                                 f"{spec.tfds_split!r} (splits: {sorted(builder.info.splits)})")
            n, nbytes = split_info.num_examples, max(split_info.num_bytes, 1)
            total += nbytes
            step = max(1, int(n * chunk_bytes / nbytes))
            for start in range(0, n, step):
                tasks.append(ReadTask(source, "tfds", tfds=tfds_args, start=start,
                                      end=min(start + step, n)))
    text_files.report_encodings(choices)
    return tasks, total


class _LineReader:
    """The lines from the first one that starts at or after byte `start` of a file, with their
    byte offsets, decoded as the task's file is (`text_files.decode_line`); a line holding a NUL
    byte (binary data) comes as None. Lines that start in [start, end) are counted (`total`,
    `bad`, `first_bad`; `stray_lines`, `first_stray`: lines past the part of the file whose
    stray bytes were reported up front): each line of a file counts in exactly one task,
    however many tasks read it."""

    def __init__(self, task: ReadTask):
        self.path, self.start, self.end = task.path, task.start, task.end
        self.decoding = task.decoding or text_files.Choice(text_files.UTF8, False, None)
        self.reported_bytes = task.reported_bytes
        self.bad = self.total = self.stray_lines = 0
        self.first_bad: int | None = None
        self.first_stray: int | None = None

    def _refuse(self) -> ValueError:
        return ValueError(f"{self.path}: not a text file ({self.bad} of {self.total} lines "
                          f"from byte {self.start} hold NUL bytes)")

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        with files.open_binary(self.path) as f:
            pos = 0
            if self.start > 0:
                f.seek(self.start - 1)
                pos = self.start - 1 + len(f.readline())  # the line holding byte start-1
            for raw in f:
                offset, pos = pos, pos + len(raw)
                line, stray = (None, 0) if b"\0" in raw else text_files.decode_line(
                    raw, self.decoding, self.path, offset)
                if offset < self.end:
                    self.total += 1
                    if stray and offset >= self.reported_bytes:
                        self.stray_lines += 1
                        self.first_stray = offset if self.first_stray is None else self.first_stray
                    if line is None:
                        self.bad += 1
                        self.first_bad = offset if self.first_bad is None else self.first_bad
                        if self._binary():
                            raise self._refuse()
                yield offset, line

    def _binary(self) -> bool:
        # A file's first MB is judged up front (`text_files.file_encoding`); here, binary
        # data further on.
        return self.bad > 100 and self.bad > MAX_BAD_LINE_FRACTION * self.total

    def report(self) -> None:
        if self._binary():
            raise self._refuse()
        if self.bad:
            print(f"warning: {self.path}: skipped {self.bad} of {self.total} lines that hold NUL "
                  f"bytes (first at byte {self.first_bad})", file=sys.stderr, flush=True)
        if self.stray_lines:
            print(f"warning: {self.path}: {self.stray_lines} lines from byte {self.start} hold "
                  f"bytes that are not UTF-8 (first at byte {self.first_stray}): decoded as "
                  f"{text_files.STRAY_ENCODING}", file=sys.stderr, flush=True)


def _text_task_documents(task: ReadTask, lines: _LineReader
                         ) -> Iterator[tuple[int, Document]]:
    """BERT's layout: a blank line ends a document. A document belongs to the task holding the
    blank line just before it (the file's first document to the task at byte 0), so tasks
    that cut a file anywhere together yield each document once."""
    pending = task.start == 0  # whether the next non-blank line starts a document of ours
    doc: Document = []
    doc_start = -1
    for offset, line in lines:
        if line is None:
            continue
        if not line.strip():
            if doc_start >= 0:
                if doc:
                    yield doc_start, doc
                doc, doc_start = [], -1
            if offset >= task.end:
                return
            pending = True
        elif doc_start >= 0:
            doc.extend(split_sentences(line))
        elif pending:
            doc_start, doc, pending = offset, split_sentences(line), False
        elif offset >= task.end:
            return
    if doc_start >= 0 and doc:
        yield doc_start, doc


def _wiki_task_documents(task: ReadTask, lines: _LineReader
                         ) -> Iterator[tuple[int, Document]]:
    """`= Title =` articles: a document belongs to the task holding its title line (text
    before the file's first title, to the task at byte 0)."""
    doc: Document = []
    doc_start = 0 if task.start == 0 else -1
    for offset, line in lines:
        if line is None:
            continue
        if WIKI_TITLE.match(line):
            if doc_start >= 0 and doc:
                yield doc_start, doc
            if offset >= task.end:
                return
            doc, doc_start = [], offset
        elif doc_start >= 0 and line.strip():
            doc.extend(split_sentences(line))
    if doc_start >= 0 and doc:
        yield doc_start, doc


def task_documents(task: ReadTask, stats: dict | None = None
                   ) -> Iterator[tuple[str, Document]]:
    """(key, document) of every non-empty document of a read task; `stats` (if given) gains
    the count of skipped lines that held NUL bytes."""
    if task.kind in ("text", "wiki_articles"):
        lines = _LineReader(task)
        read = _text_task_documents if task.kind == "text" else _wiki_task_documents
        for _, doc in read(task, lines):
            # by its text, not its byte offset: the same in any encoding of the file
            digest = hashlib.blake2b("\n".join(doc).encode("utf-8"), digest_size=8).hexdigest()
            yield f"{task.source}:{task.file_index}:{digest}", doc
        lines.report()
        if stats is not None:
            stats["skipped_lines"] = stats.get("skipped_lines", 0) + lines.bad
            stats["stray_byte_lines"] = stats.get("stray_byte_lines", 0) + lines.stray_lines
    elif task.kind == "gensim_wiki":
        for index, doc in _gensim_pages(task.path):
            yield f"{task.source}:{index}", doc
    else:
        name, split, key, data_dir = task.tfds
        for index, doc in _tfds_examples(name, split, key, data_dir, task.start, task.end):
            yield f"{task.source}:{index}", doc


def _gensim_pages(path: str) -> Iterator[tuple[int, Document]]:
    """(page index, article) of a Wikipedia XML `.bz2` dump, parsed with gensim's utilities."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    if not files.isfile(path):
        raise FileNotFoundError(f"Wikipedia dump {path} does not exist")
    try:
        with files.open_binary(path) as raw, bz2.open(raw, "rb") as f:
            for index, (_, text, _) in enumerate(extract_pages(f, filter_namespaces=("0",))):
                if not text or text.lstrip().lower().startswith("#redirect"):
                    continue
                paragraphs = clean_wiki_markup(filter_wiki(text))
                if sum(len(p.split()) for p in paragraphs) < MIN_ARTICLE_WORDS:
                    continue
                doc = paragraphs_to_document(paragraphs)
                if doc:
                    yield index, doc
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read Wikipedia dump {path}: {e}") from None
    except Exception as e:  # XML parse errors from a corrupt dump
        if type(e).__name__ == "ParseError":
            raise ValueError(f"corrupt Wikipedia dump {path}: {e}") from None
        raise


def _tfds_examples(name: str, split: str, text_key: str, data_dir: str | None, start: int,
                   end: int) -> Iterator[tuple[int, Document]]:
    """(example index, document) of examples [start, end) of a prepared TFDS text dataset
    (end -1: all of `split`, which may be a slice); never downloads; lines are paragraphs."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)  # its text feature was checked by read_tasks
    read_split = split if end < 0 else f"{split}[{start}:{end}]"
    try:
        ds = builder.as_dataset(split=read_split, shuffle_files=False)
    except Exception as e:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r} ({e})") from None
    bad = 0
    for index, example in enumerate(tfds.as_numpy(ds), start):
        text = example[text_key]
        if isinstance(text, bytes):
            if b"\0" in text:
                bad += 1
                continue
            text = text_files.decode_line(text, text_files.Choice(text_files.UTF8, False,
                                                                  None))[0]
        doc = paragraphs_to_document([line for line in str(text).splitlines() if line.strip()])
        if doc:
            yield index, doc
    if bad:
        print(f"warning: TFDS dataset {name!r} ({read_split}): skipped {bad} examples whose "
              f"{text_key!r} holds NUL bytes", file=sys.stderr, flush=True)


def iter_documents(spec: str | CorpusSpec | list[CorpusSpec]) -> Iterator[Document]:
    """Documents (lists of sentences) of a corpus spec, in order; empty documents skipped."""
    specs = parse_corpus_specs(spec) if isinstance(spec, str) else (
        [spec] if isinstance(spec, CorpusSpec) else spec)
    tasks, _ = read_tasks(specs, chunk_bytes=1 << 62)
    for task in tasks:
        for _, doc in task_documents(task):
            yield doc


def load_documents(spec: str | CorpusSpec) -> list[Document]:
    """All documents of a corpus; ValueError if it holds no text."""
    docs = list(iter_documents(spec))
    if not docs:
        raise ValueError(f"corpus {describe_corpus(spec)} is empty (no documents with text)")
    return docs


def describe_corpus(spec: str | CorpusSpec | list[CorpusSpec]) -> str:
    """A short human-readable name of a corpus spec."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, list):
        return ";".join(describe_corpus(s) for s in spec)
    if spec.kind == "tfds":
        return f"tfds:{spec.tfds_name}:{spec.tfds_split}:{spec.tfds_text_key}"
    return (f"{spec.kind}:{','.join(spec.paths)}"
            + (f",encoding={spec.encoding}" if spec.encoding else ""))


def corpus_fingerprint(spec: str | CorpusSpec | list[CorpusSpec]) -> str:
    """A hash of the corpus identity (paths with sizes and mtimes, or the TFDS name/split)."""
    specs = parse_corpus_specs(spec) if isinstance(spec, str) else (
        [spec] if isinstance(spec, CorpusSpec) else spec)
    digest = hashlib.sha256(describe_corpus(specs).encode())
    for s in specs:
        for path in s.paths:
            digest.update(f"{path}:{files.stat_key(path)}".encode())
        digest.update(str(s.tfds_data_dir).encode())
    return digest.hexdigest()[:16]
