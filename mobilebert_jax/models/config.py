"""Model configuration: one dataclass for the whole MobileBERT family, presets, JSON round trips.

Field names follow the official TF1 JSON configs (`bert_config.json` of MobileBERT), so an official
config loads as is; HF `config.json` files (MobileBERT and plain BERT) are translated.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from mobilebert_jax import files

ACTIVATIONS = ("gelu", "gelu_exact", "relu", "relu6", "tanh")
NORMALIZATION_TYPES = ("layer_norm", "no_norm")
ATTENTION_MASK_MODES = ("add", "fill")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class MobileBertConfig:
    """The switches of the MobileBERT encoder family (reference §1).

    `hidden_act`: "gelu" is the tanh approximation (the official TF1 code; HF's "gelu_new"),
    "gelu_exact" the erf form (HF's "gelu"). `attention_mask_mode`: "add" adds
    -10000·(1 − key_mask) to the scores (official default); "fill" sets masked scores to exactly
    -6 (the quantization-friendly variant). `embedding_and_output_norm_eps` is the epsilon of the
    embedding norm and the last-FFN output norm when it differs from `layer_norm_eps` (HF builds
    those two LayerNorms with eps 1e-5); None means `layer_norm_eps`. `remat`: what each block
    keeps for the backward pass: "none" (everything autodiff saves), "full" (only the block's
    input; the block is recomputed), "dots_no_batch" (the outputs of the dense layers, i.e. the
    matmuls without batch dimensions; attention scores, softmax, norms and activations are
    recomputed). The booleans of older configs read as true → "full", false → "none".
    """

    vocab_size: int = 30522
    hidden_size: int = 512
    embedding_size: int = 128
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128
    key_query_shared_bottleneck: bool = True
    use_bottleneck_attention: bool = False
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = False
    layer_norm_eps: float = 1e-12
    embedding_and_output_norm_eps: float | None = None
    attention_mask_mode: str = "add"
    dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self):
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        validate(self)

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def inner_size(self) -> int:
        """Width inside a block: the intra-bottleneck size, or the hidden size without one."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.inner_size // self.num_attention_heads

    @property
    def mlm_extra_columns(self) -> int:
        """Columns of `extra_output_weights`: hidden minus the tied embedding width."""
        return self.hidden_size - self.embedding_size

    @property
    def embedding_input_width(self) -> int:
        return self.embedding_size * (3 if self.trigram_input else 1)

    @property
    def has_embedding_transformation(self) -> bool:
        return self.trigram_input or self.embedding_size != self.hidden_size

    @property
    def has_pooler(self) -> bool:
        return self.classifier_activation

    def replace(self, **changes) -> "MobileBertConfig":
        return dataclasses.replace(self, **changes)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            files.write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MobileBertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: str) -> "MobileBertConfig":
        return cls.from_dict(_read_json(path))


def validate(c: MobileBertConfig) -> None:
    """Raises ValueError with one line naming the first contradiction in `c`."""
    positive = ("vocab_size", "hidden_size", "embedding_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "max_position_embeddings",
                "type_vocab_size", "num_feedforward_networks", "intra_bottleneck_size")
    for name in positive:
        if int(getattr(c, name)) <= 0:
            raise ValueError(f"model config: {name} must be positive, got {getattr(c, name)}")
    if c.hidden_act not in ACTIVATIONS:
        raise ValueError(f"model config: unknown hidden_act {c.hidden_act!r}; expected one of "
                         f"{ACTIVATIONS}")
    if c.normalization_type not in NORMALIZATION_TYPES:
        raise ValueError(f"model config: unknown normalization_type {c.normalization_type!r}; "
                         f"expected one of {NORMALIZATION_TYPES}")
    if c.attention_mask_mode not in ATTENTION_MASK_MODES:
        raise ValueError(f"model config: unknown attention_mask_mode {c.attention_mask_mode!r}; "
                         f"expected one of {ATTENTION_MASK_MODES}")
    if c.dtype not in DTYPES:
        raise ValueError(f"model config: unknown dtype {c.dtype!r}; expected one of {DTYPES}")
    if c.remat not in REMAT_POLICIES:
        raise ValueError(f"model config: unknown remat {c.remat!r}; expected one of "
                         f"{REMAT_POLICIES}")
    if c.inner_size % c.num_attention_heads:
        what = "intra_bottleneck_size" if c.use_bottleneck else "hidden_size"
        raise ValueError(f"model config: {what}={c.inner_size} is not divisible by "
                         f"num_attention_heads={c.num_attention_heads}")
    if c.embedding_size > c.hidden_size:
        raise ValueError(f"model config: embedding_size={c.embedding_size} exceeds "
                         f"hidden_size={c.hidden_size}")
    if c.use_bottleneck and c.key_query_shared_bottleneck and c.use_bottleneck_attention:
        raise ValueError("model config: key_query_shared_bottleneck and use_bottleneck_attention "
                         "are mutually exclusive")
    if not c.use_bottleneck and (c.key_query_shared_bottleneck or c.use_bottleneck_attention):
        raise ValueError("model config: key_query_shared_bottleneck/use_bottleneck_attention "
                         "need use_bottleneck=true")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if not 0.0 <= getattr(c, name) < 1.0:
            raise ValueError(f"model config: {name} must be in [0, 1), got {getattr(c, name)}")


# -- presets --------------------------------------------------------------------------------------
_MOBILEBERT = dict(
    vocab_size=30522, hidden_size=512, embedding_size=128, num_hidden_layers=24,
    num_attention_heads=4, intermediate_size=512, hidden_act="relu", hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.1, trigram_input=True, use_bottleneck=True,
    intra_bottleneck_size=128, key_query_shared_bottleneck=True, use_bottleneck_attention=False,
    num_feedforward_networks=4, normalization_type="no_norm", classifier_activation=False)

PRESETS: dict[str, dict[str, Any]] = {
    "mobilebert": _MOBILEBERT,
    "mobilebert_tiny": {**_MOBILEBERT, "key_query_shared_bottleneck": False,
                        "use_bottleneck_attention": True, "num_feedforward_networks": 2},
    "mobilebert_no_opt": {**_MOBILEBERT, "normalization_type": "layer_norm",
                          "hidden_act": "gelu"},
    "ibbert_large": {**_MOBILEBERT, "intra_bottleneck_size": 1024, "intermediate_size": 4096,
                     "key_query_shared_bottleneck": False, "num_feedforward_networks": 1,
                     "normalization_type": "layer_norm", "hidden_act": "gelu",
                     "hidden_dropout_prob": 0.1, "classifier_activation": True},
    "bert_base": dict(vocab_size=30522, hidden_size=768, embedding_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                      trigram_input=False, use_bottleneck=False, intra_bottleneck_size=768,
                      key_query_shared_bottleneck=False, use_bottleneck_attention=False,
                      num_feedforward_networks=1, normalization_type="layer_norm",
                      classifier_activation=True),
}


def get_config(name: str, **overrides) -> MobileBertConfig:
    """A preset by name (`mobilebert`, `mobilebert_tiny`, `mobilebert_no_opt`, `ibbert_large`,
    `bert_base`) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return MobileBertConfig.from_dict({**PRESETS[name], **overrides})


# -- outside config files -------------------------------------------------------------------------
def _read_json(path: str) -> dict[str, Any]:
    return files.read_json(path, "config file")


# Defaults of the official TF1 `BertConfig` for keys a JSON file leaves out.
_TF1_DEFAULTS = dict(
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=16, initializer_range=0.02,
    embedding_size=None, trigram_input=False, use_bottleneck=False, intra_bottleneck_size=None,
    use_bottleneck_attention=False, key_query_shared_bottleneck=False,
    num_feedforward_networks=1, normalization_type="layer_norm", classifier_activation=True)
_TF1_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size")


def from_official_json(path_or_dict) -> MobileBertConfig:
    """Builds a config from an official TF1 MobileBERT/BERT `bert_config.json`.

    Keys the file leaves out take the TF1 `BertConfig` defaults (so a plain BERT config gives
    the plain BERT encoder); keys it has that this project does not model are ignored.
    """
    d = _read_json(path_or_dict) if isinstance(path_or_dict, str) else dict(path_or_dict)
    missing = [k for k in _TF1_REQUIRED if k not in d]
    if missing:
        raise ValueError(f"official config lacks required key(s): {', '.join(missing)}")
    out = {**_TF1_DEFAULTS, **{k: d[k] for k in _TF1_REQUIRED}}
    out.update({k: d[k] for k in _TF1_DEFAULTS if k in d})
    if out["embedding_size"] is None:
        out["embedding_size"] = out["hidden_size"]
    if out["intra_bottleneck_size"] is None:
        out["intra_bottleneck_size"] = out["hidden_size"]
    return MobileBertConfig.from_dict(out)


_HF_ACT = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
           "relu": "relu", "relu6": "relu6", "tanh": "tanh"}


_HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")


def from_hf_config(path_or_dict, source: str = "HF config") -> MobileBertConfig:
    """Builds a config from a HuggingFace `config.json` (model_type `mobilebert` or `bert`);
    `source` names it in errors."""
    if isinstance(path_or_dict, str):
        d, source = _read_json(path_or_dict), path_or_dict
    else:
        d = dict(path_or_dict)
    model_type = d.get("model_type")
    if model_type not in ("bert", "mobilebert"):
        raise ValueError(f"{source}: unsupported model_type {model_type!r} (expected "
                         "'mobilebert' or 'bert')")
    missing = [k for k in _HF_REQUIRED if k not in d]
    if missing:
        raise ValueError(f"{source}: lacks required key(s) {', '.join(missing)}")
    act = d.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise ValueError(f"{source}: unsupported hidden_act {act!r}")
    common = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
        intermediate_size=d["intermediate_size"], hidden_act=_HF_ACT[act],
        hidden_dropout_prob=d.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=d.get("attention_probs_dropout_prob", 0.1),
        max_position_embeddings=d.get("max_position_embeddings", 512),
        type_vocab_size=d.get("type_vocab_size", 2),
        initializer_range=d.get("initializer_range", 0.02),
        layer_norm_eps=d.get("layer_norm_eps", 1e-12))
    if model_type == "bert":
        return MobileBertConfig.from_dict({
            **PRESETS["bert_base"], **common, "embedding_size": d["hidden_size"],
            "intra_bottleneck_size": d["hidden_size"]})
    if model_type == "mobilebert":
        norm = d.get("normalization_type", "no_norm")
        out = {**PRESETS["mobilebert"], **common,
               "embedding_size": d.get("embedding_size", 128),
               "trigram_input": d.get("trigram_input", True),
               "use_bottleneck": d.get("use_bottleneck", True),
               "intra_bottleneck_size": d.get("intra_bottleneck_size", 128),
               "key_query_shared_bottleneck": d.get("key_query_shared_bottleneck", True),
               "use_bottleneck_attention": d.get("use_bottleneck_attention", False),
               "num_feedforward_networks": d.get("num_feedforward_networks", 4),
               "normalization_type": norm,
               "classifier_activation": d.get("classifier_activation", True)}
        if norm == "layer_norm":
            out["embedding_and_output_norm_eps"] = 1e-5  # HF's default-eps LayerNorms
        return MobileBertConfig.from_dict(out)


def to_hf_config(c: MobileBertConfig) -> dict[str, Any]:
    """The HF `config.json` dict for `c` (MobileBertForPreTraining, or BertModel without
    bottleneck)."""
    act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "relu6": "relu6",
           "tanh": "tanh"}[c.hidden_act]
    common = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        hidden_act=act, hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        initializer_range=c.initializer_range, layer_norm_eps=c.layer_norm_eps, pad_token_id=0)
    if is_plain_bert(c):
        return {**common, "model_type": "bert", "architectures": ["BertModel"]}
    return {**common, "model_type": "mobilebert", "architectures": ["MobileBertForPreTraining"],
            "embedding_size": c.embedding_size, "trigram_input": c.trigram_input,
            "use_bottleneck": c.use_bottleneck, "intra_bottleneck_size": c.intra_bottleneck_size,
            "key_query_shared_bottleneck": c.key_query_shared_bottleneck,
            "use_bottleneck_attention": c.use_bottleneck_attention,
            "num_feedforward_networks": c.num_feedforward_networks,
            "normalization_type": c.normalization_type,
            "classifier_activation": c.classifier_activation,
            "true_hidden_size": c.inner_size}


def is_plain_bert(c: MobileBertConfig) -> bool:
    return (not c.use_bottleneck and not c.trigram_input and c.embedding_size == c.hidden_size
            and c.num_feedforward_networks == 1 and c.normalization_type == "layer_norm")
