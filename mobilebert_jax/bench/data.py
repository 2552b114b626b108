"""Data pipeline benchmark: preparation and loader throughput against training consumption.

    python -m mobilebert_jax.bench.data [--corpus=gensim_wiki] [--seq_len=128] [--json=PATH]

prints a table with
  * preparation throughput: MB of corpus text per minute, per wall-clock minute and per
    CPU-minute (user + system time of all threads, i.e. per core);
  * loader throughput: examples per second of `make_pretraining_loader` (dynamic masking);
  * the examples per second one CPU teacher training step consumes
    (`train_step_examples_per_second`) and the loader's headroom over it.
Targets: preparation >= 5 MB/min per core; loader >= 20x what training consumes.
"""
from __future__ import annotations

import os
import resource
import tempfile
import time
from typing import Sequence

from mobilebert_jax import cli

PREPARE_TARGET_MB_PER_MIN_PER_CORE = 5.0
LOADER_TARGET_RATIO = 20.0


def train_step_examples_per_second(preset: str = "ibbert_large", batch: int = 8,
                                   seq_len: int = 128) -> float:
    """Examples per second one CPU teacher pretraining step consumes: the full IB-BERT_LARGE
    teacher step (MLM + NSP, backward, LAMB) at batch 8 × seq 128, timed as in
    `mobilebert_jax.bench.train`."""
    from mobilebert_jax.bench.common import jax_step_seconds

    seconds, _ = jax_step_seconds(preset, batch, seq_len, 20, steps=2)
    return batch / seconds


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_preparation(corpus: str, tokenizer: str, out_dir: str, seq_len: int) -> dict:
    """Prepares `corpus` into `out_dir` (replacing it) and returns throughput figures."""
    import tensorflow_datasets  # noqa: F401  (one-time import, not part of the throughput)

    from mobilebert_jax.data import prepare

    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    prepare.prepare_dataset(corpus, tokenizer, out_dir, seq_len=seq_len, overwrite=True,
                            reuse=False, progress=False)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    meta = prepare.read_meta(out_dir)
    mb = meta["text_bytes"] / 1e6
    return {"text_mb": mb, "wall_s": wall, "cpu_s": cpu,
            "mb_per_min": mb / (wall / 60), "mb_per_cpu_min": mb / (cpu / 60),
            "examples": sum(meta["num_examples"].values())}


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
    return {"examples_per_s": batches * batch_size / elapsed, "batches": batches,
            "seconds": elapsed}


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def run(corpus: str, tokenizer: str, seq_len: int, batch_size: int, loader_seconds: float,
        num_threads: int, out_dir: str | None = None) -> list[tuple[str, str, str]]:
    """Runs the benchmark and returns the table rows (quantity, value, target)."""
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        data_dir = out_dir or os.path.join(tmp, "data")
        prep = measure_preparation(corpus, tokenizer, data_dir, seq_len)
        load = measure_loader(data_dir, batch_size, loader_seconds, num_threads)
    train = train_step_examples_per_second()
    ratio = None if not train else load["examples_per_s"] / train
    cores = os.cpu_count() or 1
    return [
        ("corpus", f"{corpus} ({prep['text_mb']:.2f} MB text, {prep['examples']} examples, "
                   f"seq {seq_len})", ""),
        ("preparation time (s)", f"{prep['wall_s']:.1f} wall, {prep['cpu_s']:.1f} CPU", ""),
        ("preparation MB/min (wall)", f"{prep['mb_per_min']:.1f}", f"{cores} cores"),
        ("preparation MB/min per core", f"{prep['mb_per_cpu_min']:.1f}",
         f">= {PREPARE_TARGET_MB_PER_MIN_PER_CORE:g}"),
        ("loader examples/s", f"{load['examples_per_s']:.0f}",
         f"batch {batch_size}, {num_threads} threads"),
        ("train step examples/s (CPU teacher)", _fmt(train), ""),
        ("loader / training", _fmt(ratio, ".1f") + ("x" if ratio else ""),
         f">= {LOADER_TARGET_RATIO:g}x"),
    ]


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
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    rows = run(f.corpus, f.tokenizer, f.seq_len, f.batch_size, f.loader_seconds,
               f.num_threads, f.out)
    print_table(rows)
    from mobilebert_jax.bench.common import load_average, write_json

    print(f"load average after: {load_average()}")
    write_json(f.json, {"rows": [dict(quantity=q, value=v, target=t) for q, v, t in rows],
                        "load_average_after": load_average()})


if __name__ == "__main__":
    from absl import app
    from absl import flags as _flags

    _flags.DEFINE_string("corpus", "gensim_wiki", "Corpus spec (see mobilebert_jax.data.corpus).")
    _flags.DEFINE_string("tokenizer", "bert-base-uncased", "Tokenizer path or name.")
    _flags.DEFINE_integer("seq_len", 128, "Sequence length.")
    _flags.DEFINE_integer("batch_size", 256, "Loader batch size.")
    _flags.DEFINE_float("loader_seconds", 10.0, "How long to time the loader.")
    _flags.DEFINE_integer("num_threads", 1, "Loader read threads.")
    _flags.DEFINE_string("out", None, "Keep the prepared dataset here (default: a temp dir).")
    _flags.DEFINE_string("json", None, "Also write the table to this JSON file.")
    app.run(main)
