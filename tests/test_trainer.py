"""End-to-end tests of `python -m trainer.main` (and predict after it), as a user runs them.

Each test drives the real command in a subprocess on tiny records with a tiny
ResNet and checks what a user sees: exit codes, log lines, checkpoints,
event files, metrics.json, the SavedModel and the submission CSV.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

from PIL import Image
import numpy as np
import pytest
import tensorflow as tf

from tests.events import read_events
from tests.record_fixtures import write_records
from tests.trainer_fixtures import (
    REGULARISED, REPO, TINY, assert_ok, assert_one_line_error, checkpoint_step, run_module, train)

@pytest.fixture(scope="module")
def trained(tiny_records, tmp_path_factory):
    """One full train_and_eval run shared by the tests that only read its outputs."""
    model_dir = str(tmp_path_factory.mktemp("trained"))
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--eval_every=2",
                   "--checkpoint_every=2", "--mode=train_and_eval", "--profile_steps=3,4")
    assert_ok(result)
    return model_dir, result


def test_train_and_eval_writes_checkpoints_metrics_and_logs(trained, tiny_records):
    model_dir, result = trained
    assert checkpoint_step(model_dir) == 4
    assert "step 2/4" in result.stderr and "step 4/4" in result.stderr
    assert "images/s" in result.stderr and "ETA" in result.stderr
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 4
    # Every validation example exactly once, none of the padding.
    assert metrics["num_examples"] == len(tiny_records.examples["validation"]) == 13
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert np.isfinite(metrics["loss"])


def test_event_files_hold_expected_tags(trained, tiny_records):
    model_dir, _ = trained
    train_events = read_events(os.path.join(model_dir, "train"))
    for tag in ("loss", "accuracy", "learning_rate", "images_per_second"):
        assert [step for step, _ in train_events[tag]] == [2, 4], tag
    assert "input_images" in train_events
    assert any("hparams" in tag for tag in train_events), sorted(train_events)
    eval_events = read_events(os.path.join(model_dir, "eval"))
    for tag in ("loss", "accuracy", "macro_f1", "confusion_matrix"):
        assert [step for step, _ in eval_events[tag]] == [2, 4], tag
    for name in tiny_records.class_names:
        assert f"recall/{name}" in eval_events
    # The image summary holds width, height and the PNG bytes.
    image_png = eval_events["confusion_matrix"][0][1]
    image_png = [v for v in np.asarray(image_png).ravel() if v.startswith(b"\x89PNG")]
    assert image_png, "confusion matrix is not an image"
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    assert eval_events["accuracy"][-1][1] == pytest.approx(metrics["accuracy"])


def test_profiler_trace_written(trained):
    model_dir, _ = trained
    traces = tf.io.gfile.glob(os.path.join(model_dir, "train", "plugins", "profile", "*", "*"))
    assert traces, "no profiler trace"


def test_rerun_of_finished_run_is_a_no_op(trained, tiny_records):
    model_dir, _ = trained
    before = sorted(os.listdir(model_dir))
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--checkpoint_every=2")
    assert_ok(result)
    assert "nothing to do" in result.stderr
    assert sorted(os.listdir(model_dir)) == before


def test_resume_continues_at_saved_step(tiny_records, tmp_path):
    model_dir = str(tmp_path)
    assert_ok(train(tiny_records.data_dir, model_dir, "--train_steps=2", "--mode=train"))
    assert checkpoint_step(model_dir) == 2
    # What a kill -9 during a save leaves: TF's temporaries, which the rerun removes.
    os.makedirs(os.path.join(model_dir, "ckpt-3_temp"))
    for name in ("checkpoint.tmp0123abcd", os.path.join("ckpt-3_temp", "part-00000-of-00001")):
        with open(os.path.join(model_dir, name), "w") as f:
            f.write("half")
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--mode=train")
    assert_ok(result)
    assert "removed 2 temporary file(s) of an interrupted checkpoint save" in result.stderr
    assert not [n for n in os.listdir(model_dir) if "tmp" in n or "_temp" in n]
    assert "at step 2" in result.stderr  # The restore line.
    assert "step 2/4" not in result.stderr and "step 4/4" in result.stderr
    assert checkpoint_step(model_dir) == 4
    steps = [s for s, _ in read_events(os.path.join(model_dir, "train"))["loss"]]
    assert steps == [2, 4]


def test_export_and_predict_csv(trained, tiny_records, tmp_path):
    model_dir, _ = trained
    assert tf.io.gfile.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    images = tmp_path / "test"
    images.mkdir()
    for i, mode in enumerate(["RGB", "RGBA", "L"]):
        Image.new(mode, (50 + 10 * i, 60), 120).save(images / f"{i:04x}e90e4.png")
    output = tmp_path / "submission.csv"
    result = run_module("trainer.predict", f"--model_dir={model_dir}", f"--input={images}",
                        f"--output={output}")
    assert_ok(result)
    rows = list(csv.reader(open(output)))
    assert rows[0] == ["file", "species"]
    assert [r[0] for r in rows[1:]] == sorted(os.listdir(images))
    assert all(r[1] in tiny_records.class_names for r in rows[1:])
    # The serving signature takes bytes and returns probabilities and names.
    serve = tf.saved_model.load(os.path.join(model_dir, "export")).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([open(images / "0000e90e4.png", "rb").read()]))
    assert out["probabilities"].shape == (1, len(tiny_records.class_names))
    assert float(tf.reduce_sum(out["probabilities"])) == pytest.approx(1.0, abs=1e-4)
    assert [n.decode() for n in out["class_names"].numpy()[0]] == list(tiny_records.class_names)


def test_eval_and_export_modes(trained, tiny_records, tmp_path):
    model_dir, _ = trained
    result = train(tiny_records.data_dir, model_dir, "--mode=eval", "--train_steps=4")
    assert_ok(result)
    assert "eval at step 4" in result.stderr and "(13 examples)" in result.stderr
    for mode in ("export", "eval"):
        result = train(tiny_records.data_dir, str(tmp_path), f"--mode={mode}", "--train_steps=4")
        assert_one_line_error(result, "no checkpoint", f"to {mode}")
        # Nothing that looks like the metrics or the model of a trained run.
        assert not {"metrics.json", "export"} & set(os.listdir(tmp_path))


def test_export_again_replaces_the_model_whole(trained, tiny_records, tmp_path):
    model_dir = str(tmp_path / "copy")
    shutil.copytree(trained[0], model_dir)
    before = os.stat(os.path.join(model_dir, "export", "saved_model.pb")).st_mtime_ns
    result = train(tiny_records.data_dir, model_dir, "--mode=export", "--train_steps=4")
    assert_ok(result)
    assert os.stat(os.path.join(model_dir, "export", "saved_model.pb")).st_mtime_ns > before
    assert not [f for f in os.listdir(model_dir) if f.startswith("export.")]


@pytest.mark.parametrize("text, words", [
    ("{garbage", ["records_info.json is not one the converter writes", "convert"]),
    ('{"class_names": ["a"]}', ["records_info.json is not one the converter writes", "splits"]),
    ('{"class_names": ["a"], "splits": {"train": {"num_examples": 1, "num_shards": 1}}, '
     '"image": {"std": [0, 0, 0]}}', ["unusable channel statistics", "std [0, 0, 0]"]),
])
def test_damaged_dataset_info_is_a_one_line_error(tiny_records, tmp_path, text, words):
    data_dir = tmp_path / "records"
    shutil.copytree(tiny_records.data_dir, data_dir)
    (data_dir / "records_info.json").write_text(text)
    result = train(str(data_dir), str(tmp_path / "model"), "--train_steps=2")
    assert_one_line_error(result, *words)


NAN_AFTER_TWO_STEPS = """
import sys
import tensorflow as tf
from trainer import main, steps

