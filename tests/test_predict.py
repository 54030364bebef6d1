"""`python -m trainer.predict` as a user runs it: bad images, bad paths, bad flags.

Every test starts the real command in a subprocess and checks what a user
sees: the exit status, the `skipped ...` and `error: ...` lines on stderr,
and the CSV (or that no CSV, no `.tmp` file and no change to an older CSV
was left). The model is a tiny ResNet exported from a fresh checkpoint, not
trained: its last layer is set so that it tells four colours apart (see
`model_dir`), so each CSV row can be checked. Paths hold spaces and non-ASCII
characters throughout.

The start-up path checks run as one process for all their cases (see
`tests/main_per_case.py`): each real run would cost a TensorFlow import,
three seconds of CPU, for an error found in milliseconds.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.main_per_case import run_main_per_case
from tests.record_fixtures import CLASS_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_SKIPPED = 3
OLD_CSV = "file,species\nold.png,Charlock\n"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9",
            **(extra or {})}


def run_predict(*args: str, env: dict[str, str] | None = None, python_flags: tuple[str, ...] = ()
                ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, "-m", "trainer.predict", *args],
                          cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for word in words:
        assert word in last, last


def skipped_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("skipped ")]


def read_csv(path: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def leftovers(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if ".tmp" in name or ".write-check" in name]


def save_image(path, mode: str, colour, image_format: str = "PNG"):
    """Writes a solid-colour image to `path` (a file name or a buffer); returns `path`."""
    Image.new(mode, (48, 40), colour).save(path, format=image_format)
    return path


def noise_png() -> bytes:
    """A PNG far longer than 300 bytes, so its first 300 are a truncated image."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 3000
    return buffer.getvalue()


