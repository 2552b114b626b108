"""The Beam job of `prepare.py` (its stages are described there): read tasks -> tokenized
documents -> hash layout -> one ArrayRecord file per (split, shard). Runs on any Beam runner:
the DoFns carry what they need (the tokenizer's file bytes, the settings) and write through
`files`, so remote workers need nothing local.

The token ids never travel through Beam: a read task writes its documents' ids to one file in
the staging directory and emits a small reference per document (hash, key, text bytes, file,
offset, length); the shard writer reads the ids of its documents back from those files. The
shuffle and the runner's buffers then hold about 100 bytes per document whatever the corpus,
and a worker holds one read task or one shard."""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from mobilebert_jax import files
from mobilebert_jax.data import corpus as corpus_lib
from mobilebert_jax.data import pretraining, tokenizers
from mobilebert_jax.data.dataset_layout import (
    DOCUMENTS_DIR,
    EVAL_SPLIT,
    SHARD_STATS_DIR,
    TRAIN_SPLIT,
    progress_line,
    serialize_record,
    shard_file_name,
    tfds_dir,
)

_ENCODE_BATCH_SENTENCES = 4096


def doc_hash(seed: int, key: str) -> int:
    """A document's stable 64-bit hash (never Python's salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def num_eval_documents(num_docs: int, eval_fraction: float) -> int:
    """Held-out documents: round(eval_fraction * N), at least 2 (1 below 4 documents), at least
    one left for training; 0 when eval_fraction is 0."""
    if eval_fraction <= 0 or num_docs < 2:
        return 0
    n_eval = max(2 if num_docs >= 4 else 1, int(round(eval_fraction * num_docs)))
    return min(n_eval, num_docs - 1)


def _shard_starts(sizes: Sequence[int], count: int) -> list[int]:
    """Where shards 1..count-1 of a split begin (document indices in hash order): equal shares
    of the split's text bytes, each shard keeping at least two documents (`count` is at most
    half the documents)."""
    n, total = len(sizes), float(sum(sizes))
    before = np.cumsum(sizes, dtype=np.float64) - np.asarray(sizes, dtype=np.float64)
    starts, prev = [], 0
    for i in range(1, count):
        j = int(np.searchsorted(before, i * total / count, side="left"))
        j = min(max(j, prev + 2), n - 2 * (count - i))
        starts.append(j)
        prev = j
    return starts


def shard_layout(docs: list[tuple[int, int]], num_train_shards: int, eval_fraction: float
                 ) -> dict[str, Any]:
    """From every document's (hash, text bytes): the largest held-out hash and, per split, the
    shard count (at most half the split's documents, so a shard has two for random next
    segments) and the hash where each shard after the first begins, the shards cut at equal
    shares of the text (documents differ in size by orders of magnitude, so equal document
    counts would leave some workers with several times the work of others)."""
    docs = sorted(docs)
    n_eval = num_eval_documents(len(docs), eval_fraction)
    layout: dict[str, Any] = {"eval_max": docs[n_eval - 1][0] if n_eval else -1, "splits": {}}
    for name, part in ((EVAL_SPLIT, docs[:n_eval]), (TRAIN_SPLIT, docs[n_eval:])):
        wanted = (num_train_shards if name == TRAIN_SPLIT
                  else math.ceil(num_train_shards * eval_fraction))
        count = max(1, min(wanted, len(part) // 2))
        layout["splits"][name] = {
            "num_docs": len(part), "num_shards": count,
            "bounds": [part[j][0] for j in _shard_starts([d[1] for d in part], count)]}
    return layout


def _assign(doc, layout):
    split = EVAL_SPLIT if doc[0] <= layout["eval_max"] else TRAIN_SPLIT
    info = layout["splits"][split]
    return (split, bisect.bisect_right(info["bounds"], doc[0]), info["num_shards"]), doc


def _encode_document(token_lists: Sequence[Sequence[int]], wide: bool) -> bytes:
    """A tokenized document as bytes for the shuffle: sentence count, lengths (int32), then the
    ids as uint16 (int32 when `wide`, a vocabulary over 65,535 entries)."""
    lengths = np.asarray([len(t) for t in token_lists], dtype=np.int32)
    flat = np.fromiter((i for t in token_lists for i in t),
                       dtype=np.int32 if wide else np.uint16, count=int(lengths.sum()))
    return np.int32(len(lengths)).tobytes() + lengths.tobytes() + flat.tobytes()


def _decode_document(payload: bytes, wide: bool) -> list[np.ndarray]:
    n = int(np.frombuffer(payload, dtype=np.int32, count=1)[0])
    lengths = np.frombuffer(payload, dtype=np.int32, count=n, offset=4)
    flat = np.frombuffer(payload, dtype=np.int32 if wide else np.uint16,
                         offset=4 + 4 * n).astype(np.int32)
    return np.split(flat, np.cumsum(lengths)[:-1])


def _shard_seed(seed: int, split: str, shard: int) -> int:
    return doc_hash(seed, f"shard/{split}/{shard}")


def _beam():
    """apache_beam, imported with the root logger quiet (an optional GCP client of Beam's warns
    through it at import when its library is missing, which no code path here needs)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam
        import apache_beam.io.gcp.internal.clients.bigquery  # noqa: F401  (its warning, quiet)
    except ImportError:
        pass
    finally:
        root.setLevel(level)
    import apache_beam
    return apache_beam


