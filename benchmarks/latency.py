"""CPU inference latency of MobileBERT, MobileBERT_TINY and BERT_BASE across runtimes.

One process, batch 1, a fixed sequence length (128), a fixed thread count (2). Each model has
random weights at its real size (latency does not depend on the values), and is timed as:

* `jax`           the Flax encoder under `jax.jit`, float32 (XLA CPU)
* `tflite_float`  the TFLite export, float32, XNNPACK
* `tflite_int8`   the full-integer TFLite export as the export CLI makes it (calibrated on real
                  Wikipedia text, fill mask, attention core and residual stream in float:
                  `tflite.INT8_FLOAT_OPS`)
* `torch`         HF transformers `MobileBertModel` / `BertModel`, PyTorch eager,
                  `torch.set_num_threads(threads)`, `torch.inference_mode()`
* `mediapipe_float`, `mediapipe_int8` (with `--head=classifier`): MediaPipe's
                  `TextClassifier.classify(text)` end to end (tokenization, inference, scores by
                  label) on the `--format=mediapipe` export of the classifier

`--head=classifier` times a 2-label sequence classifier instead of the bare encoder: the
`tflite_*` cells then run the same `--format=mediapipe` file as the `mediapipe_*` cells through
the LiteRT interpreter, fed the ids of the same text tokenized beforehand (the bare model), and
the text is real Wikipedia prose long enough to fill `--seq_len`. The TFLite and MediaPipe calls
of one precision alternate (so both meet the same machine load), and `overhead_float` /
`overhead_int8` are the medians of their paired differences (MediaPipe − TFLite: tokenization
and MediaPipe's graph). MediaPipe's Python API has no
thread setting, so every TFLite and MediaPipe cell runs pinned to the first N CPUs
(`sched_setaffinity`), the interpreter with N threads. `--threads=1,2` times each thread count.

Every cell is the median of `--runs` (≥ 20) timed calls after `--warmup` untimed ones; the
table also gives the 10th/90th percentiles, and the machine's load average is printed before
and after so a noisy run is visible. The last rows give BERT_BASE / MobileBERT per runtime
(how many times faster MobileBERT is).

    python -m benchmarks.latency [--models=mobilebert,mobilebert_tiny,bert_base]
        [--runtimes=jax,tflite_float,tflite_int8,torch,mediapipe_float,mediapipe_int8]
        [--head=encoder|classifier] [--runs=30] [--threads=2|1,2]
        [--float_ops=BATCH_MATMUL,SOFTMAX] [--json=PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np

from benchmarks.common import call_seconds, write_json

MODELS = ("mobilebert", "mobilebert_tiny", "bert_base")
RUNTIMES = ("jax", "tflite_float", "tflite_int8", "torch", "mediapipe_float", "mediapipe_int8")
DEFAULT_RUNTIMES = RUNTIMES[:4]
HEADS = ("encoder", "classifier")
NAMES = {"mobilebert": "MobileBERT", "mobilebert_tiny": "MobileBERT_TINY",
         "bert_base": "BERT_BASE"}


def latency_ms(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Median and 10th/90th percentile wall time of `fn()` in milliseconds."""
    return summary_ms([1e3 * t for t in call_seconds(fn, runs, warmup)])


def summary_ms(times: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
            "p90_ms": float(np.percentile(times, 90)), "runs": len(times)}


