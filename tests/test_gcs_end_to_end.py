"""gs:// for real: convert, train, SIGTERM, kill -9, resume, export, predict, all on a bucket.

Everything runs in subprocesses through TensorFlow's own GCS client and the
`gcs_emulator` fixture (fake-gcs-server behind a loopback TLS proxy), where,
as on GCS, a rename is a copy and a delete, never atomic. The same run also
checks that no credential reaches a log line, a summary or any other output.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import uuid

from tests.gcs_fixtures import GcsEmulator
from tests.image_fixtures import class_image, make_class_folders
from tests.trainer_fixtures import REPO, sigterm_kill_9_and_resume

CLASSES = ("Black-grass", "Charlock", "Cleavers", "Common Chickweed")


def run_module(env: dict[str, str], module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_convert_train_preempt_kill_resume_export_predict_on_gcs(
        gcs_emulator: GcsEmulator, gcs_dir: str, tmp_path, start_trainers):
    # Credentials a job really has in its environment: TF's GCS client sends
    # this token with every request, so it is in use throughout.
    token, api_key = f"ya29.fake-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    env = {**gcs_emulator.subprocess_env(), "GOOGLE_AUTH_TOKEN_FOR_TESTING": token,
           "SEEDLINGS_API_KEY": api_key, "TF_CPP_MIN_LOG_LEVEL": "2",
           "GCE_METADATA_IP": "127.0.0.1:9"}
    data, model = f"{gcs_dir}/data", f"{gcs_dir}/model"
    prefix = gcs_dir.removeprefix(f"gs://{gcs_emulator.bucket}/")  # Object names start so.
    model_prefix = f"{prefix}/model"
    outputs = []

    images = make_class_folders(str(tmp_path / "images"), {name: 6 for name in CLASSES})
    converted = run_module(env, "input_pipeline.make_tfrecords", f"--input_dir={images}",
                           f"--output_dir={data}", "--num_shards=2", "--num_workers=1")
    outputs.append(converted.stdout + converted.stderr)
    assert converted.returncode == 0, converted.stderr[-3000:] + gcs_emulator.diagnostics()

    # SIGTERM, rerun, kill -9, rerun, on one process (the default strategy).
    def list_files() -> list[str]:
        return [name.removeprefix(model_prefix + "/")
                for name in gcs_emulator.list_objects(model_prefix)]

    trainers = []

    def start(*args, **kwargs):
        trainers.extend(started := start_trainers(*args, **kwargs))
        return started

    measured = sigterm_kill_9_and_resume(start, data, model, workers=1, env=env,
                                         list_files=list_files, mode="train_and_eval")
    outputs += [trainer.output for trainer in trainers]
    objects = gcs_emulator.list_objects(model_prefix)
    names = list_files()
    assert "ckpt-150.index" in names and "metrics.json" in names
    assert "export/saved_model.pb" in names
    # Nothing half-written left behind: temporary exports, checkpoint parts.
    assert not [n for n in names if ".tmp" in n or "_temp" in n], names

    # Predict from the bucket: the exported model and the images are on gs://.
    for i in range(3):
        path = class_image(str(tmp_path / "test" / f"{i}.png"), (40 * i, 90, 200), i)
        with open(path, "rb") as f:
            gcs_emulator.upload_object(f"{prefix}/test/{i:04x}.png", f.read())
    submission = tmp_path / "submission.csv"
    predicted = run_module(env, "trainer.predict", f"--model_dir={model}",
                           f"--input={gcs_dir}/test", f"--output={submission}")
    outputs.append(predicted.stdout + predicted.stderr)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.reader(open(submission)))
    assert rows[0] == ["file", "species"] and len(rows) == 4
    assert all(species in CLASSES for _, species in rows[1:])

    # No credential anywhere: logs, summaries (hparams included), metrics, checkpoints.
    written = [gcs_emulator.read_object(name) for name in objects]
    for secret in (token, api_key):
        assert not [o for o in outputs if secret in o]
        assert not [b for b in written if secret.encode() in b]
        assert secret not in submission.read_text()
    print(f"\nMEASURED gs://, default strategy: {measured}")
