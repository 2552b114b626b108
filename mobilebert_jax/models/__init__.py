"""The MobileBERT model family: config presets, the encoder and its task heads."""
from mobilebert_jax.models.config import (
                                          PRESETS,
                                          MobileBertConfig,
                                          from_hf_config,
                                          from_official_json,
                                          get_config,
                                          to_hf_config,
)
from mobilebert_jax.models.encoder import EncoderOutput, MobileBertModel
from mobilebert_jax.models.heads import (
                                          ClassificationOutput,
                                          MobileBertForPreTraining,
                                          MobileBertForQuestionAnswering,
                                          MobileBertForSequenceClassification,
                                          MobileBertForTokenClassification,
                                          PreTrainingOutput,
                                          SpanOutput,
)

__all__ = [
    "PRESETS", "MobileBertConfig", "from_hf_config", "from_official_json", "get_config",
    "to_hf_config", "EncoderOutput", "MobileBertModel", "ClassificationOutput",
    "MobileBertForPreTraining", "MobileBertForQuestionAnswering",
    "MobileBertForSequenceClassification", "MobileBertForTokenClassification",
    "PreTrainingOutput", "SpanOutput",
]
