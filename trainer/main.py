"""Trains, evaluates and exports a ResNet on plant-seedling TFRecords.

    python -m trainer.main                          # CPU demo on built-in synthetic data
    python -m trainer.main --data_dir=DIR --model_dir=OUT --flagfile=configs/gpu_1x.cfg

Without --data_dir the trainer generates synthetic seedlings once (cached),
converts them and trains the CPU demo configuration (configs/cpu_demo.cfg)
for every flag not given on the command line.

Before the first step the trainer checks what would otherwise fail late:
every path flag (a file where a folder belongs, a folder or bucket that
cannot be written), the flags' ranges, and whether the model, batch and
cache fit in this host's memory.

Exit status: 0 done (rerunning a finished run does nothing); 1 a one-line
`error: ...`; 143 preempted by SIGTERM after saving a checkpoint at the
current step: rerun the same command to resume from that step.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from trainer import config


config.define_flags()
FLAGS = flags.FLAGS


def _use_demo_defaults() -> str:
    """Applies configs/cpu_demo.cfg to flags not given, and returns the demo data dir."""
    from input_pipeline import demo_data, storage  # Only the demo needs the generator.

    logging.info("No --data_dir: using the BUILT-IN SYNTHETIC seedlings (not real data) and the "
                 "CPU demo configuration. To train on real photographs, convert them with "
                 "`python -m input_pipeline.make_tfrecords --input_dir=train/ --output_dir=DATA` "
                 "and pass --data_dir=DATA.")
    for arg in FLAGS.read_flags_from_files([f"--flagfile={config.DEMO_FLAGFILE}"], force_gnu=False):
        name, _, value = arg.lstrip("-").partition("=")
        if not FLAGS[name].present:
            FLAGS[name].parse(value)
    if not FLAGS.model_dir and not os.environ.get("AIP_CHECKPOINT_DIR"):
        FLAGS.model_dir = os.path.join("output", "cpu_demo")
    storage.check_output_dir(FLAGS.cache_dir, "--cache_dir")
    return demo_data.prepare(FLAGS.cache_dir)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    # TensorFlow is imported only now, after the flags parsed: --help and a
    # bad flag answer without it.
    from trainer import strategy, train

    try:
        strategy.split_cpu(FLAGS.cpu_devices)
        data_dir = FLAGS.data_dir or _use_demo_defaults()
        train.run(config.from_flags(FLAGS, data_dir=data_dir,
                                    paths=config.Paths.resolve(FLAGS.model_dir)))
    except (ValueError, OSError, FloatingPointError, RuntimeError, MemoryError) as e:
        logging.flush()
        sys.exit(f"error: {str(e).splitlines()[0]}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag is one line on stderr, not a usage dump."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