def _read_and_tokenize_fn():
    beam = _beam()
    from apache_beam.metrics import Metrics

    class ReadAndTokenize(beam.DoFn):
        """(index, read task) -> the task's documents' token ids in one staging file, and per
        non-empty document (hash, key, text bytes, file name, offset, length) of its ids."""

        def __init__(self, staging: str, tokenizer_name: str, tokenizer_bytes: bytes,
                     lower_case: bool, seed: int, num_tasks: int, progress: bool):
            self.staging = staging
            self.tokenizer_name, self.tokenizer_bytes = tokenizer_name, tokenizer_bytes
            self.lower_case, self.seed = lower_case, seed
            self.num_tasks, self.progress = num_tasks, progress
            self.documents = Metrics.counter("prepare", "documents")
            self.tokenized = Metrics.counter("prepare", "documents_with_tokens")
            self.skipped_lines = Metrics.counter("prepare", "skipped_lines")
            self.stray_byte_lines = Metrics.counter("prepare", "stray_byte_lines")

        def setup(self):
            os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core per worker
            self._dir = tempfile.mkdtemp(prefix="mobilebert_jax_tokenizer-")
            path = os.path.join(self._dir, self.tokenizer_name)
            with open(path, "wb") as f:
                f.write(self.tokenizer_bytes)
            self.tokenizer = tokenizers.load_tokenizer(path, lower_case=self.lower_case)

        def teardown(self):
            shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)

        def _encode(self, batch, name, chunks, refs, offset):
            encoded = self.tokenizer.encode_batch([s for _, doc in batch for s in doc])
            pos = 0
            for key, doc in batch:
                ids = encoded[pos:pos + len(doc)]
                pos += len(doc)
                if not any(ids):
                    continue
                self.tokenized.inc()
                text_bytes = sum(len(s.encode("utf-8")) + 1 for s in doc)
                payload = _encode_document(ids, self.tokenizer.vocab_size > 65535)
                chunks.append(payload)
                refs.append((doc_hash(self.seed, key), key, text_bytes, name, offset,
                             len(payload)))
                offset += len(payload)
            return offset

        def process(self, indexed_task):
            index, task = indexed_task
            name = f"{index:06d}.ids"
            batch, sentences, count, stats = [], 0, 0, {}
            chunks, refs, offset = [], [], 0
            for key, doc in corpus_lib.task_documents(task, stats):
                batch.append((key, doc))
                count += 1
                sentences += len(doc)
                if sentences >= _ENCODE_BATCH_SENTENCES:
                    offset = self._encode(batch, name, chunks, refs, offset)
                    batch, sentences = [], 0
            self._encode(batch, name, chunks, refs, offset)
            if refs:  # written whole before any reference to it leaves (a retry rewrites it)
                directory = files.join(self.staging, DOCUMENTS_DIR)
                if not files.is_remote(directory):
                    os.makedirs(directory, exist_ok=True)
                files.write_bytes(files.join(directory, name), b"".join(chunks))
            del chunks
            yield from refs
            self.documents.inc(count)
            self.skipped_lines.inc(stats.get("skipped_lines", 0))
            self.stray_byte_lines.inc(stats.get("stray_byte_lines", 0))
            progress_line(self.progress, f"read {task.describe()}: {count} documents "
                                                 f"(of {self.num_tasks} read tasks)")

    return ReadAndTokenize


