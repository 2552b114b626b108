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
    return distill_stages.LossSettings(num_layers, weights,
                                       bool(config.transfer.all_teacher_layers),
                                       float(config.distill_ground_truth_ratio))


def abstract_teacher(teacher_cfg: MobileBertConfig, seq_len: int, mesh, rules):
    """(abstract teacher params with their shardings, shardings)."""
    model = MobileBertForPreTraining(teacher_cfg)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    shardings = parallel.logical_shardings(abstract, mesh, rules)
    return core.abstract_like(nn.meta.unbox(abstract), shardings), shardings


def load_teacher(path: str, teacher_cfg: MobileBertConfig, seq_len: int, mesh, rules):
    """Teacher params restored straight onto their shardings (never materialised on one
    host first); returns (params, shardings)."""
    target, shardings = abstract_teacher(teacher_cfg, seq_len, mesh, rules)
    return checkpoint.load_params(files.resolve(path), target=target), shardings


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
                self._tx[phase] = distill_stages.transfer_optimizer(self.config.transfer,
                                                                    self.multipliers)
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
            return layer_multipliers.reset_opt_state(
                tx, p, step if phase == distill_stages.TRANSFER else None)
        with jax.set_mesh(self.mesh):
            return jax.jit(fresh, out_shardings=opt_sh)(params), opt_sh


