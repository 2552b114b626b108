"""Building blocks of the distillation trainer (`distill.py`).

* ``StagePlan``: which stage a step belongs to for PKT (one transfer stage per layer, then
  pre-training distillation), JKT (all layers' transfer losses together, then PD) and AKT
  (transfer losses + PD at once), and how deep teacher and student run in it.
* ``check_compatible``: the teacher/student shape checks layer-wise transfer needs.
* ``copy_teacher_parts``: the student's embeddings and MLM/NSP heads copied from the teacher.
* ``transfer_optimizer`` / ``pd_optimizer``: the optax chains of the two phases.
* ``distillation_loss`` and ``make_train_step``: the loss of a stage and its update step. The
  teacher params are an argument of their own (no gradient, no optimizer state, not donated).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.models.encoder import MobileBertModel
from mobilebert_jax.models.heads import MobileBertForPreTraining
from mobilebert_jax.train import core, layer_multipliers, losses, objectives, optim

STRATEGIES = ("pkt", "jkt", "akt")
TRANSFER, PD, AKT = "transfer", "pd", "akt"


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the run: the steps in [start, end) (end None: to the end of the run)."""
    index: int
    kind: str  # transfer | pd | akt
    layers: tuple[int, ...]  # layers whose transfer losses count
    depth: int  # blocks of teacher and student that run
    start: int
    end: Optional[int]

    @property
    def phase(self) -> str:
        """The optimizer family: 'transfer' (layer multipliers) or 'pd' (LAMB schedule)."""
        return TRANSFER if self.kind == TRANSFER else PD

    @property
    def name(self) -> str:
        if self.kind == TRANSFER:
            return f"transfer_layer_{self.layers[0]}" if len(self.layers) == 1 else "transfer_all"
        return self.kind


class StagePlan:
    """The stages of a strategy; boundaries depend on steps_per_layer only, not total_steps."""

    def __init__(self, strategy: str, num_layers: int, steps_per_layer: int):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown distillation strategy {strategy!r}; expected one of "
                             f"{', '.join(STRATEGIES)}")
        if int(steps_per_layer) < 1:
            raise ValueError(f"steps_per_layer must be >= 1, got {steps_per_layer}")
        self.strategy, self.num_layers = strategy, int(num_layers)
        self.steps_per_layer = int(steps_per_layer)
        n, p = self.num_layers, self.steps_per_layer
        all_layers = tuple(range(n))
        if strategy == "pkt":
            self.stages = [Stage(k, TRANSFER, (k,), k + 1, k * p, (k + 1) * p) for k in range(n)]
            self.stages.append(Stage(n, PD, (), n, n * p, None))
        elif strategy == "jkt":
            self.stages = [Stage(0, TRANSFER, all_layers, n, 0, n * p),
                           Stage(1, PD, (), n, n * p, None)]
        else:
            self.stages = [Stage(0, AKT, all_layers, n, 0, None)]
        self.transfer_steps = 0 if strategy == "akt" else n * p
        self.pd_start = self.stages[-1].start

    def stage_at(self, step: int) -> Stage:
        """The stage of update number `step` (0-based; = the state's step before it)."""
        for stage in self.stages:
            if stage.end is None or step < stage.end:
                return stage
        raise AssertionError("the last stage has no end")


# --------------------------------------------------------------------------------------------
# Teacher / student
# --------------------------------------------------------------------------------------------


# The attention layout that tells the student presets apart (sizes and FFN counts are free to
# override).
PRESET_SWITCHES = ("use_bottleneck", "use_bottleneck_attention", "key_query_shared_bottleneck")


def check_student_preset(preset: str, student: MobileBertConfig) -> None:
    """`config.student` names the preset `config.model` was built from; a `--config.student`
    override alone would not change the model, so a disagreement is an error."""
    from mobilebert_jax.models.config import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; known presets: {', '.join(PRESETS)}")
    for name in PRESET_SWITCHES:
        if PRESETS[preset][name] != getattr(student, name):
            raise ValueError(f"config.student={preset!r} but config.model has {name}="
                             f"{getattr(student, name)!r} (the preset has "
                             f"{PRESETS[preset][name]!r}); pick the student with the config "
                             "variant (e.g. :tiny)")


