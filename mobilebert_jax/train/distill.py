"""Knowledge transfer from a frozen teacher into a MobileBERT student, then pre-training
distillation (PKT, JKT or AKT; `distill_stages.py` holds the stages, losses and optimizers).

Reads top to bottom in the order it runs: model configs and their compatibility (before any
compute) → workdir and logging → mesh → input → teacher (restored straight into its
shardings, frozen) → student state (embeddings and heads copied from the teacher) → checkpoint
restore (stage, step, data position) → loop: one step function per stage kind and truncation
depth, compiled when first needed; optimizer switch or slot reset at stage boundaries;
logging, evaluation, checkpoints and preemption handling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from mobilebert_jax import checkpoint, files, parallel
from mobilebert_jax.console import log
from mobilebert_jax.data import pretraining_input
from mobilebert_jax.metrics.writers import MetricsWriter
from mobilebert_jax.models.config import MobileBertConfig
from mobilebert_jax.models.heads import MobileBertForPreTraining
from mobilebert_jax.train import core, distill_stages, layer_multipliers, loop, objectives

SMOKE_TEACHER_HINT = ("train it first: python -m mobilebert_jax.main "
                      "--config=configs/teacher.py:smoke --workdir=runs/teacher_smoke")


def load_teacher_config(path: str) -> MobileBertConfig:
    if not path:
        raise ValueError("config.teacher_checkpoint is empty: give a project checkpoint "
                         "directory (a teacher workdir or a converted checkpoint)")
    if not files.isdir(path):
        raise FileNotFoundError(f"teacher_checkpoint {path} not found; {SMOKE_TEACHER_HINT}")
    return checkpoint.load_config(files.resolve(path))


def loss_settings(config, num_layers: int) -> distill_stages.LossSettings:
    weights = {k: float(v) for k, v in config.transfer.weights.items()}
    return distill_stages.LossSettings(num_layers, weights, bool(config.transfer.all_teacher_layers),
                           float(config.distill_ground_truth_ratio))


def load_teacher(path: str, teacher_cfg: MobileBertConfig, seq_len: int, mesh, rules):
    """Teacher params restored straight onto their shardings (never materialised on one
    host first); returns (params, shardings)."""
    model = MobileBertForPreTraining(teacher_cfg)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    shardings = parallel.logical_shardings(abstract, mesh, rules)
    target = core.abstract_like(nn.meta.unbox(abstract), shardings)
    params = checkpoint.load_params(files.resolve(path), target=target)
    return params, shardings


class Optimizers:
    """The optimizer of each phase (built when first needed) and its state shardings."""

    def __init__(self, config, plan: distill_stages.StagePlan, mesh):
        self.config, self.plan, self.mesh = config, plan, mesh
        self.multipliers = distill_stages.transfer_multipliers(config.transfer, plan.strategy,
                                                   plan.num_layers, plan.steps_per_layer)
        self._tx, self.schedule = {}, None

    def tx(self, phase: str):
        if phase not in self._tx:
            if phase == distill_stages.TRANSFER:
                self._tx[phase] = distill_stages.transfer_optimizer(self.config.transfer, self.multipliers)
            else:
                self._tx[phase], self.schedule = distill_stages.pd_optimizer(
                    self.config.optimizer, self.config.total_steps, self.plan.pd_start)
        return self._tx[phase]

    def learning_rates(self, phase: str):
        """state -> logged effective learning rates of `phase`."""
        if phase == distill_stages.TRANSFER:
            lr = float(self.config.transfer.learning_rate)

            def per_layer(state):
                m = self.multipliers(layer_multipliers.layer_multiplier_step(state.opt_state))
                return {f"lr_layer_{i}": lr * m[i] for i in range(self.plan.num_layers)}
            return per_layer
        self.tx(phase)
        start, schedule = self.plan.pd_start, self.schedule
        return lambda state: {"learning_rate": schedule(state.step - start)}

    def init(self, phase: str, params, param_sh, step: int):
        """Fresh optimizer state of `phase` in its shardings (layer multipliers at `step`)."""
        tx = self.tx(phase)
        opt_sh = core.opt_state_shardings(tx, params, param_sh, self.mesh)

        def fresh(p):
            return layer_multipliers.reset_opt_state(tx, p, step if phase == distill_stages.TRANSFER else None)
        with jax.set_mesh(self.mesh):
            return jax.jit(fresh, out_shardings=opt_sh)(params), opt_sh


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) distillation; returns the last logged training metrics."""
    # -- model configs and their compatibility: before any compute --------------------------------
    student_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    distill_stages.check_student_preset(config.student, student_cfg)
    teacher_cfg = load_teacher_config(config.teacher_checkpoint)
    settings = loss_settings(config, student_cfg.num_hidden_layers)
    distill_stages.check_compatible(teacher_cfg, student_cfg, attention_transfer=settings.weights["at"] != 0)
    plan = distill_stages.StagePlan(config.strategy, student_cfg.num_hidden_layers, config.steps_per_layer)
    if config.total_steps > plan.pd_start:  # a bad PD schedule fails now, not at its stage
        distill_stages.pd_optimizer(config.optimizer, config.total_steps, plan.pd_start)
    core.check_accumulation(config.batch_size, config.grad_accum_steps)

    # -- workdir, logging ------------------------------------------------------------------------
    files.makedirs(workdir)
    core.check_workdir_model(workdir, student_cfg)

    # -- mesh ------------------------------------------------------------------------------------
    mesh = parallel.make_mesh(config.mesh.shape)
    rules = parallel.rules_from_config(config.mesh.rules)
    parallel.check_batch_divisible(config.batch_size, mesh)
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices; strategy "
        f"{plan.strategy}: {', '.join(s.name for s in plan.stages)}")

    # -- input -----------------------------------------------------------------------------------
    info, tokenizer = pretraining_input.prepare_if_needed(config, workdir, student_cfg.vocab_size)
    train_iter = pretraining_input.train_loader(config, info)
    log(f"data: {info.num_examples} examples at seq {info.seq_len} in {info.data_dir}")

    # -- teacher: sharded restore, frozen ----------------------------------------------------------
    teacher_params, teacher_sh = load_teacher(config.teacher_checkpoint, teacher_cfg,
                                              info.seq_len, mesh, rules)
    log(f"teacher: {sum(x.size for x in jax.tree_util.tree_leaves(teacher_params)):,} "
        f"parameters from {config.teacher_checkpoint}")
    log(f"teacher sharding: {parallel.sharding_report(teacher_params, teacher_sh).summary()}")

    # -- student state ---------------------------------------------------------------------------
    ckpt = checkpoint.TrainCheckpointer(workdir, config.keep_checkpoints,
                                        config.async_checkpointing)
    start_stage = plan.stage_at(ckpt.latest_step() or 0)
    optimizers = Optimizers(config, plan, mesh)
    model = MobileBertForPreTraining(student_cfg)
    ids = jnp.zeros((1, info.seq_len), jnp.int32)
    state, shardings = core.create_sharded_state(
        lambda: model.init(jax.random.PRNGKey(config.seed), ids)["params"],
        optimizers.tx(start_stage.phase), config.seed, mesh, rules,
        extra={"stage": jnp.asarray(start_stage.index, jnp.int32)})
    log(f"student: {sum(x.size for x in jax.tree_util.tree_leaves(state.params)):,} parameters")
    log(f"student sharding: {parallel.sharding_report(state.params, shardings.params).summary()}")

    # -- checkpoints -----------------------------------------------------------------------------
    state, host_state = core.restore_state(ckpt, state, shardings)
    if host_state is not None:
        train_iter.set_state(host_state["data"])
        if int(state.extra["stage"]) != plan.stage_at(int(state.step)).index:
            raise ValueError(f"checkpoint step {int(state.step)} is in stage "
                             f"{int(state.extra['stage'])}, the config puts it in stage "
                             f"{plan.stage_at(int(state.step)).index}: strategy or "
                             "steps_per_layer changed")
        log(f"resumed from step {int(state.step)} ({plan.stage_at(int(state.step)).name})")
    else:
        same_norm = teacher_cfg.normalization_type == student_cfg.normalization_type
        with jax.set_mesh(mesh):
            params = jax.jit(lambda s, t: distill_stages.copy_teacher_parts(s, t, same_norm),
                             out_shardings=shardings.params)(state.params, teacher_params)
        state = state.replace(params=params)
        log("student embeddings and MLM/NSP heads copied from the teacher")
    core.record_run(workdir, config, student_cfg, tokenizer.path)

    # -- step functions: one per (stage kind, layers, depth), compiled when first needed -----------
    batch_sh = parallel.batch_sharding(mesh)
    repl = parallel.replicated(mesh)
    example = pretraining_input.abstract_batch(config.batch_size, info.seq_len,
                                               info.max_predictions_per_seq, batch_sh)
    compiled = {}
    current = {"shardings": shardings}

    def step_fn_for(stage: distill_stages.Stage, state):
        key = (stage.kind, stage.layers, stage.depth)
        if key not in compiled:
            sh = current["shardings"]
            fn = distill_stages.make_train_step(
                stage, teacher_cfg, student_cfg, settings, optimizers.tx(stage.phase),
                optimizers.learning_rates(stage.phase), config.grad_accum_steps)
            jitted = jax.jit(fn, in_shardings=(sh, batch_sh, teacher_sh),
                             out_shardings=(sh, repl), donate_argnums=0)
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                args = (core.abstract_like(state, sh), example,
                        core.abstract_like(teacher_params, teacher_sh))
                compiled[key] = core.compile_step(jitted, args, f"{stage.name} step")
        return compiled[key]

    eval_step = jax.jit(objectives.make_eval_step(model),
                        in_shardings=(shardings.params, batch_sh), out_shardings=repl)

    def enter(state, step: int):
        """At a stage boundary: the PD optimizer replaces the transfer one, or (optionally)
        the transfer slots are reset; the state records the new stage, whose step function
        is compiled now."""
        old, new = plan.stage_at(step - 1), plan.stage_at(step)
        if new.phase != old.phase or (new.phase == distill_stages.TRANSFER
                                      and config.transfer.reset_optimizer_each_stage):
            opt_state, opt_sh = optimizers.init(new.phase, state.params,
                                                current["shardings"].params, step)
            state = state.replace(opt_state=opt_state)
            current["shardings"] = current["shardings"].replace(opt_state=opt_sh)
        log(f"step {step}: stage {new.index} ({new.name})")
        state = state.replace(extra={"stage": jax.device_put(jnp.asarray(new.index, jnp.int32),
                                                             repl)})
        if step < config.total_steps:
            step_fn_for(new, state)
        return state

    # -- loop ------------------------------------------------------------------------------------
    def step_fn(state, step):
        batch = parallel.global_batch(next(train_iter), mesh)
        return step_fn_for(plan.stage_at(step), state)(state, batch, teacher_params)

    def evaluate_fn(state, step):
        loader = pretraining_input.eval_loader(config, info)
        if loader is None:
            return None
        ev = objectives.summarize_eval(*core.evaluate(eval_step, state.params, loader, mesh,
                                                      config.eval_steps))
        return dict(ev, stage=plan.stage_at(step).index)

    if int(state.step) < config.total_steps:
        step_fn_for(plan.stage_at(int(state.step)), state)
    hooks = loop.Hooks(
        train_step=step_fn, evaluate=evaluate_fn,
        is_boundary=lambda step: plan.stage_at(step).index != plan.stage_at(step - 1).index,
        enter=enter, log_fields=lambda step: {"stage": plan.stage_at(step).index},
        label=lambda step: f"[{plan.stage_at(step).name}]",
        host_state=lambda: {"data": train_iter.get_state()})
    _, last = loop.run(state, hooks, loop.cadence(config), ckpt, MetricsWriter(workdir),
                       tokens_per_step=config.batch_size * info.seq_len)
    return last
