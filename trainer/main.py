"""Trains, evaluates and exports a ResNet on plant-seedling TFRecords.

    python -m trainer.main                          # CPU demo on built-in synthetic data
    python -m trainer.main --data_dir=DIR --model_dir=OUT --flagfile=configs/gpu_1x.cfg

Without --data_dir the trainer generates synthetic seedlings once (cached),
converts them and trains the CPU demo configuration (configs/cpu_demo.cfg)
for every flag not given on the command line.

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

from trainer.config import Paths, TrainConfig
from trainer.strategy import PRECISIONS, STRATEGIES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FLAGFILE = os.path.join(REPO_ROOT, "configs", "cpu_demo.cfg")
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
MODES = ("train", "train_and_eval", "eval", "export")

# Where and on what.
flags.DEFINE_enum("strategy", "auto", STRATEGIES,
                  "Distribution strategy. auto: TPU if one is attached, else mirrored over all "
                  "GPUs if more than one, else default.")
flags.DEFINE_string("tpu", None, "TPU name, or 'local' on a TPU VM (implies a TPU for auto).")
flags.DEFINE_integer("cpu_devices", 0,
                     "Split the host CPU into N logical devices, to develop and test mirrored "
                     "training without GPUs (0 or 1: no split).", lower_bound=0)
flags.DEFINE_string("data_dir", None,
                    "Records written by input_pipeline.make_tfrecords (local or gs://). Unset: "
                    "built-in synthetic seedlings and the CPU demo configuration.")
flags.DEFINE_string("model_dir", None,
                    "Checkpoints, summaries, metrics.json and export/ (local or gs://). Unset: "
                    "Vertex AI's AIP_* folders if set, else output/cpu_demo for the demo.")
flags.DEFINE_string("cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "seedlings"),
                    "Where the built-in synthetic data set is generated once and kept.")
# What.
flags.DEFINE_enum("model", "resnet50", MODELS, "ResNet v1.5 depth.")
flags.DEFINE_integer("width", 64, "Filters of the first stage (64 is the standard ResNet).",
                     lower_bound=1)
flags.DEFINE_integer("image_size", 224, "Training and evaluation image side in pixels.",
                     lower_bound=32)
flags.DEFINE_integer("batch_size", 256, "Global batch size, split evenly across replicas.",
                     lower_bound=1)
flags.DEFINE_integer("train_steps", 0, "Steps to train for; 0: use --epochs.", lower_bound=0)
flags.DEFINE_float("epochs", 90.0, "Epochs to train for when --train_steps is 0.", lower_bound=0)
flags.DEFINE_integer("steps_per_loop", 100,
                     "Steps per call of the compiled training loop (and per log line).",
                     lower_bound=1)
flags.DEFINE_integer("eval_every", 0, "Evaluate every N steps (0: only at the end).",
                     lower_bound=0)
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every N steps (and at the end).",
                     lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.", lower_bound=1)
# How.
flags.DEFINE_enum("optimizer", "sgd", ("sgd", "adamw"), "sgd (momentum 0.9) or adamw.")
flags.DEFINE_float("learning_rate", 0.1,
                   "Peak learning rate per 256 images, scaled linearly with the global batch.",
                   lower_bound=0)
flags.DEFINE_float("warmup_epochs", 5.0, "Linear warm-up epochs before cosine decay.",
                   lower_bound=0)
flags.DEFINE_float("weight_decay", 1e-3,
                   "Decoupled weight decay of conv/dense kernels, never BN or biases: each step scales "
                   "kernels by 1 - lr * decay (1e-3 with SGD momentum 0.9 ~ classic L2 of 1e-4; "
                   "AdamW usually wants ~0.05).",
                   lower_bound=0)
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the training loss.",
                   lower_bound=0, upper_bound=1)
flags.DEFINE_bool("cache_decoded", False,
                  "Decode each training image once and keep it in memory (2 x 3 x "
                  "(2 x image_size)^2 bytes per image: 130 MB for the CPU demo), augmenting whole "
                  "batches from there: a fifth of the input CPU per image at 64 px. "
                  "For data sets that fit in memory.")
flags.DEFINE_bool("zero_init_residual", True,
                  "Start each residual block's last BN gamma at zero (helps large batches).")
flags.DEFINE_enum("mixed_precision", "auto", PRECISIONS,
                  "auto: bf16 on TPU, fp16 with dynamic loss scaling on GPU, float32 on CPU.")
flags.DEFINE_enum("jit_compile", "auto", ("auto", "true", "false"),
                  "XLA-compile the train step. auto: on for GPU/TPU, off on CPU.")
flags.DEFINE_integer("seed", 0, "Seed for weights and data order.")
flags.DEFINE_enum("mode", "train_and_eval", MODES,
                  "train (then export), train_and_eval (eval every --eval_every and at the "
                  "end, then export), eval or export (the latest checkpoint).")
flags.DEFINE_string("profile_steps", None,
                    "'FIRST,LAST': record a TensorBoard profiler trace of those training steps.")

FLAGS = flags.FLAGS


def _profile_steps(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        first, last = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--profile_steps={value!r} must be 'FIRST,LAST', e.g. '10,15'") from None
    if not 0 < first <= last:
        raise ValueError(f"--profile_steps={value!r} needs 0 < FIRST <= LAST")
    return first, last


def _use_demo_defaults() -> str:
    """Applies configs/cpu_demo.cfg to flags not given, and returns the demo data dir."""
    from input_pipeline import demo_data  # Only the demo needs the image generator.

    logging.info("No --data_dir: using the BUILT-IN SYNTHETIC seedlings (not real data) and the "
                 "CPU demo configuration. To train on real photographs, convert them with "
                 "`python -m input_pipeline.make_tfrecords --input_dir=train/ --output_dir=DATA` "
                 "and pass --data_dir=DATA.")
    for arg in FLAGS.read_flags_from_files([f"--flagfile={DEMO_FLAGFILE}"], force_gnu=False):
        name, _, value = arg.lstrip("-").partition("=")
        if not FLAGS[name].present:
            FLAGS[name].parse(value)
    if not FLAGS.model_dir and not os.environ.get("AIP_CHECKPOINT_DIR"):
        FLAGS.model_dir = os.path.join("output", "cpu_demo")
    return demo_data.prepare(FLAGS.cache_dir)


def config_from_flags() -> TrainConfig:
    """Reads FLAGS once; nothing below main sees them."""
    if FLAGS.train_steps == 0 and FLAGS.epochs == 0:
        raise ValueError("set --train_steps or --epochs to more than 0")
    return TrainConfig(
        data_dir=FLAGS.data_dir,
        paths=Paths.resolve(FLAGS.model_dir),
        strategy=FLAGS.strategy, tpu=FLAGS.tpu, model=FLAGS.model, width=FLAGS.width,
        image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
        train_steps=FLAGS.train_steps, epochs=FLAGS.epochs,
        steps_per_loop=FLAGS.steps_per_loop, eval_every=FLAGS.eval_every,
        checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints,
        optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
        warmup_epochs=FLAGS.warmup_epochs, weight_decay=FLAGS.weight_decay,
        label_smoothing=FLAGS.label_smoothing, zero_init_residual=FLAGS.zero_init_residual,
        cache_decoded=FLAGS.cache_decoded,
        mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.jit_compile,
        seed=FLAGS.seed, mode=FLAGS.mode, profile_steps=_profile_steps(FLAGS.profile_steps),
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    from trainer import strategy  # Imports TensorFlow: after flags parse, so --help is fast.

    try:
        strategy.split_cpu(FLAGS.cpu_devices)
        if not FLAGS.data_dir:
            FLAGS.data_dir = _use_demo_defaults()
        config = config_from_flags()
        from trainer import train

        train.run(config)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
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
