"""Optimizers with decoupled weight decay on kernels only, and the LR schedule.

Weight decay is Keras' decoupled form for both optimizers: before each update
every conv/dense kernel is multiplied by (1 - lr * weight_decay), with lr the
current value of the schedule. For SGD this is *not* the coupled L2 penalty of
the classic ResNet recipes (He et al.'s 1e-4, PyTorch's `SGD(weight_decay=...)`),
which momentum amplifies by 1 / (1 - momentum): with momentum 0.9, an L2 of
1e-4 corresponds to a decoupled weight_decay of about 1e-3.

Create the optimizer inside `strategy.scope()`: a Keras optimizer binds to the
strategy that is current when it is constructed. Gradients passed to `apply`
are the per-replica ones; the optimizer sums them across replicas itself.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer import models

OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "adamw")

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


class _ReplicaConsistentLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A LossScaleOptimizer that skips a step on all replicas if any overflowed.

    Keras 3.15 decides whether to skip from the *local* gradients of replica 0
    only, assuming they were already all-reduced; but Keras all-reduces later,
    inside the inner optimizer. An overflow on any other replica was then summed
    into the weights, turning them into inf/NaN for good. Here the replicas
    first agree, and if any of them overflowed every replica sees non-finite
    gradients, so the stock logic skips the step and halves the loss scale.
    """

    def apply(self, grads, trainable_variables=None):
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            local_overflow = 1.0 - tf.cast(self.check_finite(grads), tf.float32)
            any_overflow = context.all_reduce(tf.distribute.ReduceOp.SUM, local_overflow) > 0
            poison = tf.where(any_overflow, float("nan"), 0.0)
            grads = [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
        return super().apply(grads, trainable_variables)


class _BackboneRate:
    """Mixin: the backbone updates at `backbone_multiplier` times the learning rate.

    Keras optimizers have one learning rate for all variables, so each
    variable's update step here gets its own, and the decoupled weight decay
    moves into the update step to use the same rate: a slower backbone also
    decays slower. With a multiplier of 1 the arithmetic is Keras' own, decay
    then update, per variable (tests/test_optimizers.py checks both).
    """

    def __init__(self, *args, backbone_multiplier: float, head: list, **kwargs):
        super().__init__(*args, **kwargs)
        self._backbone_multiplier = backbone_multiplier
        self._head_paths = {v.path for v in head}

    def build(self, variables):
        super().build(variables)
        self._rates = [1.0 if v.path in self._head_paths else self._backbone_multiplier
                       for v in variables]

    def _apply_weight_decay(self, variables):
        pass  # Done per variable in `update_step`, at that variable's rate.

    def update_step(self, gradient, variable, learning_rate):
        rate = self._rates[self._get_variable_index(variable)]
        if rate != 1.0:
            learning_rate = learning_rate * rate
        if self.weight_decay and self._use_weight_decay(variable):
            decay = tf.cast(self.weight_decay, variable.dtype) * tf.cast(learning_rate, variable.dtype)
            variable.assign_sub(variable * decay)
        super().update_step(gradient, variable, learning_rate)


class _SGD(_BackboneRate, keras.optimizers.SGD):
    pass


class _AdamW(_BackboneRate, keras.optimizers.AdamW):
    pass


def create_optimizer(
    name: str,
    *,
    learning_rate: LearningRate,
    weight_decay: float,
    model: keras.Model,
    momentum: float = 0.9,
    loss_scale: bool = False,
    backbone_multiplier: float = 1.0,
) -> keras.optimizers.Optimizer:
    """Returns SGD or AdamW that decays the model's kernels but not BN or biases.

    Args:
      name: one of `OPTIMIZER_NAMES`. "sgd" is heavy-ball momentum (no
        Nesterov), "adamw" is Adam with decoupled weight decay.
      learning_rate: a float or a schedule (see `learning_rate_schedule`).
      weight_decay: decoupled decay per unit learning rate (see module doc).
      model: the model to train; its trainable variables with ndim <= 1 (BN
        gamma/beta, biases) are excluded from weight decay.
      momentum: SGD's momentum, or AdamW's beta_1.
      backbone_multiplier: the learning rate (and decay) of every variable but
        the head's, as a multiple of `learning_rate`.
      loss_scale: wrap in a dynamic `LossScaleOptimizer`, for mixed_float16.
        The train step must then take gradients of `optimizer.scale_loss(loss)`
        and pass them to `apply` as they are: `apply` unscales them, and skips
        the step (on all replicas) when any gradient is inf/NaN.

    Returns:
      An unbuilt optimizer; call `optimizer.build(model.trainable_variables)`
      under the same strategy scope before the first distributed step.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if any(isinstance(v.value, tf.distribute.DistributedValues) for v in model.variables) and (
        not tf.distribute.has_strategy()
    ):
        raise ValueError(
            "The model's variables are distributed: create the optimizer inside the same "
            "`strategy.scope()` as the model."
        )
    rates = dict(backbone_multiplier=backbone_multiplier, weight_decay=weight_decay,
                 head=models.head_variables(model) if backbone_multiplier != 1.0 else [])
    if name == "sgd":
        optimizer = _SGD(learning_rate, momentum=momentum, nesterov=False, name="SGD", **rates)
    elif name == "adamw":
        optimizer = _AdamW(learning_rate, beta_1=momentum, name="adamw", **rates)
    else:
        raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZER_NAMES)}.")
    # Decaying BN's gamma/beta only fights the normalisation, and decaying
    # biases buys no regularisation (Goyal et al. 2017; He et al. 2019, "Bag of
    # Tricks"). Both are the 1-D variables; kernels are 2-D (dense) or 4-D (conv).
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if len(v.shape) <= 1]
    )
    if loss_scale:
        optimizer = _ReplicaConsistentLossScaleOptimizer(optimizer)
    return optimizer


def learning_rate_schedule(
    base_lr_per_256: float,
    global_batch_size: int,
    *,
    total_steps: int,
    warmup_steps: int,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to a batch-scaled peak, then cosine decay to 0.

    Args:
      base_lr_per_256: the learning rate for a global batch of 256; the peak is
        scaled linearly with the batch (Goyal et al. 2017).
      global_batch_size: images per step summed over all replicas.
      total_steps: the step at which the learning rate reaches 0.
      warmup_steps: steps of linear warmup (0 starts at the peak).

    Returns:
      A schedule mapping the optimizer's step (0-based) to a learning rate.
    """
    if global_batch_size < 1 or base_lr_per_256 <= 0:
        raise ValueError(
            f"Need a positive learning rate and batch, got base_lr_per_256={base_lr_per_256}, "
            f"global_batch_size={global_batch_size}."
        )
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}."
        )
    peak = base_lr_per_256 * global_batch_size / 256
    # CosineDecay warms up from `initial_learning_rate` to `warmup_target` over
    # `warmup_steps`, then decays over `decay_steps` more steps: so decay_steps
    # is what remains after warmup, and the rate is 0 from total_steps on.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=0.0,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )
