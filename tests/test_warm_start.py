"""Starting a run from another run's checkpoint or from ImageNet-layout weights, as a user does.

Every test drives `python -m trainer.main` (and predict) and reads back what a
user would: checkpoints, `normalization.json`, log lines, the exported model.
The errors found at start-up run their cases in one process (see
`tests/main_per_case.py`).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess

import keras
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
from PIL import Image

from input_pipeline import preprocessing, records
from tests.main_per_case import run_main_per_case
from tests.record_fixtures import write_records
from tests.trainer_fixtures import (
    EXIT_PREEMPTED, TINY, assert_ok, assert_one_line_error, run_module, train)
from trainer import models, pretrained
from trainer.warm_start import NORMALIZATION_FILE

SIX = ("Black-grass", "Charlock", "Cleavers", "Common Chickweed", "Common wheat", "Fat Hen")
TWELVE = SIX + ("Loose Silky-bent", "Maize", "Scentless Mayweed", "Shepherds Purse",
                "Small-flowered Cranesbill", "Sugar beet")
# The backbone stays frozen all run: what it holds at the end is what it started from.
FROZEN = ["--freeze_backbone_epochs=1000", "--mode=train"]


def train_per_case(data_dir: str, model_dir: str,
                   cases: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`train(data_dir, model_dir, *args)` for each args in `cases`, in one process.

    For errors found at start-up: each real run would cost a TensorFlow import.
    """
    return run_main_per_case("trainer.main", [
        [f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TINY, *args] for args in cases])


def model_values(prefix: str) -> dict[str, np.ndarray]:
    """The model's saved values in a checkpoint of this trainer, by key: no optimizer slots."""
    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key) for key, _ in tf.train.list_variables(prefix)
            if key.endswith("VARIABLE_VALUE") and key.startswith(
                ("model/", "optimizer/_trainable_variables/"))}


@pytest.fixture(scope="module")
def six_class_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    data = write_records(str(root / "records"), class_names=SIX,
                         examples_per_split={"train": 12, "validation": 6},
                         num_shards={"train": 2, "validation": 1})
    model_dir = str(root / "run")
    assert_ok(train(data.data_dir, model_dir, "--train_steps=2", "--mode=train"))
    return model_dir


@pytest.fixture(scope="module")
def twelve_classes(tmp_path_factory):
    return write_records(str(tmp_path_factory.mktemp("twelve")), class_names=TWELVE,
                         examples_per_split={"train": 12, "validation": 12},
                         num_shards={"train": 2, "validation": 1})


def test_init_from_a_6_class_run_into_a_12_class_run_keeps_the_backbone(
        six_class_run, twelve_classes, tmp_path):
    model_dir = str(tmp_path / "run")
    result = train(twelve_classes.data_dir, model_dir, f"--init_checkpoint={six_class_run}",
                   "--train_steps=2", *FROZEN)
    assert_ok(result)
    assert f"initialised backbone of the model" in result.stderr
    assert "the head starts fresh" in result.stderr
    assert "training the head only until step" in result.stderr
    source, tuned = model_values(f"{six_class_run}/ckpt-2"), model_values(f"{model_dir}/ckpt-2")
    assert source.keys() == tuned.keys()
    # The head is what holds a class dimension; everything else is the backbone.
    heads = {key for key in source if source[key].shape != tuned[key].shape}
    assert sorted(tuned[key].shape for key in heads) == [(12,), (64, 12)]
    for key in source.keys() - heads:  # Every backbone value, BN statistics included.
        np.testing.assert_array_equal(tuned[key], source[key], err_msg=key)
    # A fresh step and schedule: the new run counts from 0.
    assert tf.train.load_variable(f"{model_dir}/ckpt-2", "step/.ATTRIBUTES/VARIABLE_VALUE") == 2
    # The init run's statistics (recorded at its start) normalise this run too.
    recorded = json.load(open(os.path.join(six_class_run, NORMALIZATION_FILE)))
    assert json.load(open(os.path.join(model_dir, NORMALIZATION_FILE)))["mean"] == recorded["mean"]


def test_init_checkpoint_errors_are_one_line(six_class_run, twelve_classes, tmp_path):
    init = f"--init_checkpoint={six_class_run}"
    cases = [
        ([init, "--width=16"], ["holds a resnet18 of width 8", "resnet18 of width 16",
                                "--width=8"]),
        ([init, "--model=resnet34"], ["holds a resnet18 of width 8", "resnet34",
                                      "--model=resnet18"]),
        ([init, "--init_checkpoint_modules=all"], ["logits/kernel", "(64, 6)", "(64, 12)",
                                                   "--init_checkpoint_modules=backbone"]),
        ([f"--init_checkpoint={tmp_path}/nothing"], ["--init_checkpoint=",
                                                     "neither a checkpoint prefix"]),
    ]
    results = train_per_case(twelve_classes.data_dir, str(tmp_path / "run"),
                             [[*args, "--train_steps=2"] for args, _ in cases])
    for (_, words), result in zip(cases, results):
        assert_one_line_error(result, *words)
    assert not any(f.startswith("ckpt-") for f in os.listdir(tmp_path / "run"))


