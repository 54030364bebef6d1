"""`launch/tpu_vm.sh`, run as a user runs it, with a recording `gcloud` stub on PATH.

The stub (tests/launch_fixtures.py) logs every call, so a test sees exactly which VMs the
script would create, use and delete; nothing reaches Google Cloud.
"""

from __future__ import annotations

import shlex
import sys
import tarfile
from pathlib import Path

import pytest

from tests.launch_fixtures import assert_one_line_error, gcloud_calls, run_tpu_script

TPU_ARGS = ["--project=my-project", "--zone=us-west4-a", "--name=v5e",
            "--accelerator_type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]
MODEL_DIR = "--model_dir=gs://my-bucket/runs/v5e"
WHERE = ["--zone=us-west4-a", "--project=my-project"]


def test_tpu_script_dry_run_prints_the_gcloud_commands(gcloud_stub: tuple[dict, Path],
                                                       tmp_path: Path) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--dry_run", "--",
                            "--flagfile=configs/tpu_v5e_8.cfg",
                            "--data_dir=gs://my-bucket/my records", MODEL_DIR, env=env)
    assert result.returncode == 0, result.stderr
    assert gcloud_calls(log) == []  # Printed, never run.

    create, pack, scp, install, train, delete = map(shlex.split, result.stdout.splitlines())
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert create == [*tpu_vm, "create", "v5e", *WHERE, "--accelerator-type=v5litepod-8",
                      "--version=v2-alpha-tpuv5-lite"]
    archive = str(tmp_path / "seedlings-v5e.tgz")
    assert pack[:3] == ["tar", "-czf", archive] and "configs" in pack and "trainer" in pack
    assert scp == [*tpu_vm, "scp", archive, "v5e:seedlings.tgz", "--worker=all", *WHERE]
    assert install[:6] == [*tpu_vm, "ssh", "v5e"] and "--worker=all" in install
    assert "'./seedlings[tpu,edge]' -f https://storage.googleapis.com/libtpu-tf-releases/index.html" \
        in install[-1]
    assert train[:6] == [*tpu_vm, "ssh", "v5e"] and "--worker=all" in train
    remote = train[-1].removeprefix("--command=")
    # The remote shell gets the trainer flags back exactly, spaces included.
    assert shlex.split(remote) == [
        "cd", "seedlings", "&&", "python3", "-m", "trainer.main", "--strategy=tpu", "--tpu=local",
        "--flagfile=configs/tpu_v5e_8.cfg", "--data_dir=gs://my-bucket/my records", MODEL_DIR]
    assert delete == [*tpu_vm, "delete", "v5e", *WHERE, "--quiet"]


def test_tpu_script_creates_installs_trains_and_deletes(gcloud_stub: tuple[dict, Path],
                                                        tmp_path: Path) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--", "--model=resnet50", MODEL_DIR, env=env)
    assert result.returncode == 0, result.stderr

    verbs = [call[3] for call in gcloud_calls(log)]
    assert verbs == ["describe", "create", "scp", "ssh", "ssh", "delete"]
    with tarfile.open(tmp_path / "seedlings-v5e.tgz") as archive:
        names = set(archive.getnames())
    assert {"setup.py", "trainer/main.py", "configs/tpu_v5e_8.cfg"} <= names
    assert not any("__pycache__" in n for n in names)


def test_tpu_script_reuses_an_existing_vm_and_keeps_it(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--", MODEL_DIR,
                            env={**env, "FAKE_DESCRIBE_RC": "0",
                                 "FAKE_DESCRIBE_OUT": "v5litepod-8"})
    assert result.returncode == 0, result.stderr
    assert [call[3] for call in gcloud_calls(log)] == ["describe", "scp", "ssh", "ssh"]


def test_tpu_script_refuses_an_existing_vm_of_another_type(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--", MODEL_DIR,
                            env={**env, "FAKE_DESCRIBE_RC": "0", "FAKE_DESCRIBE_OUT": "v4-8"})
    assert_one_line_error(result, "TPU VM v5e already exists as a v4-8, not v5litepod-8: use "
                                  "another --name, or --accelerator_type=v4-8", "tpu_vm.sh", 2)
    # Neither used nor deleted: it is someone's VM.
    assert [call[3] for call in gcloud_calls(log)] == ["describe"]