# Batch norm keeps a ResNet finite under any learning rate the flags allow,
# so the loss is made NaN from the third step on.
real, calls = steps.cross_entropy, tf.Variable(0)
def cross_entropy(*args):
    calls.assign_add(1)
    return tf.where(calls > 2, float("nan"), real(*args))
steps.cross_entropy = cross_entropy
main.run()
"""


def test_nan_loss_stops_with_step_and_no_checkpoint(tiny_records, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", NAN_AFTER_TWO_STEPS, f"--data_dir={tiny_records.data_dir}",
         f"--model_dir={tmp_path}", *TINY, "--train_steps=6", "--steps_per_loop=6",
         "--mode=train"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9"})
    assert_one_line_error(result, "loss became nan at step 3;", "--learning_rate")
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


@pytest.mark.parametrize("precision, extra", [("mixed_float16", []),
                                               ("mixed_bfloat16", REGULARISED)])
def test_mixed_precision_trains(tiny_records, tmp_path, precision, extra):
    result = train(tiny_records.data_dir, str(tmp_path), "--train_steps=2", "--mode=train",
                   f"--mixed_precision={precision}", *extra)
    assert_ok(result)
    assert f"precision {precision}" in result.stderr
    losses = read_events(os.path.join(tmp_path, "train"))["loss"]
    assert np.isfinite(losses[-1][1])
    if extra:  # The weight average stays float32 under a 16-bit policy.
        _assert_averaged_checkpoint(str(tmp_path))


def _assert_averaged_checkpoint(model_dir: str) -> None:
    """The newest checkpoint holds a float32 weight average that has moved off the raw weights."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    averages = {name: dtype for name, dtype in reader.get_variable_to_dtype_map().items()
                if name.startswith("ema/averages/")}
    assert averages and set(averages.values()) == {tf.float32}, averages
    assert int(reader.get_tensor("ema/num_updates/.ATTRIBUTES/VARIABLE_VALUE")) > 0