def test_rerun_after_sigterm_resumes_and_does_not_apply_the_init_again(
        six_class_run, twelve_classes, tmp_path, start_trainers):
    model_dir = str(tmp_path / "run")
    command = [f"--init_checkpoint={six_class_run}/ckpt-2", "--train_steps=400",
               "--steps_per_loop=50", "--checkpoint_every=400", "--mode=train"]
    [first] = start_trainers(twelve_classes.data_dir, model_dir, *command)
    first.wait_for("initialised backbone of the model")
    first.wait_for(r"step 50/400")
    first.send(signal.SIGTERM)
    assert first.finish() == EXIT_PREEMPTED, first.tail()
    stopped = int(first.wait_for(r"preempted at step (\d+)").group(1))
    [second] = start_trainers(twelve_classes.data_dir, model_dir, *command, "--train_steps=100")
    assert second.finish() == 0, second.tail()
    second.wait_for(rf"restored \S+ckpt-{stopped} at step {stopped}")
    second.wait_for("resumed from the run's own checkpoint: --init_checkpoint is not applied")
    assert not second.all("initialised backbone")


def torchvision_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """`model`'s values in the torchvision layout, as such a .safetensors file holds them."""
    state = {}
    for key, variable in pretrained.torchvision_variables(model).items():
        value = variable.numpy()
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif value.ndim == 2:
            value = value.T
        state[key] = np.ascontiguousarray(value, np.float32)
    return state


def test_pretrained_weights_normalise_training_evaluation_and_the_export_alike(
        twelve_classes, tmp_path):
    keras.utils.set_random_seed(1)
    source = models.create_model("resnet18", 1000, width=8)
    weights = str(tmp_path / "resnet18.safetensors")
    safetensors.numpy.save_file(torchvision_state_dict(source), weights)
    model_dir = str(tmp_path / "run")
    result = train(twelve_classes.data_dir, model_dir, f"--pretrained={weights}",
                   "--train_steps=2", "--mode=train_and_eval")
    assert_ok(result)
    assert "the head starts fresh" in result.stderr
    recorded = json.load(open(os.path.join(model_dir, NORMALIZATION_FILE)))
    assert tuple(recorded["mean"]) == pretrained.IMAGENET_MEAN
    assert tuple(recorded["std"]) == pretrained.IMAGENET_STD

    # The same image through the export and through the checkpoint with the
    # recorded statistics: one answer, and not the one the data set's own give.
    image_path = tmp_path / "test" / "plant.png"
    image_path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)).save(
        image_path)
    serve = tf.saved_model.load(os.path.join(model_dir, "export")).signatures["serving_default"]
    served = serve(image_bytes=tf.constant([image_path.read_bytes()]))["probabilities"].numpy()
    model = models.create_model("resnet18", len(TWELVE), width=8)
    tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(model_dir)).expect_partial()

    def probabilities(mean, std):
        images = preprocessing.preprocess_for_eval(tf.constant([image_path.read_bytes()]), 32,
                                                   mean, std)
        return tf.nn.softmax(model(images, training=False)).numpy()

    np.testing.assert_allclose(served, probabilities(recorded["mean"], recorded["std"]),
                               rtol=1e-4, atol=1e-6)
    info = records.read_dataset_info(twelve_classes.data_dir)
    assert not np.allclose(served, probabilities(info.mean, info.std), rtol=1e-4, atol=1e-6)
    # And predict, which runs the export, names the class evaluation's argmax gives.
    output = tmp_path / "submission.csv"
    assert_ok(run_module("trainer.predict", f"--model_dir={model_dir}",
                         f"--input={image_path.parent}", f"--output={output}"))
    [row] = list(csv.reader(open(output)))[1:]
    assert row == ["plant.png", TWELVE[int(np.argmax(served))]]


def test_bad_pretrained_file_is_a_one_line_error(twelve_classes, tmp_path):
    not_weights = tmp_path / "notes.safetensors"
    not_weights.write_text("hello")
    missing = tmp_path / "missing.safetensors"
    cases = [
        ([f"--pretrained={not_weights}"], [str(not_weights), "is not a .safetensors file"]),
        ([f"--pretrained={missing}"], [str(missing), "No weights file at"]),
        ([f"--pretrained={not_weights}", f"--init_checkpoint={tmp_path}"],
         ["--init_checkpoint or --pretrained, not both"]),
    ]
    results = train_per_case(twelve_classes.data_dir, str(tmp_path / "run"),
                             [[*args, "--train_steps=2"] for args, _ in cases])
    for (_, words), result in zip(cases, results):
        assert_one_line_error(result, *words)