def interleaved_ms(fns: dict[str, Callable[[], object]], runs: int,
                   warmup: int) -> dict[str, list[float]]:
    """Milliseconds of each call of each of `fns`, called in turn `runs` times (after `warmup`
    rounds), so that every runtime meets the same machine load; the i-th times pair up."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def report(preset: str, cell: str, r: dict) -> None:
    print(f"  {NAMES[preset]:<16} {cell:<20} {r['median_ms']:8.2f} ms (p10 {r['p10_ms']:.2f}, "
          f"p90 {r['p90_ms']:.2f}; setup {r['setup_s']:.0f}s; load {r['load']:.1f})",
          file=sys.stderr, flush=True)


def example_inputs(config, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One row of random token ids, full attention mask, two segments."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, (1, seq_len)).astype(np.int32)
    types = np.zeros((1, seq_len), np.int32)
    types[:, seq_len // 2:] = 1
    return {"input_ids": ids, "input_mask": np.ones((1, seq_len), np.int32),
            "segment_ids": types}


def jax_runner(config, params, inputs) -> Callable[[], object]:
    import jax

    from mobilebert_jax.export import runtime, tflite

    fn = jax.jit(tflite.inference_fn(config, params))
    args = [jax.device_put(inputs[n]) for n in runtime.INPUT_NAMES]
    params = jax.device_put(params)
    return lambda: jax.block_until_ready(fn(params, *args))


def tflite_runner(config, params, inputs, quantize: str, threads: int, seq_len: int,
                  float_ops=None) -> Callable[[], object]:
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.export import calibration, runtime, tflite

    calib = None
    if quantize == "int8":
        calib = calibration.representative_inputs(load_tokenizer("bert-base-uncased"), seq_len,
                                                  8)
    # as `python -m mobilebert_jax.export` builds it
    float_ops, mask_mode = tflite.default_options(config, quantize,
                                                  float_ops if quantize == "int8" else None)
    model = runtime.TFLiteModel(tflite.to_tflite(config, params, seq_len, quantize, calib,
                                                 float_ops=float_ops, export_mask_mode=mask_mode),
                                num_threads=threads)
    return lambda: model(**inputs)


def mediapipe_bytes(config, params, seq_len: int, quantize: str, float_ops=None) -> bytes:
    """The `--format=mediapipe` export of a 2-label classifier (labels "0", "1"), with the
    BERT uncased vocabulary; int8 as the export CLI builds it."""
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.export import calibration, mediapipe_task, tflite

    tokenizer = load_tokenizer("bert-base-uncased")
    calib = (calibration.representative_inputs(tokenizer, seq_len, 8) if quantize == "int8"
             else None)
    float_ops, mask_mode = tflite.default_options(config, quantize,
                                                  float_ops if quantize == "int8" else None)
    card = {"name": "latency", "kind": "classification", "labels": ["0", "1"]}
    return mediapipe_task.mediapipe_model(config, params, tokenizer, card, seq_len, quantize,
                                          calib, float_ops, mask_mode)[0]


def long_text(seq_len: int) -> str:
    """Lower-case Wikipedia prose (the gensim sample) that tokenizes to more than `seq_len`
    pieces, so a model of that length runs full."""
    from mobilebert_jax.data.corpus import iter_documents
    from mobilebert_jax.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("bert-base-uncased")
    words = []
    for doc in iter_documents("gensim_wiki"):
        words += " ".join(doc).split()
        text = " ".join(words).lower()
        if len(tokenizer.encode(text)) > seq_len:
            return text
    raise ValueError("the gensim Wikipedia sample is too short")


def text_inputs(text: str, seq_len: int) -> dict[str, np.ndarray]:
    """`[CLS] text [SEP]` truncated to `seq_len`, segment 0: what MediaPipe feeds."""
    from mobilebert_jax.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("bert-base-uncased")
    ids = [tokenizer.cls_id] + tokenizer.encode(text)[:seq_len - 2] + [tokenizer.sep_id]
    row = np.zeros((1, seq_len), np.int32)
    row[0, :len(ids)] = ids
    mask = (np.arange(seq_len) < len(ids)).astype(np.int32)[None]
    return {"input_ids": row, "input_mask": mask, "segment_ids": np.zeros_like(row)}


def mediapipe_runner(model: bytes, text: str) -> Callable[[], object]:
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.text import text_classifier

    classifier = text_classifier.TextClassifier.create_from_options(
        text_classifier.TextClassifierOptions(base_options=BaseOptions(model_asset_buffer=model)))
    run = lambda: classifier.classify(text)  # noqa: E731
    run.close = classifier.close
    return run


def pinned(threads: int):
    """Pins this process to its first `threads` allowed CPUs; returns the CPU set to restore."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:threads])
    return set(allowed)


def torch_runner(config, inputs, threads: int) -> Callable[[], object]:
    import torch
    import transformers

    from mobilebert_jax.models.config import is_plain_bert, to_hf_config

    torch.set_num_threads(threads)
    hf = to_hf_config(config)
    hf.pop("architectures", None)
    if is_plain_bert(config):
        model = transformers.BertModel(transformers.BertConfig(**hf))
    else:
        model = transformers.MobileBertModel(transformers.MobileBertConfig(**hf))
    model.eval()
    hf_names = {"input_mask": "attention_mask", "segment_ids": "token_type_ids"}
    feed = {hf_names.get(k, k): torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}

    def run():
        with torch.inference_mode():
            return model(**feed)

    return run