def test_cache_decoded_trains_from_memory_across_epochs(tiny_records, tmp_path, trained):
    # 6 steps of 4 = 24 examples: past the 18-example epoch the cache replays.
    result = train(tiny_records.data_dir, str(tmp_path), "--train_steps=6", "--mode=train",
                   "--cache_decoded", "--strategy=mirrored", "--cpu_devices=2")
    assert_ok(result)
    # --image_size=32: cached at twice the side.
    assert "caching 18 decoded training images at 64 px" in result.stderr
    assert checkpoint_step(str(tmp_path)) == 6
    losses = read_events(os.path.join(tmp_path, "train"))["loss"]
    assert len(losses) == 3 and all(np.isfinite(loss) for _, loss in losses)
    # Off by default: the fixture's run decoded the records every step.
    assert "caching" not in trained[1].stderr


def test_xla_on_default_strategy(tiny_records, tmp_path):
    # With the regularisers: the average's update is compiled into the step.
    result = train(tiny_records.data_dir, str(tmp_path), "--train_steps=2", "--mode=train",
                   "--jit_compile=true", "--strategy=default", *REGULARISED)
    assert_ok(result)
    assert "XLA on" in result.stderr
    assert checkpoint_step(str(tmp_path)) == 2
    _assert_averaged_checkpoint(str(tmp_path))


def test_mirrored_over_logical_cpus_end_to_end(tiny_records, tmp_path):
    result = train(tiny_records.data_dir, str(tmp_path), "--train_steps=2",
                   "--strategy=mirrored", "--cpu_devices=2", "--mode=train_and_eval",
                   *REGULARISED)
    assert_ok(result)
    assert "MirroredStrategy with 2 replica(s)" in result.stderr
    metrics = json.load(open(os.path.join(tmp_path, "metrics.json")))
    assert metrics["num_examples"] == 13 and metrics["ema"]["num_examples"] == 13
    assert "eval of the weight average at step 2" in result.stderr