def _write_shard_fn():
    beam = _beam()

    class WriteShard(beam.DoFn):
        """(split, shard, count) + its documents -> one ArrayRecord file and its counts."""

        def __init__(self, staging: str, seq_len: int, cls_id: int, sep_id: int,
                     short_seq_prob: float, dupe_factor: int, seed: int, static_cfg,
                     wide: bool, progress: bool):
            self.staging, self.seq_len, self.wide = staging, seq_len, wide
            self.cls_id, self.sep_id = cls_id, sep_id
            self.short_seq_prob, self.dupe_factor, self.seed = short_seq_prob, dupe_factor, seed
            self.static_cfg, self.progress = static_cfg, progress


        def process(self, item):
            from array_record.python import array_record_module

            (split, shard, num_shards), docs = item
            docs = sorted(docs)  # by hash, then key: the same order on every runner
            stats = {"split": split, "shard": shard, "num_shards": num_shards,
                     "num_documents": len(docs), "text_bytes": sum(d[2] for d in docs),
                     "num_examples": 0, "num_bytes": 0, "num_tokens": 0, "random_next": 0}
            if len(docs) >= 2:
                token_docs = [_decode_document(p, self.wide) for p in self._payloads(docs)]
                stats["num_tokens"] = int(sum(len(s) for doc in token_docs for s in doc))
                pairs = pretraining.create_pairs(
                    token_docs, self.seq_len, self.cls_id, self.sep_id,
                    short_seq_prob=self.short_seq_prob, dupe_factor=self.dupe_factor,
                    seed=_shard_seed(self.seed, split, shard))
                del token_docs
                name = shard_file_name(split, shard, num_shards)
                target = files.join(tfds_dir(self.staging), name)
                local_dir = (os.path.dirname(target) if not files.is_remote(target)
                             else tempfile.gettempdir())
                os.makedirs(local_dir, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=local_dir)
                os.close(fd)
                os.chmod(tmp, 0o644)
                try:
                    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
                    for index, ex in enumerate(pairs):
                        writer.write(self._serialize(ex, split, shard, index))
                        stats["random_next"] += ex.next_sentence_label
                    writer.close()
                    stats["num_examples"] = len(pairs)
                    stats["num_bytes"] = os.path.getsize(tmp)
                    if files.is_remote(target):
                        files.copy_file(tmp, target)
                    else:
                        os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            stats_dir = files.join(self.staging, SHARD_STATS_DIR)
            if not files.is_remote(stats_dir):
                os.makedirs(stats_dir, exist_ok=True)
            files.write_json(files.join(stats_dir, f"{split}-{shard:05d}.json"), stats)
            progress_line(self.progress, f"wrote {split} shard {shard + 1}/"
                                                 f"{num_shards}: {stats['num_examples']} "
                                                 f"examples from {len(docs)} documents")
            yield stats

        def _payloads(self, docs) -> list[bytes]:
            """The token-id bytes of the documents' references, read from the read stage's
            files (each file opened once, read in offset order)."""
            out: list[bytes] = [b""] * len(docs)
            by_file: dict[str, list[int]] = {}
            for i, d in enumerate(docs):
                by_file.setdefault(d[3], []).append(i)
            directory = files.join(self.staging, DOCUMENTS_DIR)
            for name, members in sorted(by_file.items()):
                with files.open_binary(files.join(directory, name)) as f:
                    for i in sorted(members, key=lambda i: docs[i][4]):
                        f.seek(docs[i][4])
                        out[i] = f.read(docs[i][5])
                        if len(out[i]) != docs[i][5]:
                            raise OSError(f"staging file {name} is truncated (a document's "
                                          f"ids end past its {f.tell()} bytes)")
            return out

        def _serialize(self, ex, split, shard, index) -> bytes:
            record = {"token_ids": ex.token_ids, "segment_ids": ex.segment_ids,
                      "next_sentence_label": np.int32(ex.next_sentence_label)}
            if self.static_cfg is not None:
                rng = pretraining.masking_rng(_shard_seed(self.seed, split, shard), 0, index)
                masked, positions, labels = pretraining.mask_tokens(ex.token_ids,
                                                                    self.static_cfg, rng)
                record.update(token_ids=masked, masked_lm_positions=positions,
                              masked_lm_ids=labels.astype(np.int32))
            return serialize_record(record)

    return WriteShard


