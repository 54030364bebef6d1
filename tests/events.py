"""Reads TensorBoard event files back, as a user's TensorBoard would."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf


def read_events(log_dir: str) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, value)] for every summary in the event files of `log_dir`.

    Scalars come back as floats, images and text as their raw tensors.
    """
    events: dict[str, list[tuple[int, object]]] = collections.defaultdict(list)
    for path in sorted(tf.io.gfile.glob(f"{log_dir}/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                if np.ndim(array) == 0 and not isinstance(array, bytes):
                    array = float(array) if np.asarray(array).dtype.kind in "fiu" else array
                events[value.tag].append((event.step, array))
    return dict(events)
