"""TFLite model metadata, in the format MediaPipe Tasks reads: a `ModelMetadata` flatbuffer
(file identifier `M001`) held in a model buffer that the model's metadata entry
`TFLITE_METADATA` points to, and the associated files it names (vocabulary, labels) packed as a
zip archive appended to the model flatbuffer (the model stays a valid `.tflite`; the zip's
central directory at the end of the file finds the files).

The flatbuffer schemas (`metadata_schema_py_generated`, the TFLite `schema_py_generated`) are
the ones the `mediapipe` wheel ships; they need only the `flatbuffers` package.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np

from mobilebert_jax import cli

METADATA_NAME = "TFLITE_METADATA"
MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
# The oldest metadata parser that reads what `populate` writes: input process units and the
# BERT / SentencePiece tokenizer options arrived in schema 1.1.0 (the newest member used).
MIN_PARSER_VERSION = "1.1.0"


def schemas():
    """(metadata schema, TFLite model schema) modules of the installed `mediapipe` wheel."""
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb
        from mediapipe.tasks.metadata import schema_py_generated as model_fb
    except ImportError:
        raise cli.CommandError("--format=mediapipe needs the mediapipe and flatbuffers packages "
                          "(pip install -e '.[mediapipe]')") from None
    return metadata_fb, model_fb


def input_tensor_names(model: bytes) -> list[str]:
    """The names of the model's input tensors, in the order of its (first) subgraph's inputs:
    the order in which metadata describes them."""
    _, model_fb = schemas()
    graph = model_fb.Model.GetRootAsModel(model, 0).Subgraphs(0)
    return [graph.Tensors(int(graph.Inputs(i))).Name().decode()
            for i in range(graph.InputsLength())]


def populate(model: bytes, metadata, files: dict[str, bytes]) -> bytes:
    """`model` with `metadata` (a `ModelMetadataT`) stored as its TFLITE_METADATA buffer (one
    written before is replaced) and `files` {name: contents} appended as a zip archive."""
    import flatbuffers

    metadata_fb, model_fb = schemas()
    metadata.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), METADATA_IDENTIFIER)
    metadata_bytes = bytes(builder.Output())

    tree = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAsModel(model, 0))
    buffer = model_fb.BufferT()
    buffer.data = np.frombuffer(metadata_bytes, np.uint8)
    tree.buffers = list(tree.buffers or []) + [buffer]
    entry = model_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or [])
                     if (m.name.decode() if isinstance(m.name, bytes) else m.name)
                     != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(len(model) + len(metadata_bytes) + 4096)
    builder.Finish(tree.Pack(builder), MODEL_IDENTIFIER)

    out = io.BytesIO()
    out.write(builder.Output())
    with zipfile.ZipFile(out, "a") as archive:  # appended after the flatbuffer
        for name, contents in files.items():
            archive.writestr(name, contents)
    return out.getvalue()
