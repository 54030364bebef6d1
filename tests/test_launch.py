"""What both launchers share: the images, the flagfiles, and the documented commands.

`python -m launch.vertex` and `launch/tpu_vm.sh` themselves are tested in
tests/test_launch_vertex.py and tests/test_launch_tpu_vm.py. Here the documented commands
(README, flagfile headers) run as dry runs; `gcloud` is the recording stub of
tests/launch_fixtures.py, so nothing reaches Google Cloud.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launch import trainer_args
from tests.launch_fixtures import GPU_IMAGE, REPO, gcloud_calls

# Values for the shell variables used in the documented commands.
DOC_VARS = {"PROJECT": "my-project", "REGION": "us-central1", "ZONE": "us-west4-a",
            "BUCKET": "gs://my-bucket", "IMAGE": GPU_IMAGE,
            "TPU_IMAGE": "us-central1-docker.pkg.dev/p/seedlings/tpu:abc"}


# ---- Dockerfiles. ----


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with `\\` continuations joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), " ".join(arguments.split())))
    return pairs


# The edge extra: a job with --export_formats finds its converters in the image.
@pytest.mark.parametrize("name, extras, find_links", [
    ("Dockerfile", "gpu,edge", None),
    ("Dockerfile.tpu", "tpu,edge", "https://storage.googleapis.com/libtpu-tf-releases/index.html"),
])
def test_dockerfile(name: str, extras: str, find_links: str | None) -> None:
    instructions = dockerfile_instructions(REPO / "launch" / name)
    setup_py = (REPO / "setup.py").read_text()

    (base,) = [args for op, args in instructions if op == "FROM"]
    # Pinned to an exact Python release that setup.py's python_requires accepts.
    match = re.fullmatch(r"python:3\.(\d+)\.\d+-slim-\w+", base)
    assert match and int(match[1]) >= 10, base

    runs = [args for op, args in instructions if op == "RUN"]
    installs = [r for r in runs if f'pip install ".[{extras}]"' in r]
    assert installs, runs
    for extra in extras.split(","):
        assert f'"{extra}": [' in setup_py
    if find_links:
        assert f"-f {find_links}" in installs[0]
    assert any("pip install --no-deps --force-reinstall ." in r for r in runs)

    copies = [args for op, args in instructions if op == "COPY"]
    for folder in ("input_pipeline", "trainer", "launch", "configs"):
        assert f"{folder}/ {folder}/" in copies, folder
    assert ("WORKDIR", "/app") in instructions  # configs/ resolves against it.
    (entrypoint,) = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "trainer.main"]


# ---- Flagfiles. ----

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.cfg"))


def test_the_checked_flags_are_the_trainers() -> None:
    # The launchers' check names these; a rename in trainer/config.py must show up here.
    names = set(trainer_args.trainer_flag_values())
    assert {*trainer_args.SHARED_PATH_FLAGS, "strategy", "tpu"} <= names


def test_every_config_is_there() -> None:
    assert CONFIGS == ["cpu_demo.cfg", "finetune_cpu.cfg", "finetune_gpu_1x.cfg", "gpu_1x.cfg",
                       "gpu_1x_regularised.cfg", "gpu_8x.cfg", "gpu_multiworker.cfg",
                       "tpu_v5e_8.cfg"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_a_flagfile_of_trainer_flags(name: str) -> None:
    path = REPO / "configs" / name
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# "), "start with a header: what hardware, how to run"
    settings = [line for line in lines if line.strip() and not line.startswith("#")]
    for line in settings:
        assert re.fullmatch(r"--[a-z_]+=\S+", line), line
    # Hardware flags come from the launchers; here they would defeat launch.vertex's check.
    assert not any(line.startswith(("--strategy=", "--tpu=")) for line in settings)

    # As the launchers read it: unknown flags or bad values raise.
    fv = trainer_args.check([f"--flagfile=configs/{name}"], trainer_args.Target())
    if name == "cpu_demo.cfg":
        assert (fv.model, fv.width, fv.mixed_precision) == ("resnet18", 16, "float32")
        assert 64 <= fv.image_size <= 96 and fv.batch_size == 64 and 0 < fv.train_steps <= 5000
        assert fv.cache_decoded  # the demo's data set fits in memory many times over
    elif name.startswith("finetune"):
        # torchvision's layout and width; the file comes from the command line.
        assert fv.width == 64 and fv.pretrained is None and fv.model in ("resnet18", "resnet50")
        assert 0 < fv.backbone_lr_multiplier < 1 and fv.epochs <= 30
        assert fv.mixed_precision == ("float32" if "cpu" in name else "mixed_float16")
    else:
        assert (fv.model, fv.image_size, fv.optimizer) == ("resnet50", 224, "sgd")
        tpu = name.startswith("tpu")
        assert fv.mixed_precision == ("mixed_bfloat16" if tpu else "mixed_float16")
        replicas = {"gpu_1x.cfg": 1, "gpu_1x_regularised.cfg": 1, "gpu_8x.cfg": 8,
                    "gpu_multiworker.cfg": 8, "tpu_v5e_8.cfg": 8}
        assert fv.batch_size == 128 * replicas[name]
        assert fv.label_smoothing == 0.1 and fv.weight_decay == 1e-3
        # The measured recipe (README "Regularisation"), only where the name says so.
        assert fv.randaugment == ("2,9" if "regularised" in name else None)


# ---- The documented commands run (as dry runs). ----


def documented_commands(text: str, program: str) -> list[str]:
    """Shell commands starting with `program` in `text`, comment markers and `\\` joined."""
    text = re.sub(r"^#\s{0,3}", "", text, flags=re.M)  # flagfile headers are comments
    text = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip().startswith(program)]


def run_documented(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    prelude = "".join(f"{k}={shlex.quote(v)}; " for k, v in DOC_VARS.items())
    # The README defines these two in its code block.
    prelude += 'COMMON="--project=$PROJECT --region=$REGION"; DATA=$BUCKET/seedlings/records; '
    command = command.replace("python -m launch.vertex",
                              f"{sys.executable} -m launch.vertex --dry_run")
    command = command.replace("launch/tpu_vm.sh", "bash launch/tpu_vm.sh --dry_run")
    return subprocess.run(["bash", "-c", prelude + command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_readme_commands_work(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    readme = (REPO / "README.md").read_text()
    assert "\n## Train on Vertex AI\n" in readme and "\n## Train on a TPU VM\n" in readme
    # The cloud sections: from "Train on Vertex AI" to the next section after the TPU VM one.
    text = readme.split("\n## Train on Vertex AI\n", 1)[1].split("\n## Tests\n", 1)[0]

    kinds = set()
    for command in documented_commands(text, "python -m launch.vertex"):
        result = run_documented(command, env)
        assert result.returncode == 0, (command, result.stderr)
        pools = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"]
        spec = pools[0]["machineSpec"]
        kinds.add("package" if "pythonPackageSpec" in pools[0] else
                  "tpu" if "tpuTopology" in spec else f"{len(pools)} pools")
    assert kinds == {"1 pools", "2 pools", "tpu", "package"}

    scripts = documented_commands(text, "launch/tpu_vm.sh")
    assert len(scripts) == 2
    for command in scripts:
        result = run_documented(command, env)
        assert result.returncode == 0, (command, result.stderr)
        assert "trainer.main --strategy=tpu --tpu=local" in result.stdout.replace("\\ ", " ")
    assert gcloud_calls(log) == []


# The CPU configs run on the machine at hand, not through a launcher.
@pytest.mark.parametrize("name", [c for c in CONFIGS if "cpu" not in c])
def test_config_header_commands_work(name: str, gcloud_stub: tuple[dict, Path]) -> None:
    env, _ = gcloud_stub
    text = (REPO / "configs" / name).read_text()
    commands = documented_commands(text, "python -m launch.vertex")
    commands += documented_commands(text, "launch/tpu_vm.sh")
    assert commands, "the header should say how to run it"
    for command in commands:
        assert f"--flagfile=configs/{name}" in command
        result = run_documented(command, env)
        assert result.returncode == 0, (command, result.stderr)
