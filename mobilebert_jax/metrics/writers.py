"""Training logs: TensorBoard events, `metrics.jsonl` and a console line, written by process 0.

Each `write(step, scalars)` adds one JSON object to `workdir/metrics.jsonl` (with at least
`step` and the scalars given, e.g. `loss`) and the same scalars as TensorBoard events.

The workdir may be a local path or a cloud-storage URI, and an object cannot be appended to in
place (some backends silently overwrite on 'a'). So the writer keeps the file's lines in memory
(those of earlier runs in this workdir, read when it opens, then its own) and, at every write,
replaces the whole file atomically: a rename locally, one object upload on Cloud Storage, as
TensorFlow's own GCS writer does for event files. No line is lost across a resume, and a reader
never sees a partial file. On a URI, TensorBoard events are written to a local directory and
each changed event file is uploaded whole after every flush.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax

from mobilebert_jax import files
from mobilebert_jax.console import plain_value


class MetricsWriter:
    """Writes scalars to TensorBoard and `metrics.jsonl`; a no-op on processes other than 0."""

    def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
        self.active = jax.process_index() == 0
        self._tb = None
        if not self.active:
            return
        files.makedirs(workdir)
        self._path = files.join(workdir, filename)
        self._text = files.read_text(self._path) if files.isfile(self._path) else ""
        if self._text and not self._text.endswith("\n"):
            self._text += "\n"  # a line cut short by a crash stays on its own line
        self._tb_remote = files.join(workdir, "tensorboard") if files.is_remote(workdir) else None
        self._tb_dir = (tempfile.mkdtemp(prefix="mobilebert_jax-tb-") if self._tb_remote
                        else files.join(workdir, "tensorboard"))
        self._uploaded: dict[str, int] = {}
        from clu import metric_writers
        self._tb = metric_writers.SummaryWriter(self._tb_dir)

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
        if not self.active:
            return
        record = {"step": int(step)}
        record.update({prefix + k: plain_value(v) for k, v in scalars.items()})
        self._text += json.dumps(record) + "\n"
        files.write_text(self._path, self._text)
        numeric = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._tb.write_scalars(int(step), numeric)
            self._tb.flush()
            self._upload_events()

    def _upload_events(self) -> None:
        if self._tb_remote is None:
            return
        for name in sorted(os.listdir(self._tb_dir)):
            local = os.path.join(self._tb_dir, name)
            size = os.path.getsize(local)
            if os.path.isfile(local) and self._uploaded.get(name) != size:
                files.copy_file(local, files.join(self._tb_remote, name))
                self._uploaded[name] = size

    def close(self) -> None:
        if self.active:
            self._tb.close()
            self._upload_events()
            if self._tb_remote is not None:
                shutil.rmtree(self._tb_dir, ignore_errors=True)