def test_tpu_script_deletes_the_vm_when_training_fails(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--", MODEL_DIR,
                            env={**env, "FAKE_TRAIN_RC": "3"})
    assert result.returncode == 3
    assert [call[3] for call in gcloud_calls(log)][-2:] == ["ssh", "delete"]


TPU_WHERE = ["--project=my-project", "--zone=us-west4-a"]


@pytest.mark.parametrize("args, expected", [
    (["--zone=us-west4-a", "--", MODEL_DIR], "--project is required"),
    (["--project=", "--zone=us-west4-a", "--", MODEL_DIR], "--project is required"),
    (["--project=my-project", "--", MODEL_DIR], "--zone is required"),
    (["--project"], "--project needs a value"),
    (["--project", "--zone=us-west4-a"], "--project needs a value"),
    (["--project=my project", "--zone=us-west4-a", "--", MODEL_DIR],
     "--project=my project is not a project ID (6-30 lowercase"),
    ([*TPU_WHERE, "--zone=us west", "--", MODEL_DIR], "--zone=us west is not a zone like us-west4"),
    ([*TPU_WHERE, "--name=Bad_Name", "--", MODEL_DIR], "--name=Bad_Name is not a TPU name (up to"),
    ([*TPU_WHERE, "--name=" + "a" * 64, "--", MODEL_DIR], "is not a TPU name"),
    ([*TPU_WHERE, "--accelerator_type=garbage", "--", MODEL_DIR],
     "--accelerator_type=garbage is not a TPU type like v5litepod-8"),
    ([*TPU_WHERE, "--version=a b", "--", MODEL_DIR], "--version=a b is not a TPU software version"),
    ([*TPU_WHERE, "--model=resnet50"], "unknown argument --model=resnet50 (trainer flags go after"),
    ([*TPU_WHERE, "stray", "--", MODEL_DIR], "unknown argument stray"),
    # The trainer flags: the same check as launch.vertex's, and --model_dir must be gs://.
    ([*TPU_WHERE], "trainer flag --model_dir is required here"),
    ([*TPU_WHERE, "--", "--model_dir=/tmp/run"],
     "trainer flag --model_dir=/tmp/run: must be gs://BUCKET/PATH (the job's machines cannot"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--data_dir=/data/records"],
     "trainer flag --data_dir=/data/records: must be gs://BUCKET/PATH"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--data_dir=gs://b b/r"], "'b b' is not a bucket name"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--bogus=1"], "trainer flag --bogus=1: trainer.main has no"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--image_size=100000"],
     "trainer flag --image_size=100000: 100000 is not an integer in the range [32, 2048]"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--learning_rate=nan"], "trainer flag --learning_rate=nan: "),
    ([*TPU_WHERE, "--", MODEL_DIR, "--strategy=mirrored"],
     "trainer flag --strategy=mirrored: the launcher sets --strategy=tpu for this hardware"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--flagfile=configs/nope.cfg"],
     "trainer flag --flagfile=configs/nope.cfg: there is no file"),
])
def test_tpu_script_bad_input_is_a_one_line_error(args: list[str], expected: str,
                                                  gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*args, env=env)  # Not a dry run: the stub would record a create.
    assert_one_line_error(result, expected, "tpu_vm.sh", 2)
    assert result.stdout == ""
    assert gcloud_calls(log) == []


def test_tpu_script_without_a_usable_python_is_a_one_line_error(
        gcloud_stub: tuple[dict, Path], tmp_path: Path) -> None:
    env, log = gcloud_stub
    args = [*TPU_WHERE, "--", MODEL_DIR]
    result = run_tpu_script(*args, env={**env, "PYTHON": str(tmp_path / "no-python")})
    assert_one_line_error(result, f"no {tmp_path / 'no-python'} to check the trainer flags with",
                          "tpu_vm.sh", 2)
    # A Python without this repository's requirements (-S: no site-packages, so no absl).
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    bare.chmod(0o755)
    result = run_tpu_script(*args, env={**env, "PYTHON": str(bare)})
    assert_one_line_error(result, f"{bare} could not check the trainer flags "
                                  f"(ModuleNotFoundError: No module named 'absl')", "tpu_vm.sh", 2)
    assert gcloud_calls(log) == []