MIRRORED_VS_DEFAULT = r"""
import sys, tempfile
from trainer import strategy
strategy.split_cpu(2)
import numpy as np
from tests.loss_probe import first_losses

# Each global batch of 8 is 4 examples twice over, so each replica of the
# mirrored run sees the same 4 examples: batch-norm statistics per replica
# then equal those of the whole batch, and any remaining difference would
# come from how the loss and gradients are scaled and summed.
rng = np.random.RandomState(0)
unique_images = rng.uniform(size=(3, 4, 32, 32, 3)).astype("float32")
unique_labels = rng.randint(0, 4, size=(3, 4)).astype("int32")
images = np.repeat(unique_images, 2, axis=0).reshape(24, 32, 32, 3)
labels = np.repeat(unique_labels, 2, axis=0).reshape(24)

def losses(name):
    runtime = strategy.setup_runtime(name, tpu=None, precision="float32", jit_compile="false")
    return first_losses(runtime, images, labels), runtime.num_replicas

default, n1 = losses("default")
mirrored, n2 = losses("mirrored")
print("RESULT", n1, n2, *default, *mirrored)
"""


def test_mirrored_loss_matches_default_for_same_global_batch():
    result = subprocess.run([sys.executable, "-c", MIRRORED_VS_DEFAULT], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert_ok(result)
    values = result.stdout.split("RESULT")[1].split()
    assert values[:2] == ["1", "2"]
    default, mirrored = np.array(values[2:5], float), np.array(values[5:8], float)
    # Identical weights and global batches: the same loss at every step, so
    # the updates of the first steps were the same too.
    np.testing.assert_allclose(mirrored, default, rtol=1e-3)
    assert not np.allclose(default[0], default[2])  # Training moved the loss.


def test_vertex_aip_folders_used_without_model_dir(tiny_records, tmp_path):
    env = {"AIP_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "AIP_TENSORBOARD_LOG_DIR": str(tmp_path / "tb"),
           "AIP_MODEL_DIR": str(tmp_path / "model")}
    result = run_module("trainer.main", f"--data_dir={tiny_records.data_dir}", *TINY,
                        "--train_steps=2", "--mode=train", env=env)
    assert_ok(result)
    assert checkpoint_step(str(tmp_path / "ckpt")) == 2
    assert "loss" in read_events(str(tmp_path / "tb" / "train"))
    assert (tmp_path / "model" / "saved_model.pb").exists()


@pytest.mark.parametrize("args, words", [
    (["--batch_size=3", "--strategy=mirrored", "--cpu_devices=2"], ["--batch_size=3", "2 replicas"]),
    (["--batch_size=0"], ["batch_size"]),
    (["--batch_size=abc"], ["batch_size"]),
    (["--model=resnet9"], ["model"]),
    (["--strategy=gpu"], ["strategy"]),
    (["--mixed_precision=fp8"], ["mixed_precision"]),
    (["--jit_compile=maybe"], ["jit_compile"]),
    (["--mode=serve"], ["mode"]),
    (["--optimizer=lamb"], ["optimizer"]),
    (["--image_size=16"], ["image_size"]),
    (["--learning_rate=-1"], ["learning_rate"]),
    (["--label_smoothing=2"], ["label_smoothing"]),
    (["--train_steps=-1"], ["train_steps"]),
    (["--train_steps=0", "--epochs=0"], ["--train_steps", "--epochs"]),
    (["--profile_steps=5"], ["profile_steps"]),
    (["--profile_steps=6,2"], ["profile_steps"]),
    (["--keep_checkpoints=0"], ["keep_checkpoints"]),
    (["--checkpoint_every=0"], ["checkpoint_every"]),
    (["--steps_per_loop=0"], ["steps_per_loop"]),
    (["--no_such_flag=1"], ["no_such_flag"]),
    # Every number has a range, and the message gives it.
    (["--image_size=100000"], ["--image_size=100000", "[32, 2048]"]),
    (["--width=100000"], ["--width", "[1, 512]"]),
    (["--batch_size=100000000"], ["--batch_size", "[1, 65536]"]),
    (["--epochs=1e300"], ["--epochs", "[0, 100000]"]),
    (["--learning_rate=nan"], ["--learning_rate", "finite"]),
    (["--warmup_epochs=inf"], ["--warmup_epochs"]),
    (["--seed=-1"], ["--seed", "2147483647"]),
    (["--cpu_devices=1000"], ["--cpu_devices", "[0, 64]"]),
    (["--train_steps=100000000000000000"], ["--train_steps"]),
    (["--train_steps=2", "--profile_steps=100,200"], ["--profile_steps=100,200", "last step (2)"]),
    (["--init_checkpoint_modules=head"], ["--init_checkpoint_modules"]),
    (["--init_checkpoint_modules=backbone"], ["--init_checkpoint_modules needs --init_checkpoint"]),
    (["--backbone_lr_multiplier=-1"], ["--backbone_lr_multiplier", "[0, 10]"]),
    (["--freeze_backbone_epochs=nan"], ["--freeze_backbone_epochs", "finite"]),
    (["--randaugment=2"], ["--randaugment='2'", "'N,M'"]),
    (["--randaugment=0,5"], ["--randaugment='0,5'", "1 <= N <= 10"]),
    (["--randaugment=2,nan"], ["--randaugment='2,nan'", "0 <= M <= 10"]),
    (["--mixup=-0.1"], ["--mixup", "[0, 10]"]),
    (["--cutmix=inf"], ["--cutmix"]),
    (["--mix_prob=0.5"], ["--mix_prob needs --mixup or --cutmix"]),
    (["--ema_decay=1"], ["--ema_decay", "0.999999"]),
])
def test_bad_flags_give_one_line_errors(tiny_records, tmp_path, args, words):
    result = train(tiny_records.data_dir, str(tmp_path / "model"), *args)
    assert_one_line_error(result, *words)
    # Refused before anything was written.
    assert not (tmp_path / "model").exists() or not os.listdir(tmp_path / "model")


def test_flag_errors_and_help_need_no_tensorflow():
    for args in (["--help"], ["--image_size=100000"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainer.main", *args],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        imported = [line for line in result.stderr.splitlines() if "| tensorflow" in line]
        assert not imported, (args, imported[:3])


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me\n")
    return path


@pytest.mark.parametrize("model_dir, words", [
    ("{file}", ["--model_dir=", "notes.txt is a file, not a folder"]),
    ("{file}/run", ["--model_dir=", "notes.txt is not a directory"]),
    ("{dangling}", ["--model_dir=", "symlink to", "does not exist"]),
    ("~/runs/r1", ["--model_dir=~/runs/r1 starts with ~", "$HOME"]),
])
def test_bad_model_dir_is_refused_before_any_work(tiny_records, tmp_path, a_file, model_dir, words):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    model_dir = model_dir.format(file=a_file, dangling=tmp_path / "dangling")
    result = train(tiny_records.data_dir, model_dir, "--train_steps=2")
    assert_one_line_error(result, *words)
    assert "strategy" not in result.stderr  # Refused before TensorFlow set up its devices.
    assert a_file.read_text() == "keep me\n"
    assert not (tmp_path / "nowhere").exists() and not os.path.exists(os.path.join(REPO, "~"))


def test_data_dir_that_is_a_file_is_refused(tmp_path, a_file):
    result = train(str(a_file), str(tmp_path / "model"), "--train_steps=2")
    assert_one_line_error(result, "--data_dir=", "is a file, not a folder")


def test_unwritable_bucket_is_refused_before_training(tiny_records, gcs_emulator):
    model_dir = f"gs://no-such-bucket-{os.getpid()}/run"
    result = train(tiny_records.data_dir, model_dir, "--train_steps=2",
                   env=gcs_emulator.subprocess_env())
    assert_one_line_error(result, f"--model_dir={model_dir}", "bucket", "does not exist")
    assert "step 1/" not in result.stderr and "strategy" not in result.stderr


def test_demo_cache_dir_that_is_a_file_is_refused(tmp_path, a_file):
    result = run_module("trainer.main", f"--cache_dir={a_file}", f"--model_dir={tmp_path}/m")
    assert_one_line_error(result, "--cache_dir=", "is a file, not a folder")
    assert a_file.read_text() == "keep me\n"


def test_spaces_non_ascii_and_symlinks_in_paths_work(tiny_records, tmp_path):
    data_link = tmp_path / "données liées"
    data_link.symlink_to(tiny_records.data_dir)
    model_dir = tmp_path / "runs é" / "modèle 1"
    result = train(str(data_link), str(model_dir), "--train_steps=2", "--mode=train")
    assert_ok(result)
    assert checkpoint_step(str(model_dir)) == 2
    assert (model_dir / "export" / "saved_model.pb").exists()


def test_run_that_cannot_fit_in_memory_says_so_before_allocating(tiny_records, tmp_path):
    result = train(tiny_records.data_dir, str(tmp_path / "model"), "--model=resnet152",
                   "--image_size=2048", "--batch_size=4096", "--train_steps=2")
    assert_one_line_error(result, "needs at least", "GiB of host memory", "activations",
                          "lower --batch_size")
    assert "step 1/" not in result.stderr
    assert os.listdir(tmp_path / "model") == []


def test_cache_that_cannot_fit_in_memory_names_the_cache(tmp_path):
    # 400 images cached at 2048 px take 38 GiB, more than a CI machine has.
    data_dir = str(tmp_path / "records")
    write_records(data_dir, examples_per_split={"train": 400, "validation": 4},
                  num_shards={"train": 1, "validation": 1})
    result = train(data_dir, str(tmp_path / "model"), "--image_size=2048", "--batch_size=1",
                   "--cache_decoded", "--train_steps=2")
    assert_one_line_error(result, "needs at least", "decoded-image cache", "--cache_decoded")


def test_empty_validation_split_is_refused_for_evaluation(tmp_path):
    data_dir = str(tmp_path / "records")
    write_records(data_dir, examples_per_split={"train": 8, "validation": 0},
                  num_shards={"train": 2, "validation": 1})
    result = train(data_dir, str(tmp_path / "model"), "--train_steps=2", "--mode=train_and_eval")
    assert_one_line_error(result, "validation split", "is empty", "--mode=train")
    assert not [f for f in os.listdir(tmp_path / "model") if f.startswith("ckpt")]


def test_bad_data_dir_gives_one_line_error(tmp_path):
    result = run_module("trainer.main", f"--data_dir={tmp_path}/missing",
                        f"--model_dir={tmp_path}/out", *TINY)
    assert_one_line_error(result, "missing")


def test_help_documents_every_flag():
    result = run_module("trainer.main", "--helpfull")
    assert "Traceback" not in result.stderr
    for name in ("strategy", "tpu", "cpu_devices", "data_dir", "model_dir", "cache_dir", "model",
                 "width", "image_size", "batch_size", "train_steps", "epochs", "steps_per_loop",
                 "eval_every", "checkpoint_every", "keep_checkpoints", "optimizer",
                 "learning_rate", "warmup_epochs", "weight_decay", "label_smoothing",
                 "zero_init_residual", "mixed_precision", "jit_compile", "seed", "mode",
                 "profile_steps", "init_checkpoint", "init_checkpoint_modules", "pretrained",
                 "backbone_lr_multiplier", "freeze_backbone_epochs", "randaugment", "mixup",
                 "cutmix", "mix_prob", "ema_decay", "export_formats"):
        # absl shows boolean flags as --[no]name.
        assert f"--{name}:" in result.stdout or f"--[no]{name}:" in result.stdout, name


def test_configs_parse_with_the_real_trainer_flags():
    configs = sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".cfg"))
    assert {"cpu_demo.cfg", "gpu_1x.cfg", "gpu_8x.cfg", "gpu_multiworker.cfg",
            "tpu_v5e_8.cfg"} <= set(configs)
    code = ("from trainer import main\n"
            "for name in %r:\n"
            "    main.FLAGS.unparse_flags()\n"
            "    main.FLAGS(['trainer', '--flagfile=configs/' + name])\n"
            "    print(name, main.FLAGS.model, main.FLAGS.batch_size)\n" % configs)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert_ok(result)
    parsed = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert set(parsed) == set(configs)