def check_compatible(teacher: MobileBertConfig, student: MobileBertConfig,
                     attention_transfer: bool = True) -> None:
    """One-line ValueError naming the first teacher/student difference that layer-wise transfer
    (FMT on equal widths, layer-to-layer pairing, AT on equal head counts) or the copy of the
    embeddings and heads cannot bridge."""
    needs = [("hidden_size", "feature-map transfer compares hidden states of equal width"),
             ("num_hidden_layers", "layer-wise transfer pairs layer l with layer l"),
             ("embedding_size", "the embeddings are copied from the teacher"),
             ("vocab_size", "the embeddings and MLM head are copied from the teacher"),
             ("trigram_input", "the embedding transformation is copied from the teacher"),
             ("max_position_embeddings", "the position embeddings are copied from the teacher"),
             ("type_vocab_size", "the token-type embeddings are copied from the teacher")]
    if attention_transfer:
        needs.append(("num_attention_heads", "attention transfer compares head by head"))
    for field, why in needs:
        t, s = getattr(teacher, field), getattr(student, field)
        if t != s:
            raise ValueError(f"teacher and student differ in {field} (teacher {t}, student {s}): "
                             f"{why}")


def _is_norm(name: str) -> bool:
    return "LayerNorm" in name or "layer_norm" in name


def copied_from_teacher(names: tuple[str, ...], same_norm: bool) -> bool:
    """Whether the student parameter at `names` starts as the teacher's: the embeddings (word,
    trigram transformation, position, type; the norm only when both norms are alike) and every
    MLM/NSP head parameter (`cls/...`)."""
    if names[0] == "cls":
        return True
    if names[:2] == ("bert", "embeddings"):
        return same_norm or not any(_is_norm(n) for n in names[2:])
    return False


def copy_teacher_parts(student_params: Any, teacher_params: Any, same_norm: bool) -> Any:
    """`student_params` with the embeddings and heads replaced by copies of the teacher's
    (copies, not aliases, also under jit: the student's buffers are donated every step)."""
    teacher_flat = {optim.path_names(p): v
                    for p, v in jax.tree_util.tree_flatten_with_path(teacher_params)[0]}

    def pick(path, leaf):
        names = optim.path_names(path)
        if copied_from_teacher(names, same_norm):
            source = teacher_flat.get(names)
            if source is None or source.shape != leaf.shape:
                raise ValueError(f"cannot copy {'/'.join(names)} from the teacher "
                                 f"({None if source is None else source.shape} vs {leaf.shape})")
            return jnp.copy(source.astype(leaf.dtype))  # own buffers: the student's are donated
        return leaf

    return jax.tree_util.tree_map_with_path(pick, student_params)


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------

def transfer_multipliers(transfer_cfg, strategy: str, num_layers: int,
                         steps_per_layer: int) -> Callable[[jax.Array], jax.Array]:
    """Per-layer learning-rate multipliers [num_layers] as a function of the step: PKT's
    3·bg(t)·{0 above k, 1 at k, 0.1 below k}; JKT trains every layer at 1."""
    if strategy == "pkt":
        return lambda step: layer_multipliers.pkt_layer_multipliers(
            step, steps_per_layer, num_layers, base=transfer_cfg.multiplier,
            lower=transfer_cfg.lower_multiplier, hard_freeze=transfer_cfg.hard_freeze)
    return lambda step: jnp.ones((num_layers,), jnp.float32)


def transfer_optimizer(transfer_cfg, multipliers) -> optax.GradientTransformation:
    """clip → LAMB/AdamW direction → layer multipliers (embeddings and heads: 0) → −lr."""
    return optax.chain(
        optim.direction(transfer_cfg.optimizer, weight_decay=transfer_cfg.weight_decay,
                        clip_norm=transfer_cfg.clip_norm),
        layer_multipliers.scale_by_layer_multipliers(None, multipliers, other_multiplier=0.0),
        optax.scale_by_learning_rate(transfer_cfg.learning_rate))


def pd_optimizer(opt_cfg, total_steps: int, pd_start: int):
    """(tx, schedule) of pre-training distillation; its decay spans `opt_cfg.total_steps`,
    or (0) the steps from `pd_start` to `total_steps`."""
    opt = opt_cfg.copy_and_resolve_references()
    if not opt.total_steps:
        opt.total_steps = max(int(total_steps) - pd_start, 1)
    return optim.make_optimizer(opt)


# --------------------------------------------------------------------------------------------
# Losses and the step
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossSettings:
    num_layers: int
    weights: dict
    all_teacher_layers: bool = False
    ground_truth_ratio: float = 0.5


