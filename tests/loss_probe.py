"""Per-step training losses of the real train loop on fixed in-memory batches.

Imported by the scripts that compare strategies (mirrored vs default, two
workers vs one process), so both measure exactly the same thing.
"""

import tempfile

import keras
import tensorflow as tf

from input_pipeline import records
from trainer import config
from trainer.state import Schedule, create_state
from trainer.steps import make_train_loop

INFO = records.DatasetInfo(class_names=tuple("abcd"), num_examples={"train": 24, "validation": 8},
                           num_shards={"train": 1, "validation": 1})


def first_losses(runtime, images, labels, steps: int = 3) -> list[float]:
    """Losses of `steps` steps of a tiny ResNet, global batch 8, same seed every call."""
    keras.utils.set_random_seed(0)
    cfg = config.TrainConfig(data_dir="", paths=config.Paths("", "", ""), model="resnet18",
                             width=8, image_size=32, batch_size=8, train_steps=steps,
                             warmup_epochs=0, learning_rate=0.1, zero_init_residual=False)
    schedule = Schedule.create(cfg, INFO, runtime.num_replicas)
    state = create_state(cfg, runtime, INFO, schedule, tempfile.mkdtemp())
    loop = make_train_loop(runtime, state.model, state.optimizer, global_batch_size=8,
                           num_classes=4, label_smoothing=0.1)
    data = runtime.strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensor_slices((images, labels)).batch(
            ctx.get_per_replica_batch_size(8)))
    iterator = iter(data)
    return [float(loop(iterator, tf.constant(1)).loss) for _ in range(steps)]
