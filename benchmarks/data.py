"""Data pipeline benchmark: the Beam preparation at 1 and 2 local workers on three corpus sizes,
then loader throughput against training consumption.

    python -m benchmarks.data [--text_dir=../shared/data/text] [--json=PATH]

Preparation: corpora of about 3, 15 and 60 MB of real English in the `= Title =` layout are
built from `--text_dir` (the Wikipedia sample's articles and the Gutenberg books cut into
40-paragraph articles; the larger ones repeat them with each article's paragraphs shuffled by
another seed, so no two documents are equal). Each is prepared at the trainer configs' settings
(seq 128, dupe_factor 5) by `python -m mobilebert_jax.data.prepare` in a new process with
`--num_workers` 1 (the DirectRunner in that process) and 2 (two worker processes), alternating,
while a sampler records every process's resident memory. Printed per run: MB of text per minute
per worker, the speed-up of 2 workers over 1, the peak resident memory of the busiest worker
process and of the runner (the local runner also holds the shuffle, which on Dataflow is a
service). Goals: >= 25 MB/min per worker; 2 workers >= 1.7x one; the worker's peak grows < 1.5x
while the corpus grows >= 15x. From the figures, a projection of a 20 GB preparation on Dataflow.

Loader: examples per second of `make_pretraining_loader` (dynamic masking) on the 3 MB dataset
against the examples per second one CPU IB-BERT_LARGE teacher step consumes; goal >= 20x.
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

from mobilebert_jax import cli

WORKER_MB_PER_MIN_TARGET = 25.0
SPEEDUP_TARGET = 1.7
MEMORY_GROWTH_TARGET = 1.5
LOADER_TARGET_RATIO = 20.0
CORPUS_MB = (3, 15, 60)
ARTICLE_PARAGRAPHS = 40
PROJECTION_GB = 20


def _articles(text_dir: str) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of the Wikipedia sample and of the Gutenberg books in parts."""
    out, title, paras = [], None, []
    with open(os.path.join(text_dir, "wiki_sample.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("= ") and line.endswith(" ="):
                if title and paras:
                    out.append((title, paras))
                title, paras = line[2:-2], []
            elif line:
                paras.append(line)
    if title and paras:
        out.append((title, paras))
    book_dir = os.path.join(text_dir, "gutenberg")
    for name in sorted(os.listdir(book_dir)) if os.path.isdir(book_dir) else []:
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(book_dir, name), "rb") as f:
            try:
                text = f.read().decode("utf-8")
            except UnicodeDecodeError:
                continue  # a book in another encoding: left out of the benchmark corpus
        blocks = [" ".join(b.split()) for b in text.split("\n\n")]
        blocks = [b for b in blocks if len(b.split()) >= 5]
        for part in range(0, len(blocks), ARTICLE_PARAGRAPHS):
            out.append((f"{name} part {part // ARTICLE_PARAGRAPHS}",
                        blocks[part:part + ARTICLE_PARAGRAPHS]))
    return out


def build_corpus(text_dir: str, target_mb: float, path: str) -> float:
    """Writes about `target_mb` MB of articles to `path`; returns the MB written."""
    articles = _articles(text_dir)
    if not articles:
        raise ValueError(f"no text under {text_dir} (expects wiki_sample.txt, gutenberg/*.txt)")
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_mb * 1e6:
            rng = random.Random(copy)
            for title, paras in articles:
                paras = list(paras)
                if copy:
                    rng.shuffle(paras)
                block = f"= {title} ({copy}) =\n" + "\n".join(paras) + "\n"
                f.write(block)
                written += len(block.encode("utf-8"))
                if written >= target_mb * 1e6:
                    break
            copy += 1
    return written / 1e6


class TreeMemory:
    """Samples the resident memory of a process and its descendants (psutil) every 0.1 s:
    the peak of the process itself and the peak of its busiest descendant."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.root_peak = self.child_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                self.root_peak = max(self.root_peak, self.root.memory_info().rss)
                for child in self.root.children(recursive=True):
                    try:
                        self.child_peak = max(self.child_peak, child.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_prepare(corpus_path: str, out_dir: str, workers: int) -> dict:
    """One preparation in a new process; its wall time, figures and memory peaks."""
    cmd = [sys.executable, "-m", "mobilebert_jax.data.prepare",
           f"--corpus=wiki_articles:{corpus_path}", f"--out={out_dir}", "--overwrite",
           f"--num_workers={workers}", "--seq_len=128"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    memory.stop()
    if proc.returncode:
        raise ValueError(f"preparation failed: {err.strip().splitlines()[-1] if err else out}")
    from mobilebert_jax.data import dataset_layout

    meta = dataset_layout.read_meta(out_dir)
    mb = meta["text_bytes"] / 1e6
    # In-process (1 worker) the runner is the worker; with N the workers are its children.
    worker_peak = memory.root_peak if workers == 1 else memory.child_peak
    return {"workers": workers, "text_mb": mb, "wall_s": wall,
            "mb_per_min_per_worker": mb / (wall / 60) / workers,
            "examples": sum(meta["num_examples"].values()),
            "shards": meta["num_shards"]["train"],
            "worker_peak_mb": worker_peak / 2**20, "runner_peak_mb": memory.root_peak / 2**20}


def measure_loader(data_dir: str, batch_size: int, seconds: float, num_threads: int) -> dict:
    """Examples per second of the training loader over about `seconds` after a warm-up."""
    from mobilebert_jax.data import loader

    it = loader.make_pretraining_loader(data_dir, "train", batch_size, seed=0,
                                        num_threads=num_threads)
    for _ in range(3):
        next(it)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        batches += 1
    elapsed = time.perf_counter() - start
    it.close()
    return {"examples_per_s": batches * batch_size / elapsed}


def train_step_examples_per_second(batch: int = 8, seq_len: int = 128) -> float:
    """Examples per second of the full IB-BERT_LARGE teacher pretraining step on this CPU (MLM +
    NSP, backward, LAMB) at batch 8 x seq 128, timed as in `benchmarks.train`."""
    from benchmarks.common import jax_step_seconds

    seconds, _ = jax_step_seconds("ibbert_large", batch, seq_len, 20, steps=2)
    return batch / seconds


def projection(rate_mb_per_min_per_worker: float) -> list[str]:
    """Wall time of a 20 GB preparation at the measured per-worker rate, for some worker
    counts, and the workers for about one hour (a projection: linear scaling assumed)."""
    total_mb = PROJECTION_GB * 1000
    lines = []
    for workers in (16, 64, 256):
        hours = total_mb / (rate_mb_per_min_per_worker * workers) / 60
        lines.append(f"{workers} workers: {hours:.1f} h")
    one_hour = math.ceil(total_mb / (rate_mb_per_min_per_worker * 60))
    lines.append(f"about 1 h: {one_hour} workers")
    return lines


def run(text_dir: str, loader_seconds: float, repeats: int) -> dict:
    from benchmarks.common import load_average

    results = {"load_average_before": load_average(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        small_dataset = None
        for target in CORPUS_MB:
            corpus_path = os.path.join(tmp, f"corpus_{target}mb.txt")
            build_corpus(text_dir, target, corpus_path)
            for rep in range(repeats):
                for workers in (1, 2):  # alternating, so machine load hits both
                    out = os.path.join(tmp, f"data_{target}_{workers}")
                    r = run_prepare(corpus_path, out, workers)
                    r.update(corpus_mb=target, repeat=rep, load_average=load_average())
                    results["runs"].append(r)
                    print(f"  {r['text_mb']:6.1f} MB, {workers} worker(s): {r['wall_s']:6.1f} s, "
                          f"{r['mb_per_min_per_worker']:5.1f} MB/min/worker, worker peak "
                          f"{r['worker_peak_mb']:.0f} MiB, runner peak "
                          f"{r['runner_peak_mb']:.0f} MiB (load {r['load_average']})",
                          flush=True)
            if small_dataset is None:
                small_dataset = os.path.join(tmp, f"data_{target}_1")
        if loader_seconds > 0:
            results["loader"] = measure_loader(small_dataset, 256, loader_seconds, 1)
    if loader_seconds > 0:
        results["train_step_examples_per_s"] = train_step_examples_per_second()
    results["load_average_after"] = load_average()
    return results


def summarize(results: dict) -> list[tuple[str, str, str]]:
    runs = results["runs"]

    def best(mb, workers, key, fn=max):
        return fn(r[key] for r in runs if r["corpus_mb"] == mb and r["workers"] == workers)

    rows = []
    for mb in CORPUS_MB:
        text = next(r["text_mb"] for r in runs if r["corpus_mb"] == mb)
        one, two = best(mb, 1, "wall_s", min), best(mb, 2, "wall_s", min)
        rows.append((f"{text:.1f} MB: MB/min per worker, 1 | 2 workers",
                     f"{text / (one / 60):.1f} | {text / (two / 60) / 2:.1f}",
                     f">= {WORKER_MB_PER_MIN_TARGET:g}"))
        one_worker = {r["repeat"]: r["wall_s"] for r in runs
                      if r["corpus_mb"] == mb and r["workers"] == 1}
        pairs = sorted(one_worker[r["repeat"]] / r["wall_s"] for r in runs
                       if r["corpus_mb"] == mb and r["workers"] == 2)
        rows.append((f"{text:.1f} MB: speed-up of 2 workers (best | each pair)",
                     f"{one / two:.2f}x | {', '.join(f'{x:.2f}' for x in pairs)}",
                     f">= {SPEEDUP_TARGET:g}x"))
        rows.append((f"{text:.1f} MB: peak MiB, worker (1 | 2 workers) | runner (2)",
                     f"{best(mb, 1, 'worker_peak_mb'):.0f} | {best(mb, 2, 'worker_peak_mb'):.0f}"
                     f" | {best(mb, 2, 'runner_peak_mb'):.0f}", ""))
    small, large = CORPUS_MB[0], CORPUS_MB[-1]
    size_ratio = (next(r["text_mb"] for r in runs if r["corpus_mb"] == large)
                  / next(r["text_mb"] for r in runs if r["corpus_mb"] == small))
    for workers in (1, 2):
        growth = best(large, workers, "worker_peak_mb") / best(small, workers, "worker_peak_mb")
        rows.append((f"worker peak growth, {workers} worker(s), corpus x{size_ratio:.0f}",
                     f"{growth:.2f}x", f"< {MEMORY_GROWTH_TARGET:g}x"))
    rate = min(r["text_mb"] / (r["wall_s"] / 60) / 2 for r in runs
               if r["corpus_mb"] == large and r["workers"] == 2)
    rows.append((f"projection, {PROJECTION_GB} GB on Dataflow at {rate:.1f} MB/min/worker",
                 "; ".join(projection(rate)), "(linear scaling assumed)"))
    if "loader" in results:
        loader = results["loader"]["examples_per_s"]
        train = results["train_step_examples_per_s"]
        rows.append(("loader examples/s (batch 256, 1 thread)", f"{loader:.0f}", ""))
        rows.append(("train step examples/s (CPU IB-BERT_LARGE)", f"{train:.2f}", ""))
        rows.append(("loader / training", f"{loader / train:.0f}x",
                     f">= {LOADER_TARGET_RATIO:g}x"))
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'quantity':<{w0}}  {'value':<{w1}}  target")
    print("-" * (w0 + w1 + 10))
    for name, value, target in rows:
        print(f"{name:<{w0}}  {value:<{w1}}  {target}")


@cli.guarded
def main(argv: Sequence[str]) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    if not os.path.isdir(f.text_dir):
        raise FileNotFoundError(f"--text_dir={f.text_dir} is not a directory")
    results = run(f.text_dir, f.loader_seconds, f.repeats)
    rows = summarize(results)
    print_table(rows)
    print(f"load average before: {results['load_average_before']}, after: "
          f"{results['load_average_after']}; {os.cpu_count()} CPUs")
    if f.json:
        with open(f.json, "w", encoding="utf-8") as out:
            json.dump({"results": results, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    from absl import app
    from absl import flags as _flags

    _flags.DEFINE_string("text_dir", os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "..", "shared", "data", "text"),
        "Directory with wiki_sample.txt and gutenberg/*.txt.")
    _flags.DEFINE_float("loader_seconds", 10.0, "How long to time the loader (0: skip it).")
    _flags.DEFINE_integer("repeats", 1, "Runs per corpus size and worker count (best is kept).")
    _flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
    app.run(main)