def bench_model(preset: str, runtimes, runs: int, warmup: int, threads: list[int],
                seq_len: int, float_ops=None, head: str = "encoder") -> dict[str, dict]:
    """{cell: timings} of one model; a cell is the runtime, or `runtime/Nt` when more than one
    thread count is timed."""
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from mobilebert_jax.export import runtime as tflite_runtime
    from mobilebert_jax.models import (
        MobileBertForSequenceClassification,
        MobileBertModel,
        get_config,
    )

    config = get_config(preset, attention_mask_mode="add")
    ids = jnp.ones((1, seq_len), jnp.int32)
    if head == "classifier":
        params = meta.unbox(MobileBertForSequenceClassification(config, 2).init(
            jax.random.PRNGKey(0), ids)["params"])
        text = long_text(seq_len)
        inputs = text_inputs(text, seq_len)
    else:
        params = {"bert": meta.unbox(MobileBertModel(config).init(
            jax.random.PRNGKey(0), ids)["params"])}
        inputs = example_inputs(config, seq_len)
    params = jax.tree_util.tree_map(np.asarray, params)
    results = {}
    cells = lambda runtime, n: (runtime if len(threads) == 1 or runtime == "jax"  # noqa: E731
                                else f"{runtime}/{n}t")
    if head == "classifier":  # the TFLite and MediaPipe cells of a precision, interleaved
        for precision in dict.fromkeys(r.rsplit("_", 1)[-1] for r in runtimes
                                       if r.startswith(("tflite", "mediapipe"))):
            quantize = "none" if precision == "float" else "int8"
            start = time.time()
            model = mediapipe_bytes(config, params, seq_len, quantize, float_ops)
            setup = time.time() - start
            for n in threads:
                restore = pinned(n)
                fns = {}
                for runtime in (f"tflite_{precision}", f"mediapipe_{precision}"):
                    if runtime not in runtimes:
                        continue
                    if runtime.startswith("mediapipe"):
                        fns[runtime] = mediapipe_runner(model, text)
                    else:
                        interpreter = tflite_runtime.TFLiteModel(model, num_threads=n)
                        fns[runtime] = lambda m=interpreter: m(**inputs)
                times = interleaved_ms(fns, runs, warmup)
                load = round(os.getloadavg()[0], 2)
                os.sched_setaffinity(0, restore)
                if len(fns) == 2:
                    times[f"overhead_{precision}"] = list(
                        np.subtract(*(times[r] for r in reversed(list(fns)))))
                for runtime, values in times.items():
                    results[cells(runtime, n)] = {**summary_ms(values), "setup_s": round(setup, 1),
                                                  "load": load}
                    report(preset, cells(runtime, n), results[cells(runtime, n)])
                for fn in fns.values():
                    if hasattr(fn, "close"):
                        fn.close()
        runtimes = [r for r in runtimes if not r.startswith(("tflite", "mediapipe"))]
    for runtime in runtimes:
        for n in threads if runtime != "jax" else threads[:1]:
            cell = cells(runtime, n)
            start = time.time()
            quantize = "none" if runtime.endswith("float") else "int8"
            restore = None
            if runtime == "jax":
                fn = jax_runner(config, params, inputs)
            elif runtime == "torch":
                fn = torch_runner(config, inputs, n)
            else:
                restore = pinned(n)
                fn = tflite_runner(config, params, inputs, quantize, n, seq_len, float_ops)
            setup = time.time() - start
            results[cell] = {**latency_ms(fn, runs, warmup), "setup_s": round(setup, 1),
                             "load": round(os.getloadavg()[0], 2)}
            if restore is not None:
                os.sched_setaffinity(0, restore)
            report(preset, cell, results[cell])
            del fn
    return results