def options(num_workers: int, beam_args: Sequence[str] = ()):
    """Beam options: `beam_args` as given; without a `--runner` among them, the DirectRunner
    in this process (1 worker) or in `num_workers` local worker processes."""
    _beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args += ["--runner=DirectRunner", f"--direct_num_workers={num_workers}",
                 "--direct_running_mode=" + ("multi_processing" if num_workers > 1
                                             else "in_memory")]
    return PipelineOptions(args)


def runner_name(options) -> str:
    from apache_beam.options.pipeline_options import StandardOptions

    return str(options.view_as(StandardOptions).runner or "DirectRunner")


@contextlib.contextmanager
def _quiet_beam():
    """Beam's INFO/WARNING chatter off (errors still reach the caller as exceptions)."""
    log = logging.getLogger("apache_beam")
    level = log.level
    log.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        log.setLevel(level)


def _pipeline_error(e: BaseException) -> BaseException:
    """The expected error inside a failed pipeline (ValueError, OSError, ...) as itself, with
    Beam's traceback and '[while running ...]' stripped; anything else unchanged."""
    if isinstance(e, (ValueError, OSError)):
        msg = re.sub(r"(?: \[while running '[^']*'\])+$", "", str(e).strip())
        return type(e)(msg) if not isinstance(e, OSError) or not e.filename else e
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if re.match(r"^\s*(?:[\w.]+\.)?\w*Error: ", ln)]
    if not lines:
        return e
    kind, _, msg = lines[-1].strip().partition(": ")
    msg = re.sub(r"(?: \[while running '[^']*'\])+$", "", msg)
    kind = kind.rsplit(".", 1)[-1]
    if kind in ("ValueError", "UnicodeDecodeError"):
        return ValueError(msg)
    if kind in ("FileNotFoundError", "NotADirectoryError", "PermissionError", "OSError",
                "IsADirectoryError", "FileExistsError"):
        return OSError(msg)
    return e


def run(tasks, tokenizer, staging, settings, static_cfg, options,
                  progress: bool) -> dict[str, int]:
    """Runs the pipeline (stages in the module docstring); returns its counters."""
    beam = _beam()
    from apache_beam.metrics.metric import MetricsFilter

    with open(tokenizer.path, "rb") as f:
        tokenizer_bytes = f.read()
    read = _read_and_tokenize_fn()(staging, os.path.basename(tokenizer.path), tokenizer_bytes,
                                   settings["lower_case"], settings["seed"], len(tasks),
                                   progress)
    write = _write_shard_fn()(staging, settings["seq_len"], tokenizer.cls_id, tokenizer.sep_id,
                              settings["short_seq_prob"], settings["dupe_factor"],
                              settings["seed"], static_cfg, tokenizer.vocab_size > 65535,
                              progress)
    num_shards, eval_fraction = settings["num_shards"], settings["eval_fraction"]
    with _quiet_beam():
        pipeline = beam.Pipeline(options=options)
        docs = (pipeline
                | "tasks" >> beam.Create(list(enumerate(tasks)), reshuffle=False)
                | "spread" >> beam.Reshuffle()
                | "read and tokenize" >> beam.ParDo(read))
        layout = (docs
                  | "hashes" >> beam.Map(lambda d: (d[0], d[2]))
                  | "all hashes" >> beam.combiners.ToList()
                  | "layout" >> beam.Map(shard_layout, num_shards, eval_fraction))
        _ = (docs
             | "assign" >> beam.Map(_assign, beam.pvalue.AsSingleton(layout))
             | "group" >> beam.GroupByKey()
             | "write shards" >> beam.ParDo(write))
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as e:  # Beam wraps the workers' errors
            raise _pipeline_error(e) from None
        counters = {c.key.metric.name: c.committed for c in
                    result.metrics().query(MetricsFilter().with_namespace("prepare"))["counters"]}
    return counters
