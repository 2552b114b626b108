"""The export CLI:

    python -m mobilebert_jax.export --checkpoint=DIR --format={tflite,mediapipe} \\
        --quantize={none,float16,dynamic,int8} --seq_len=128 --out=FILE

`--format=mediapipe` writes a model MediaPipe's TextClassifier / TextEmbedder loads as it is
(`mediapipe_task.py`).
"""
from __future__ import annotations

import sys

from mobilebert_jax import cli
from mobilebert_jax.export.mediapipe_task import export_mediapipe
from mobilebert_jax.export.tflite import (
    FLOAT_NODE_GROUPS,
    INT8_FLOAT_OPS,
    QUANTIZE_MODES,
    export_checkpoint,
)


def parse_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mobilebert_jax.export",
                                     description="Export a checkpoint to TFLite (plain, or "
                                     "for MediaPipe Tasks with tokenizer and labels inside).")
    parser.add_argument("--checkpoint", required=True, help="Project checkpoint directory.")
    parser.add_argument("--format", default="tflite", choices=["tflite", "mediapipe"],
                        help="tflite: the model's raw outputs; mediapipe: a TextClassifier "
                        "(fine-tuned classifier: scores by label) or TextEmbedder (encoder) "
                        "model with its tokenizer and labels in the TFLite metadata.")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_MODES)
    parser.add_argument("--seq_len", type=int, default=128,
                        help="Fixed sequence length of the exported model.")
    parser.add_argument("--out", required=True, help="Output .tflite file.")
    parser.add_argument("--calibration_data", default="gensim_wiki",
                        help="int8 calibration text: 'gensim_wiki' or a GLUE task directory.")
    parser.add_argument("--num_calibration", type=int, default=100,
                        help="Calibration examples for int8.")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer (default: the checkpoint's).")
    parser.add_argument("--float_ops", default=None,
                        help="int8: comma-separated TFLite op types or node groups kept in "
                        f"float (default {','.join(INT8_FLOAT_OPS)}; '' for none; node groups: "
                        f"{', '.join(FLOAT_NODE_GROUPS)}).")
    parser.add_argument("--mask_mode", default=None, choices=["add", "fill"],
                        help="Override the attention mask mode at export (default: the "
                        "model's; for int8, fill).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv if argv is None else argv)[1:])
    try:
        if not args.checkpoint or not args.out:
            raise ValueError("--checkpoint and --out are required")
        export = export_mediapipe if args.format == "mediapipe" else export_checkpoint
        summary = export(args.checkpoint, args.out, args.quantize, args.seq_len,
                         args.calibration_data, args.num_calibration, args.tokenizer,
                         None if args.float_ops is None
                         else [o for o in args.float_ops.split(",") if o],
                         args.mask_mode)
    except cli.EXPECTED as e:
        return cli.fail(e)
    target = (f"MediaPipe {summary['mediapipe_task']}"
              f"{', step ' + str(summary['step']) if summary['step'] is not None else ''}, "
              if "mediapipe_task" in summary else "")
    print(f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB, {target}{summary['task']}, "
          f"outputs {', '.join(summary['outputs'])}, quantize={summary['quantize']}, "
          f"seq_len={summary['seq_len']}, mask={summary['mask_mode']}"
          f"{', float ' + '+'.join(summary['float_ops']) if summary['float_ops'] else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