def write_bytes(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


# An image of COLOURS[k] is of class k for the `model_dir` fixture's model.
COLOURS = ((220, 40, 40), (40, 190, 60), (40, 60, 220), (230, 230, 230))  # The last is grey.


def png_bytes(colour) -> bytes:
    return save_image(io.BytesIO(), "RGB", colour).getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A training run's folder whose export/ holds a SavedModel that tells COLOURS apart.

    No training: the logits layer of a fresh tiny ResNet becomes a
    nearest-prototype classifier over the features of one image of each
    colour, so the class of every test image is known, and a CSV row given
    to the wrong file shows. The folder's name has a space and an umlaut.
    """
    import keras
    import tensorflow as tf
    from input_pipeline import preprocessing, records
    from trainer import export, models

    run = os.fspath(tmp_path_factory.mktemp("run") / "mödel run")
    info = records.DatasetInfo(class_names=CLASS_NAMES, num_examples={}, num_shards={})
    model = models.create_model("resnet18", info.num_classes, width=8)
    # The serving signature's own preprocessing, so prototypes match served features.
    images = preprocessing.preprocess_for_eval(
        tf.constant([png_bytes(colour) for colour in COLOURS]), 32, info.mean, info.std)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    prototypes = features(images, training=False).numpy()
    # logit_k = f.p_k - |p_k|^2 / 2 is largest for the prototype p_k nearest to f.
    model.get_layer("logits").set_weights([prototypes.T, -0.5 * (prototypes**2).sum(axis=1)])
    checkpoint = tf.train.Checkpoint(model=model).save(os.path.join(run, "ckpt"))
    export.export_saved_model(checkpoint, os.path.join(run, "export"), model_name="resnet18",
                              width=8, image_size=32, info=info)
    return run


def csv_rows(expected: dict[str, str]) -> list[list[str]]:
    return sorted([name, species] for name, species in expected.items())


def write_good_images(folder: str, outside: str) -> dict[str, str]:
    """Images of each mode and format users send, one a symlink to an image elsewhere.

    Returns:
      file name -> its class name.
    """
    os.makedirs(folder, exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    red, green, blue, grey = COLOURS
    save_image(os.path.join(folder, "0a red ü.png"), "RGB", red)
    save_image(os.path.join(folder, "1b green alpha.png"), "RGBA", (*green, 128))
    save_image(os.path.join(folder, "2c blue.jpg"), "RGB", blue, "JPEG")
    save_image(os.path.join(folder, "3d grey.png"), "L", grey[0])  # One channel, replicated.
    save_image(os.path.join(folder, "4e blue.png"), "RGB", blue)
    os.symlink(save_image(os.path.join(outside, "target.png"), "RGB", green),
               os.path.join(folder, "5f linked.png"))
    classes = {"0a red ü.png": 0, "1b green alpha.png": 1, "2c blue.jpg": 2, "3d grey.png": 3,
               "4e blue.png": 2, "5f linked.png": 1}
    return {name: CLASS_NAMES[label] for name, label in classes.items()}


def write_bad_images(folder: str) -> dict[str, str]:
    """Writes each kind of bad input file; returns name -> words its `skipped` line holds."""
    os.makedirs(folder, exist_ok=True)
    write_bytes(os.path.join(folder, "2b truncated.png"), noise_png()[:300])
    write_bytes(os.path.join(folder, "6g empty.png"), b"")
    write_bytes(os.path.join(folder, "7h notes.png"), b"not an image\n")
    os.symlink(os.path.join(folder, "gone.png"), os.path.join(folder, "8i dangling.png"))
    return {
        "2b truncated.png": "damaged or not an image (",
        "6g empty.png": "empty file",
        "7h notes.png": "damaged or not an image (",
        "8i dangling.png": f"a symlink to {os.path.join(folder, 'gone.png')}, which does not exist",
    }


def test_bad_files_are_named_and_the_others_predicted(model_dir, tmp_path):
    folder = os.fspath(tmp_path / "test imágenes")
    good = write_good_images(folder, os.fspath(tmp_path / "elsewhere"))
    bad = write_bad_images(folder)
    write_bytes(os.path.join(folder, "readme.txt"), b"not an image's name, so not an input\n")
    # A symlink to the folder, and [ in its name, which a glob would take for a pattern.
    link = os.fspath(tmp_path / "link [v2] to test")
    os.symlink(folder, link)
    out_dir = tmp_path / "out ü"
    out_dir.mkdir()
    output = write_bytes(os.fspath(out_dir / "sub mission.csv"), OLD_CSV.encode())
    # Batches of 4 in name order: good and truncated; good and empty; bad only.
    result = run_predict(f"--model_dir={model_dir}", f"--input={link}",
                         f"--output={output}", "--batch_size=4")
    assert result.returncode == EXIT_SKIPPED, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = skipped_lines(result)
    assert len(lines) == len(bad), result.stderr
    for name, words in bad.items():
        [line] = [line for line in lines if line.startswith(f"skipped {link}/{name}: ")]
        assert words in line, line
    total = len(good) + len(bad)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{len(bad)} of {total} images skipped"), last
    rows = read_csv(output)
    assert rows[0] == ["file", "species"]
    assert rows[1:] == csv_rows(good)
    assert f"wrote {len(good)} predictions to {output}" in result.stdout
    assert leftovers(os.fspath(out_dir)) == []


def test_a_glob_of_good_images_exits_0(model_dir, tmp_path):
    folder = os.fspath(tmp_path / "plänts [v2] and more")
    good = write_good_images(folder, os.fspath(tmp_path / "elsewhere"))
    output = os.fspath(tmp_path / "sübmission.csv")
    # [ in a folder's name starts a character class in a glob: [[] matches it.
    pattern = os.path.join(folder.replace("[", "[[]"), "*.png")
    result = run_predict(f"--export_dir={model_dir}/export", f"--input={pattern}",
                         f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert skipped_lines(result) == []
    pngs = {name: species for name, species in good.items() if name.endswith(".png")}
    assert read_csv(output)[1:] == csv_rows(pngs)
    assert leftovers(os.fspath(tmp_path)) == []


def test_no_good_image_is_an_error_and_keeps_the_old_csv(model_dir, tmp_path):
    folder = os.fspath(tmp_path / "all bad")
    bad = write_bad_images(folder)
    output = write_bytes(os.fspath(tmp_path / "submission.csv"), OLD_CSV.encode())
    result = run_predict(f"--model_dir={model_dir}", f"--input={folder}", f"--output={output}")
    assert_one_line_error(result, f"no image could be predicted ({len(bad)} skipped", "not written")
    assert len(skipped_lines(result)) == len(bad)
    with open(output, encoding="utf-8") as f:
        assert f.read() == OLD_CSV
    assert leftovers(os.fspath(tmp_path)) == []


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory) -> dict[str, str]:
    """Paths for the path-flag cases: a file, folders with the wrong content, an image."""
    root = tmp_path_factory.mktemp("paths") / "päths with spaces"
    (root / "empty folder").mkdir(parents=True)
    (root / "text folder").mkdir()
    (root / "text folder" / "notes.txt").write_text("no images here\n")
    (root / "a file.txt").write_text("not a folder, not an image\n")
    (root / "images").mkdir()
    save_image(os.fspath(root / "images" / "ok.png"), "RGB", (10, 120, 30))
    (root / "broken model").mkdir()
    (root / "broken model" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    return {"root": os.fspath(root), "file": os.fspath(root / "a file.txt"),
            "empty": os.fspath(root / "empty folder"), "text": os.fspath(root / "text folder"),
            "images": os.fspath(root / "images"), "missing": os.fspath(root / "nö such"),
            "broken": os.fspath(root / "broken model"),
            "dangling": os.fspath(root / "dangling.png")}


# Each case: the flags it changes in a working command ({name} is a
# `bad_paths` entry, {model} the model fixture; None drops the flag) and
# words its error line must hold besides the bad path.
PATH_CASES = {
    "output in a missing folder": ({"output": "{missing}/out.csv"},
                                   ["--output=", "does not exist", "create the folder"]),
    "output is a folder": ({"output": "{empty}"}, ["--output=", "is a folder", "file name"]),
    "output under a file": ({"output": "{file}/out.csv"}, ["--output=", "is a file"]),
    "output folder unwritable": ({"output": "/proc/out.csv"},
                                 ["folder of --output=/proc", "cannot be written"]),
    "model_dir is a file": ({"model_dir": "{file}"}, ["--model_dir=", "is a file"]),
    "model_dir missing": ({"model_dir": "{missing}"}, ["--model_dir=", "does not exist"]),
    "model_dir without SavedModel": ({"model_dir": "{empty}"},
                                     ["--model_dir=", "no SavedModel", "--mode=export"]),
    "model_dir is the SavedModel": ({"model_dir": "{model}/export"},
                                    ["is a SavedModel itself", "--export_dir="]),
    "export_dir is a file": ({"model_dir": None, "export_dir": "{file}"},
                             ["--export_dir=", "is a file"]),
    "export_dir missing": ({"model_dir": None, "export_dir": "{missing}"},
                           ["--export_dir=", "does not exist"]),
    "export_dir without SavedModel": ({"model_dir": None, "export_dir": "{model}"},
                                      ["--export_dir=", "no SavedModel", "export/"]),
    "export_dir broken SavedModel": ({"model_dir": None, "export_dir": "{broken}"},
                                     ["cannot be loaded", "export it again"]),
    "input file not an image": ({"input": "{file}"}, ["--input=", "not an image"]),
    "input missing": ({"input": "{missing}"}, ["--input=", "does not exist"]),
    "input dangling symlink": ({"input": "{dangling}"}, ["--input=", "does not exist"]),
    "input ~ left by the shell": ({"input": "~/nö such"}, ["--input=~/", "$HOME"]),
    "input glob matches nothing": ({"input": "{images}/*.jpg"}, ["no images match --input="]),
    "input folder without images": ({"input": "{text}"}, ["--input=", "no images"]),
}


def test_each_bad_path_flag_is_one_line_and_writes_nothing(model_dir, bad_paths, tmp_path):
    cases, bad_values, outputs = [], [], []
    for i, (changes, _) in enumerate(PATH_CASES.values()):
        outputs.append(write_bytes(os.fspath(tmp_path / f"kept {i} ü.csv"), OLD_CSV.encode()))
        changed = {flag: value and value.format(model=model_dir, **bad_paths)
                   for flag, value in changes.items()}
        flags = {"model_dir": model_dir, "input": bad_paths["images"], "output": outputs[-1],
                 **changed}
        cases.append([f"--{flag}={value}" for flag, value in flags.items() if value])
        # The line names the bad path; for /proc/out.csv, its folder.
        bad_values.append([v for v in changed.values() if v and not v.startswith("/proc/")])
    results = run_main_per_case("trainer.predict", cases)
    for (case, (_, words)), named, result in zip(PATH_CASES.items(), bad_values, results):
        try:
            assert_one_line_error(result, *words, *named)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None
    for output in outputs:
        with open(output, encoding="utf-8") as f:
            assert f.read() == OLD_CSV, output
    for folder in (tmp_path, bad_paths["root"], bad_paths["empty"]):
        assert leftovers(os.fspath(folder)) == []


# Flag mistakes that need no file: answered before TensorFlow is imported.
FLAG_CASES = {
    "stray positional argument": (["--model_dir=m", "--input=i", "extra"],
                                  ["unexpected arguments extra"]),
    "unknown flag": (["--model_dir=m", "--input=i", "--batch=8"], ["Unknown command line flag"]),
    "batch_size 0": (["--model_dir=m", "--input=i", "--batch_size=0"], ["[1, 4096]"]),
    "batch_size too large": (["--model_dir=m", "--input=i", "--batch_size=4097"], ["[1, 4096]"]),
    "no input": (["--model_dir=m"], ["pass --input"]),
    "no model": (["--input=i"], ["pass --model_dir", "--export_dir"]),
    "both model flags": (["--model_dir=m", "--export_dir=e", "--input=i"], ["not both"]),
}


@pytest.mark.parametrize("case", FLAG_CASES, ids=list(FLAG_CASES))
def test_bad_flag_is_one_line_before_tensorflow(case):
    args, words = FLAG_CASES[case]
    result = run_predict(*args, python_flags=("-X", "importtime"))
    lines = result.stderr.splitlines()
    imported = [line for line in lines if line.startswith("import time:")]
    messages = "\n".join(line for line in lines if not line.startswith("import time:"))
    assert_one_line_error(
        subprocess.CompletedProcess(result.args, result.returncode, result.stdout, messages),
        *words)
    assert imported and not [line for line in imported if "tensorflow" in line]


def test_help_documents_the_exit_status_without_tensorflow():
    result = run_predict("--help", python_flags=("-X", "importtime"))
    assert "import time:" in result.stderr and "tensorflow" not in result.stderr
    for words in ("file,species", "Exit status", "skipped PATH: why", f"  {EXIT_SKIPPED}  ",
                  "--batch_size", "[1, 4096]", "--export_dir", "--input", "--output"):
        assert words in result.stdout, words


def test_gcs_model_images_and_output(model_dir, gcs_emulator, gcs_dir, tmp_path):
    prefix = gcs_dir.removeprefix(f"gs://{gcs_emulator.bucket}/")
    for parent, _, names in os.walk(os.path.join(model_dir, "export")):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                gcs_emulator.upload_object(f"{prefix}/run/{os.path.relpath(path, model_dir)}",
                                           f.read())
    good = write_good_images(os.fspath(tmp_path / "test"), os.fspath(tmp_path / "elsewhere"))
    for name in good:
        with open(tmp_path / "test" / name, "rb") as f:
            gcs_emulator.upload_object(f"{prefix}/test/{name}", f.read())
    gcs_emulator.upload_object(f"{prefix}/test/truncated.png", noise_png()[:300])
    result = run_predict(f"--model_dir={gcs_dir}/run", f"--input={gcs_dir}/test",
                         f"--output={gcs_dir}/out/submission.csv",
                         env=gcs_emulator.subprocess_env())
    assert result.returncode == EXIT_SKIPPED, result.stderr[-3000:] + gcs_emulator.diagnostics()
    [line] = skipped_lines(result)
    assert line.startswith(f"skipped {gcs_dir}/test/truncated.png: damaged or not an image ("), line
    written = gcs_emulator.read_object(f"{prefix}/out/submission.csv").decode()
    assert list(csv.reader(io.StringIO(written)))[1:] == csv_rows(good)
    assert not [n for n in gcs_emulator.list_objects(prefix) if ".tmp" in n or ".write-check" in n]
    # A mistyped bucket fails at start-up, not after every image has been predicted.
    result = run_predict(f"--model_dir={gcs_dir}/run", f"--input={gcs_dir}/test",
                         "--output=gs://no-such-bucket-here/submission.csv",
                         env=gcs_emulator.subprocess_env())
    assert_one_line_error(result, "gs://no-such-bucket-here", "does not exist", "bucket name")
    assert skipped_lines(result) == []