def build_program(config, mesh, rules, teacher_cfg: MobileBertConfig, seq_len: int,
                  max_predictions: int, optimizers: Optimizers | None = None,
                  start_step: int = 0) -> core.Program:
    """Every step program of the run, one per stage (`"<stage name> step"`: each PKT layer's
    transfer stage, pre-training distillation, ...) and the eval step, with their state
    shardings (the stage's optimizer) and abstract arguments, from the config and the
    teacher's model config alone (no data, no workdir). The program's state is that of the
    stage of `start_step`."""
    student_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    settings = loss_settings(config, student_cfg.num_hidden_layers)
    plan = distill_stages.StagePlan(config.strategy, student_cfg.num_hidden_layers,
                                    config.steps_per_layer)
    optimizers = optimizers or Optimizers(config, plan, mesh)
    model = MobileBertForPreTraining(student_cfg)
    ids = jnp.zeros((1, seq_len), jnp.int32)

    def init_params():
        return model.init(jax.random.PRNGKey(config.seed), ids)["params"]

    teacher, teacher_sh = abstract_teacher(teacher_cfg, seq_len, mesh, rules)
    batch_sh, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    batch = pretraining_input.abstract_batch(config.batch_size, seq_len, max_predictions,
                                             batch_sh)
    extra = {"stage": jnp.zeros((), jnp.int32)}
    states = {phase: core.state_shardings(init_params, optimizers.tx(phase), mesh, rules, extra)
              for phase in dict.fromkeys(stage.phase for stage in plan.stages)}
    steps = {}
    for stage in plan.stages:
        abstract_state, sh = states[stage.phase]
        fn = distill_stages.make_train_step(
            stage, teacher_cfg, student_cfg, settings, optimizers.tx(stage.phase),
            optimizers.learning_rates(stage.phase), config.grad_accum_steps, sh.params)
        jitted = jax.jit(fn, in_shardings=(sh, batch_sh, teacher_sh), out_shardings=(sh, repl),
                         donate_argnums=0)
        steps[f"{stage.name} step"] = (jitted, (abstract_state, batch, teacher))
    start = plan.stage_at(start_step)
    abstract_state, shardings = states[start.phase]
    eval_step = jax.jit(objectives.make_eval_step(model),
                        in_shardings=(shardings.params, batch_sh), out_shardings=repl)
    steps["eval step"] = (eval_step, (abstract_state.params, batch))
    return core.Program(shardings, abstract_state, steps, init_params, optimizers.tx(start.phase))


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) distillation; returns the last logged training metrics."""
    # -- model configs and their compatibility: before any compute --------------------------------
    student_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    distill_stages.check_student_preset(config.student, student_cfg)
    teacher_cfg = load_teacher_config(config.teacher_checkpoint)
    settings = loss_settings(config, student_cfg.num_hidden_layers)
    distill_stages.check_compatible(teacher_cfg, student_cfg,
                                    attention_transfer=settings.weights["at"] != 0)
    plan = distill_stages.StagePlan(config.strategy, student_cfg.num_hidden_layers,
                                    config.steps_per_layer)
    if config.total_steps > plan.pd_start:  # a bad PD schedule fails now, not at its stage
        distill_stages.pd_optimizer(config.optimizer, config.total_steps, plan.pd_start)
    core.check_accumulation(config.batch_size, config.grad_accum_steps)

    # -- workdir, logging ------------------------------------------------------------------------
    files.makedirs(workdir)
    core.check_workdir_model(workdir, student_cfg, config.trainer)

    # -- mesh ------------------------------------------------------------------------------------
    mesh = parallel.make_mesh(config.mesh.shape, dcn_shape=config.mesh.dcn_shape)
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
    start_step = ckpt.latest_step() or 0
    optimizers = Optimizers(config, plan, mesh)
    program = build_program(config, mesh, rules, teacher_cfg, info.seq_len,
                            info.max_predictions_per_seq, optimizers, start_step)
    state, shardings = core.create_sharded_state(
        program, config.seed, mesh, rules,
        extra={"stage": jnp.asarray(plan.stage_at(start_step).index, jnp.int32)})
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

    # -- step functions: one per stage, compiled when first needed ------------------------------
    compiled = {}

    def compiled_step(name: str):
        if name not in compiled:
            fn, args = program.steps[name]
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                compiled[name] = core.compile_step(fn, args, name)
        return compiled[name]

    def enter(state, step: int):
        """At a stage boundary: the PD optimizer replaces the transfer one, or (optionally)
        the transfer slots are reset; the state records the new stage, whose step function
        is compiled now."""
        old, new = plan.stage_at(step - 1), plan.stage_at(step)
        if new.phase != old.phase or (new.phase == distill_stages.TRANSFER
                                      and config.transfer.reset_optimizer_each_stage):
            opt_state, _ = optimizers.init(new.phase, state.params, shardings.params, step)
            state = state.replace(opt_state=opt_state)
        log(f"step {step}: stage {new.index} ({new.name})")
        state = state.replace(extra={"stage": jax.device_put(jnp.asarray(new.index, jnp.int32),
                                                             shardings.step)})
        if step < config.total_steps:
            compiled_step(f"{new.name} step")
        return state

    # -- loop ------------------------------------------------------------------------------------
    def step_fn(state, step):
        batch = parallel.global_batch(next(train_iter), mesh)
        return compiled_step(f"{plan.stage_at(step).name} step")(state, batch, teacher_params)

    def evaluate_fn(state, step):
        loader = pretraining_input.eval_loader(config, info)
        if loader is None:
            return None
        ev = objectives.summarize_eval(*core.evaluate(compiled_step("eval step"), state.params,
                                                      loader, mesh, config.eval_steps))
        return dict(ev, stage=plan.stage_at(step).index)

    if int(state.step) < config.total_steps:
        compiled_step(f"{plan.stage_at(int(state.step)).name} step")
    hooks = loop.Hooks(
        train_step=step_fn, evaluate=evaluate_fn,
        is_boundary=lambda step: plan.stage_at(step).index != plan.stage_at(step - 1).index,
        enter=enter, log_fields=lambda step: {"stage": plan.stage_at(step).index},
        label=lambda step: f"[{plan.stage_at(step).name}]",
        host_state=lambda: {"data": train_iter.get_state()})
    _, last = loop.run(state, hooks, loop.cadence(config), ckpt, MetricsWriter(workdir),
                       tokens_per_step=config.batch_size * info.seq_len)
    return last
