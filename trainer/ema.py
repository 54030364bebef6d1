"""Steps -> an exponential moving average of the weights, kept beside them (`--ema_decay`).

Averaging the weights of the last ~1 / (1 - D) steps smooths out the noise of
the latest updates; the average often evaluates better than the raw weights,
and is what the export serves. Every model variable is averaged, batch-norm
statistics included: averaged weights with the raw statistics of the last
steps would not match each other.

The decay warms up as in Model Garden and `tf.train.ExponentialMovingAverage`
(`num_updates`): update t (from 0) uses min(D, (1 + t) / (10 + t)), 0.1 at
first, so the average soon forgets the weights it started from (random
ones, from scratch) rather than keeping them for thousands of steps.

Distribution: each replica updates its own copy in the replica step, with no
communication, as batch norm updates its statistics. The averages are
mirrored variables without aggregation, whose assignments in a replica stay
on that replica. The trainable weights are the same on every replica after
the optimizer step, so their averages are too. The statistics differ per
replica, and so do their averages: `steps.make_sync_statistics` sets both to
their mean across replicas before every save and evaluation. That is exact:
the update is linear, so the mean of the replicas' averages is the average of
the replicas' mean.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import keras
import tensorflow as tf

CHECKPOINT_KEY = "ema"  # The averages' entry in the run's checkpoints.


def warmed_up_decay(decay: float, num_updates: tf.Tensor) -> tf.Tensor:
    """The decay of update `num_updates` (counted from 0): min(decay, (1 + t) / (10 + t))."""
    t = tf.cast(num_updates, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))


class WeightAverage:
    """An exponential moving average of every floating-point variable of a model.

    `trackable` is what checkpoints hold: the averages by model variable path
    (`ema/averages/<path>`) and the count of updates (`ema/num_updates`). The
    model's own variables are deliberately not reachable from it, or a
    checkpoint could save them under `ema/` instead of where they are now.
    """

    def __init__(self, model: keras.Model, decay: float):
        """Creates averages equal to the model's values; call it under the strategy's scope.

        Args:
          decay: D, per update once warmed up (e.g. 0.9998).
        """
        self.decay = decay
        # Keras' seed generators hold integer state, which has no average.
        self._weights: list[keras.Variable] = [
            v for v in model.variables if keras.backend.is_float_dtype(v.dtype)]
        self.trackable = tf.Module(name=CHECKPOINT_KEY)
        # Float32 whatever the policy: mixed precision keeps float32 weights.
        self.trackable.averages = {
            v.path: tf.Variable(tf.cast(v, tf.float32), trainable=False, name=f"ema/{v.path}")
            for v in self._weights}
        self.trackable.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False,
                                                 name="ema/num_updates")
        strategy = tf.distribute.get_strategy()
        # Built once: evaluations then reuse one traced swap.
        self._swap = tf.function(lambda: strategy.run(self._swap_on_replica))

    @property
    def num_updates(self) -> tf.Variable:
        return self.trackable.num_updates

    def averages_of(self, variables: Sequence[keras.Variable]) -> list[tf.Variable]:
        """The averages of some of the model's variables, in their order."""
        return [self.trackable.averages[v.path] for v in variables]

    def update(self) -> None:
        """One update from the current weights: in the replica step, after the optimizer's.

        Inside the compiled step (XLA fuses it into the step when it compiles
        it); in a replica context each replica updates its own copies.
        """
        decay = warmed_up_decay(self.decay, self.num_updates)
        for weight, average in zip(self._weights, self.averages_of(self._weights)):
            # average <- decay * average + (1 - decay) * weight, as one assignment.
            average.assign_sub((average - tf.cast(weight, tf.float32)) * (1.0 - decay))
        self.num_updates.assign_add(1)

    def start_from_weights(self) -> None:
        """Sets every average to the model's value now, and restarts the warm-up.

        For a run's first step after any warm start, and for a checkpoint
        saved without averages. Eager, in cross-replica context: every copy.
        """
        for weight, average in zip(self._weights, self.averages_of(self._weights)):
            average.assign(tf.cast(weight, tf.float32))
        self.num_updates.assign(0)

    def copy_to_weights(self) -> None:
        """Puts the averages into the model's variables, for good (the export)."""
        for weight, average in zip(self._weights, self.averages_of(self._weights)):
            weight.assign(tf.cast(average, weight.dtype))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averages in the model's variables until exit, the raw weights in theirs.

        What evaluates the average with the model, and the eval step, already
        built (and traced) for the raw weights. Each replica swaps its own
        copies; swapping again on exit puts everything back.
        """
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap_on_replica(self) -> None:
        for weight, average in zip(self._weights, self.averages_of(self._weights)):
            raw = tf.identity(weight)  # Read before the writes: they are ordered after it.
            weight.assign(tf.cast(average, weight.dtype))
            average.assign(tf.cast(raw, tf.float32))