def _encoder(config: MobileBertConfig, params, batch, depth: Optional[int]):
    return MobileBertModel(config, depth).apply(
        {"params": params["bert"]}, batch["input_ids"], batch["segment_ids"],
        batch["input_mask"], deterministic=True)


def _pretraining(config: MobileBertConfig, params, batch):
    return objectives.forward(MobileBertForPreTraining(config), params, batch, deterministic=True)


def transfer_terms(t_out, s_out, layers, settings: LossSettings):
    """Sum of the weighted transfer losses of `layers`, and their parts per layer."""
    total, metrics = jnp.zeros((), jnp.float32), {}
    h_t_all = jnp.stack(t_out.hidden_states) if settings.all_teacher_layers else None
    for layer in layers:
        loss, parts = losses.layer_transfer_loss(
            t_out.hidden_states[layer + 1], s_out.hidden_states[layer + 1],
            t_out.attention_scores[layer], s_out.attention_scores[layer], settings.num_layers,
            settings.weights, settings.all_teacher_layers, h_t_all)
        total = total + loss
        for key, name in (("fmt", "fmt"), ("at", "at"), ("beta", "mean"), ("gamma", "var")):
            metrics[f"{name}_layer_{layer}"] = parts[key]
    return total, metrics


def pd_terms(t_out, s_out, batch, settings: LossSettings):
    """Soft-label MLM (ratio·one-hot + (1−ratio)·teacher softmax) + ground-truth NSP."""
    ids, w = batch["masked_lm_ids"], batch["masked_lm_weights"]
    soft = losses.soft_mlm_loss(s_out.mlm_logits, t_out.mlm_logits, ids, w,
                                alpha=settings.ground_truth_ratio)
    nsp = losses.nsp_loss(s_out.nsp_logits, batch["next_sentence_labels"])
    metrics = {"soft_mlm_loss": soft, "nsp_loss": nsp,
               "mlm_loss": losses.mlm_loss(s_out.mlm_logits, ids, w),
               "mlm_accuracy": losses.mlm_accuracy(s_out.mlm_logits, ids, w),
               "nsp_accuracy": losses.nsp_accuracy(s_out.nsp_logits,
                                                   batch["next_sentence_labels"])}
    return soft + nsp, metrics


def distillation_loss(stage: Stage, teacher_cfg: MobileBertConfig,
                      student_cfg: MobileBertConfig, settings: LossSettings,
                      student_params, teacher_params, batch, depth: Optional[int] = None):
    """(loss, metrics) of `stage`. Transfer stages run `depth` blocks (default the stage's;
    the teacher runs all of them when mean/var compare with all teacher layers)."""
    teacher_params = jax.lax.stop_gradient(teacher_params)
    if stage.kind == TRANSFER:
        depth = stage.depth if depth is None else depth
        t_depth = None if settings.all_teacher_layers else depth
        t_out = _encoder(teacher_cfg, teacher_params, batch, t_depth)
        s_out = _encoder(student_cfg, student_params, batch, depth)
        return transfer_terms(t_out, s_out, stage.layers, settings)
    t_out = _pretraining(teacher_cfg, teacher_params, batch)
    s_out = _pretraining(student_cfg, student_params, batch)
    loss, metrics = pd_terms(t_out, s_out, batch, settings)
    if stage.kind == AKT:
        transfer, parts = transfer_terms(t_out, s_out, stage.layers, settings)
        metrics.update(parts, pd_loss=loss, transfer_loss=transfer)
        loss = loss + transfer
    return loss, metrics


def make_train_step(stage: Stage, teacher_cfg, student_cfg, settings: LossSettings, tx,
                    learning_rates: Callable[[Any], dict], accum_steps: int = 1,
                    grad_shardings: Any = None):
    """`train_step(state, batch, teacher_params) -> (state, metrics)` for `stage`
    (`core.make_train_step`: only the student params are differentiated and updated).
    `learning_rates(state)` gives the logged effective learning rates (per layer in transfer
    stages); `grad_shardings`: the student params' shardings, for the gradients. No dropout
    anywhere in distillation: the step's key goes unused."""
    def loss_fn(params, batch, rng, teacher_params):
        del rng
        return distillation_loss(stage, teacher_cfg, student_cfg, settings, params,
                                 teacher_params, batch)

    return core.make_train_step(loss_fn, tx, accum_steps, log_fields=learning_rates,
                                grad_shardings=grad_shardings)