def format_table(results: dict[str, dict]) -> str:
    """The latency table (median ms, [p10–p90]) plus the BERT_BASE / MobileBERT ratios."""
    runtimes = list(dict.fromkeys(c for row in results.values() for c in row))
    header = f"{'model':<26}" + "".join(f"{r:>24}" for r in runtimes)
    lines = [header, "-" * len(header)]
    for preset, row in results.items():
        cells = []
        for r in runtimes:
            c = row.get(r)
            cells.append(f"{c['median_ms']:8.2f} [{c['p10_ms']:.1f}-{c['p90_ms']:.1f}]"
                         if c else "-")
        lines.append(f"{NAMES[preset]:<26}" + "".join(f"{c:>24}" for c in cells))
    if "bert_base" in results:
        for small in ("mobilebert", "mobilebert_tiny"):
            if small not in results:
                continue
            cells = [f"{results['bert_base'][r]['median_ms'] / results[small][r]['median_ms']:.2f}x"
                     if r in results[small] and r in results["bert_base"] else "-"
                     for r in runtimes]
            lines.append(f"{'BERT_BASE / ' + NAMES[small]:<26}"
                         + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def export_float_ops(float_ops) -> tuple[str, ...]:
    from mobilebert_jax.export import tflite

    return tflite.INT8_FLOAT_OPS if float_ops is None else tuple(float_ops)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                        help=f"Comma-separated, of {', '.join(RUNTIMES)}.")
    parser.add_argument("--head", default="encoder", choices=HEADS,
                        help="encoder: the bare encoder; classifier: a 2-label classifier "
                        "exported with --format=mediapipe (needed by the mediapipe runtimes).")
    parser.add_argument("--runs", type=int, default=30, help="Timed calls per cell (>= 20).")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", default="2",
                        help="Thread count, or a comma-separated list of them (e.g. 1,2).")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--float_ops", default=None,
                        help="tflite_int8: ops kept in float, comma-separated, as the export "
                        "CLI's --float_ops ('' for none; default: tflite.INT8_FLOAT_OPS).")
    parser.add_argument("--json", default=None, help="Also write the results to this file.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv if argv is None else argv)[1:])
    try:
        models = [m for m in args.models.split(",") if m]
        runtimes = [r for r in args.runtimes.split(",") if r]
        bad = [m for m in models if m not in MODELS] + [r for r in runtimes if r not in RUNTIMES]
        if bad or not models or not runtimes:
            raise ValueError(f"unknown or empty model/runtime {bad}; models: {MODELS}, "
                             f"runtimes: {RUNTIMES}")
        try:
            threads = [int(t) for t in args.threads.split(",") if t]
        except ValueError:
            raise ValueError(f"--threads must be integers, got {args.threads!r}") from None
        if args.runs < 20 or args.warmup < 1 or not threads or min(threads) < 1:
            raise ValueError("need --runs >= 20, --warmup >= 1 and --threads >= 1")
        if max(threads) > len(os.sched_getaffinity(0)):
            raise ValueError(f"--threads={max(threads)} exceeds the "
                             f"{len(os.sched_getaffinity(0))} CPUs this process may use")
        if args.head != "classifier" and any(r.startswith("mediapipe") for r in runtimes):
            raise ValueError("the mediapipe runtimes time a classifier: add --head=classifier")
        if not 1 <= args.seq_len <= 512:
            raise ValueError(f"--seq_len must be in [1, 512], got {args.seq_len}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load_before = os.getloadavg()
    print(f"batch 1, seq {args.seq_len}, {args.head}, threads {args.threads}, median of "
          f"{args.runs} runs "
          f"after {args.warmup} warm-up; cpus {os.cpu_count()}, load average before "
          f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}", flush=True)
    float_ops = (None if args.float_ops is None
                 else tuple(o for o in args.float_ops.split(",") if o))
    print(f"tflite_int8 float ops: "
          f"{'+'.join(export_float_ops(float_ops)) or 'none (everything int8)'}", flush=True)
    results = {m: bench_model(m, runtimes, args.runs, args.warmup, threads, args.seq_len,
                              float_ops, args.head)
               for m in models}
    load_after = os.getloadavg()
    print(format_table(results))
    print(f"load average after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    write_json(args.json, {"args": vars(args), "load_before": load_before,
                           "load_after": load_after, "results": results,
                           "int8_float_ops": list(export_float_ops(float_ops))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
