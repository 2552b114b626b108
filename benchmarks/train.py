"""Training-step benchmark on this machine, in one process:

    python -m benchmarks.train [--batch=8] [--seq=128] [--steps=5]
        [--models=mobilebert,ibbert_large] [--dtype=float32|bfloat16] [--split] [--json=PATH]

For each model: one full pretraining step (MLM at the gathered positions + NSP, forward, backward,
LAMB update) — step time, tokens/s and MFU against a matmul peak measured here. Then the same
MobileBERT step in HF transformers (PyTorch eager, `MobileBertForPreTraining` encoder with the
MLM head applied at the gathered positions, AdamW since torch has no LAMB) and the ratio, the
two steps timed in turn (JAX, PyTorch, JAX, ...: the median of the per-pair ratios with its
range and the load average), and the fusion count of each compiled JAX step.
`--dtype` sets the JAX compute dtype (params, norms, softmax and losses stay float32); `--split`
also times the parts of each JAX step on their own (forward, `jax.grad`, LAMB update);
`--json` writes every figure printed to a file.
"""
from __future__ import annotations

import os
import statistics

import jax
from absl import app, flags

from benchmarks.common import (
    alternate,
    jax_step_runner,
    jax_step_split,
    load_average,
    synthetic_batch,
    time_calls,
    write_json,
)
from mobilebert_jax import host_memory
from mobilebert_jax.metrics import throughput
from mobilebert_jax.models import get_config, to_hf_config

flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("seq", 128, "Sequence length.")
flags.DEFINE_integer("predictions", 20, "Masked positions per sequence.")
flags.DEFINE_integer("steps", 5, "Timed steps (median reported), after one warm-up step; "
                     "for MobileBERT with --torch, alternating JAX/PyTorch pairs.")
flags.DEFINE_list("models", ["mobilebert", "ibbert_large"], "Presets to time in JAX.")
flags.DEFINE_bool("torch", True, "Also time the HF PyTorch MobileBERT step.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX compute dtype.")
flags.DEFINE_bool("split", False, "Also time forward, jax.grad and the LAMB update alone.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
FLAGS = flags.FLAGS


def torch_step_runner(batch: int, seq: int, predictions: int):
    """The HF PyTorch MobileBERT pretraining step (AdamW) as a callable."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = get_config("mobilebert")
    hf_config = transformers.MobileBertConfig(**{k: v for k, v in to_hf_config(config).items()
                                                 if k not in ("architectures", "model_type")})
    model = transformers.MobileBertForPreTraining(hf_config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)
    data = {k: torch.from_numpy(v) for k, v in synthetic_batch(config, batch, seq,
                                                                 predictions).items()}
    positions = data["masked_lm_positions"].long()

    def run():
        opt.zero_grad(set_to_none=True)
        out = model.mobilebert(input_ids=data["input_ids"].long(),
                               token_type_ids=data["segment_ids"].long(),
                               attention_mask=data["input_mask"].long())
        seq_out = out.last_hidden_state
        gathered = torch.gather(seq_out, 1, positions[..., None].expand(-1, -1, seq_out.shape[-1]))
        mlm_logits, nsp_logits = model.cls(gathered, out.pooler_output)
        mlm = torch.nn.functional.cross_entropy(mlm_logits.reshape(-1, mlm_logits.shape[-1]),
                                                data["masked_lm_ids"].long().reshape(-1))
        nsp = torch.nn.functional.cross_entropy(nsp_logits, data["next_sentence_labels"].long())
        (mlm + nsp).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return run


def main(argv):
    del argv
    host_memory.keep_freed_memory()  # as the trainers' entry point (main.py) does
    b, s, p = FLAGS.batch, FLAGS.seq, FLAGS.predictions
    peak = throughput.measure_matmul_peak(size=1536, repeats=20)
    results = {"device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
               "cpus": os.cpu_count(), "load_average_before": load_average(),
               "matmul_peak_gflops": peak / 1e9, "batch": b, "seq": s, "predictions": p,
               "dtype": FLAGS.dtype, "steps": FLAGS.steps, "rows": []}
    print(f"device: {results['device']} ({jax.device_count()} device), "
          f"measured matmul peak {peak / 1e9:.1f} GFLOP/s; batch {b} x seq {s}, {p} MLM positions, "
          f"JAX compute {FLAGS.dtype}; load average {results['load_average_before']}")
    print(f"{'model':<16}{'runtime':<16}{'step ms':>10}{'tokens/s':>11}{'GFLOP/step':>12}"
          f"{'MFU':>8}")

    def row(name, runtime, seconds, flops, **extra):
        results["rows"].append(dict(model=name, runtime=runtime, step_ms=seconds * 1e3,
                                    tokens_per_s=b * s / seconds, gflop_per_step=flops / 1e9,
                                    mfu=flops / seconds / peak, **extra))
        print(f"{name:<16}{runtime:<16}{seconds * 1e3:>10.1f}{b * s / seconds:>11.0f}"
              f"{flops / 1e9:>12.1f}{flops / seconds / peak:>8.1%}", flush=True)
        return results["rows"][-1]

    for name in FLAGS.models:
        run, flops, fusions = jax_step_runner(name, b, s, p, FLAGS.dtype)
        if name == "mobilebert" and FLAGS.torch:
            # JAX and PyTorch steps in turn, so that a shared machine's load hits both alike.
            pairs = alternate(run, torch_step_runner(b, s, p), FLAGS.steps)
            seconds = statistics.median(j for j, _ in pairs)
            ratios = sorted(t / j for j, t in pairs)
            jax_row = row(name, "jax (LAMB)", seconds, flops, fusions=fusions)
            row(name, "torch (AdamW)", statistics.median(t for _, t in pairs), flops)
            results.update(jax_over_torch_throughput=statistics.median(ratios),
                           jax_over_torch_min=ratios[0], jax_over_torch_max=ratios[-1],
                           pairs=len(pairs))
            print(f"MobileBERT step: JAX is {statistics.median(ratios):.2f}x the PyTorch "
                  f"throughput (median of {len(pairs)} alternating pairs; range "
                  f"{ratios[0]:.2f}-{ratios[-1]:.2f}; load average {load_average()})")
        else:
            jax_row = row(name, "jax (LAMB)", time_calls(run, FLAGS.steps), flops,
                          fusions=fusions)
        print(f"  {name}: {fusions} XLA fusions in the compiled step", flush=True)
        if FLAGS.split:
            split = jax_step_split(name, b, s, p, FLAGS.steps, FLAGS.dtype)
            jax_row.update({f"{k}_ms": v * 1e3 for k, v in split.items()})
            print("  split: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in split.items())
                  + " (each jitted alone; grad = forward + backward)", flush=True)
    results["load_average_after"] = load_average()
    print(f"load average after {results['load_average_after']}")
    write_json(FLAGS.json, results)


if __name__ == "__main__":
    app.run(main)
