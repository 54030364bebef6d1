"""The command line, run as a user runs it: one-line errors, --help, the shell wrapper.

The cases run as concurrent subprocesses, once per test run, to keep the
file well under a minute on two cores.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import time
from typing import Any, Callable

import pytest

from input_pipeline import records
from tests import image_fixtures as fx
from tests.conversion_fixtures import MODULE, PYTHON, REPO, all_records, skip_reasons
from tests.file_trees import tree


@pytest.mark.parametrize("args, answer", [
    (["--help"], "--num_workers"),
    (["--input_dir=in", "--output_dir=out", "--num_shards=0"], "--num_shards must be in"),
    (["--input_dir=in", "--output_dir=out", "--seed=x"], "--seed"),
], ids=["help", "bad number", "bad type"])
def test_help_and_flag_errors_need_no_tensorflow(args, answer):
    result = subprocess.run([PYTHON, "-X", "importtime", *MODULE[1:], *args],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    imported = [line for line in result.stderr.splitlines() if "| tensorflow" in line]
    assert not imported, imported[:3]
    assert answer in result.stdout + result.stderr


class _CliCases:
    """name -> (command, text the one-line error must contain), added case by case.

    A case writes only into tmp/cases/<name>, which also holds whatever input,
    file or link it alone needs; everything else in `tmp` is shared and read only.
    """

    def __init__(self, tmp: pathlib.Path):
        self.tmp = tmp
        self.good = tmp / "good"
        fx.make_class_folders(str(self.good), {"A": 3, "B": 3}, size=(8, 8))
        (tmp / "empty").mkdir()
        fx.make_class_folders(str(tmp / "nested" / "copy"), {"A": 1}, size=(8, 8))
        # Output cases read an input whose scan fails: their own message shows
        # that the output folder is checked first.
        self.scan_fails = tmp / "no_valid"
        fx.make_class_folders(str(self.scan_fails), {"A": 2}, size=(8, 8))
        fx.not_an_image(str(self.scan_fails / "B" / "0.png"))
        self.cases: dict[str, tuple[list[str], str]] = {}

    def own(self, name: str) -> pathlib.Path:
        (self.tmp / "cases" / name).mkdir(parents=True, exist_ok=True)
        return self.tmp / "cases" / name

    def add(self, name: str, message: str, *flags: str, input_dir=None, output=None) -> None:
        input_dir = self.good if input_dir is None else input_dir
        output = self.own(name) / "out" if output is None else output
        command = MODULE + [f"--input_dir={input_dir}", f"--output_dir={output}", *flags]
        self.cases[name] = (command, message)

    def copy_of(self, source: pathlib.Path, name: str) -> pathlib.Path:
        return pathlib.Path(shutil.copytree(source, self.own(name) / source.name))


def _input_cases(c: _CliCases) -> None:
    c.add("input missing", "does not exist", input_dir=c.tmp / "nope")
    c.add("input empty", "is empty", input_dir=c.tmp / "empty")
    c.add("input flag empty", "--input_dir is empty", input_dir="")
    (c.own("input is a file") / "photo.png").write_text("x")
    c.add("input is a file", "is a file, not a folder",
           input_dir=c.own("input is a file") / "photo.png")
    dangling = c.own("input dangling symlink")
    (dangling / "in").symlink_to(dangling / "gone")
    c.add("input dangling symlink", "is a symlink to", input_dir=dangling / "in")
    c.add("input remote", "must be a local folder", input_dir="gs://b/in")
    c.add("input ~ after =", "--input_dir=~/images starts with ~", input_dir="~/images")
    c.add("no class folders", "no class folders", input_dir=c.tmp / "nested")
    lines = c.own("class name with a line break") / "in"
    fx.make_class_folders(str(lines), {"A\nB": 1, "C": 1}, size=(8, 8))
    c.add("class name with a line break", "holds a control character", input_dir=lines)
    c.add("class without valid images", "class 'B' has no valid", input_dir=c.scan_fails)


def _output_cases(c: _CliCases) -> None:
    full = c.own("output not empty") / "full"
    full.mkdir()
    (full / "old.txt").write_text("x")
    c.add("output not empty", "not empty; pass --overwrite", input_dir=c.scan_fails, output=full)
    c.add("output flag empty", "--output_dir is empty", input_dir=c.scan_fails, output="")
    # Unrefused, it would make ./~/records: checked in the shared-inputs test.
    c.add("output ~ after =", "--output_dir=~/records starts with ~", input_dir=c.scan_fails,
           output="~/records")
    (c.own("output is a file") / "out").write_text("x")
    c.add("output is a file", "is a file, not a folder", input_dir=c.scan_fails)
    (c.own("output under a file") / "file").write_text("x")
    c.add("output under a file", "cannot be written", input_dir=c.scan_fails,
           output=c.own("output under a file") / "file" / "sub")
    dangling = c.own("output dangling symlink")
    (dangling / "out").symlink_to(dangling / "gone")
    c.add("output dangling symlink", "is a symlink to", input_dir=c.scan_fails)
    c.add("output not UTF-8", "is not UTF-8", input_dir=c.scan_fails,
           output=c.own("output not UTF-8") / "caf\udce9")
    root = c.copy_of(c.good, "output is the class root")
    c.add("output is the class root", "inside the class folders", "--overwrite",
           input_dir=root, output=root)
    kaggle = c.own("output in a class folder") / "kaggle"
    fx.make_class_folders(str(kaggle / "train"), {"A": 2, "B": 2}, size=(8, 8))
    c.add("output in a class folder", f"inside the class folders of --input_dir ({kaggle}/train)",
           "--overwrite", input_dir=kaggle, output=kaggle / "train" / "A")
    linked = c.copy_of(c.good, "output links into a class folder")
    (c.own("output links into a class folder") / "out").symlink_to(linked / "A")
    c.add("output links into a class folder", "inside the class folders", "--overwrite",
           input_dir=linked)
    (c.own("folder where a file goes") / "out" / records.INFO_FILE).mkdir(parents=True)
    (c.own("folder where a file goes") / "out" / records.INFO_FILE / "mine.txt").write_text("x")
    c.add("folder where a file goes", "writing to --output_dir", "--overwrite", "--num_workers=1")


def _flag_cases(c: _CliCases) -> None:
    c.add("num_shards 0", "--num_shards must be in 1..10000, got 0", "--num_shards=0")
    c.add("num_shards 10001", "--num_shards must be in 1..10000", "--num_shards=10001")
    c.add("num_shards text", "--num_shards", "--num_shards=many")
    c.add("fraction 1.5", "--validation_fraction", "--validation_fraction=1.5")
    c.add("fraction 0", "--validation_fraction", "--validation_fraction=0")
    c.add("fraction nan", "--validation_fraction must be in (0, 1), got nan",
           "--validation_fraction=nan")
    c.add("fraction inf", "--validation_fraction must be in (0, 1), got inf",
           "--validation_fraction=inf")
    c.add("max side -1", "--max_image_side", "--max_image_side=-1")
    c.add("max side 5", "--max_image_side must be 0 (full size) or in 32..65500, got 5",
           "--max_image_side=5")
    c.add("max side 65501", "--max_image_side must be 0 (full size) or in 32..65500",
           "--max_image_side=65501")
    c.add("quality 0", "--jpeg_quality must be in 1..100", "--jpeg_quality=0")
    c.add("quality 101", "--jpeg_quality", "--jpeg_quality=101")
    workers = f"--num_workers must be in 1..{4 * len(os.sched_getaffinity(0))} "
    c.add("workers 0", workers, "--num_workers=0")
    c.add("workers 100000", workers, "--num_workers=100000")
    c.add("seed -1", "--seed must be in 0..2147483647, got -1", "--seed=-1")
    c.add("seed 2**31", "--seed must be in 0..2147483647", "--seed=2147483648")
    c.add("seed text", "--seed", "--seed=x")
    c.cases["no input flag"] = (MODULE + [f"--output_dir={c.own('no input flag') / 'out'}"],
                                "--input_dir")
    c.add("stray argument", "unexpected arguments: extra", "extra")
    c.add("unknown flag", "shards", "--shards=3")


def _cli_cases(tmp: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    cases = _CliCases(tmp)
    for add_cases in (_input_cases, _output_cases, _flag_cases):
        add_cases(cases)
    return cases.cases


def _odd_names(tmp: pathlib.Path) -> pathlib.Path:
    """Spaces, non-ASCII, non-UTF-8 names, symlinks good and broken: the input tree."""
    root, elsewhere = tmp / "odd input", tmp / "elsewhere"
    fx.make_class_folders(str(root), {"Común chickweed": 2, "Fat Hen": 2}, size=(8, 8))
    os.rename(root / "Común chickweed" / "000.png", root / "Común chickweed" / "foto ñ 0.png")
    fx.noise_png(str(elsewhere / "Linked class" / "0.png"), size=(8, 8), seed=1)
    fx.noise_png(str(elsewhere / "lone.png"), size=(8, 8), seed=2)
    fx.noise_png(os.fsdecode(bytes(root / "Fat Hen") + b"/caf\xe9.png"), size=(8, 8), seed=3)
    hen = root / "Fat Hen"
    (root / "Linked").symlink_to(elsewhere / "Linked class")
    (hen / "link.png").symlink_to(elsewhere / "lone.png")
    (hen / "gone.png").symlink_to(elsewhere / "nowhere.png")
    (hen / "loop.png").symlink_to(hen / "loop.png")
    (hen / "up").symlink_to(root)
    (root / "Loop").symlink_to(root / "Loop")
    return root


def _once_per_run(tmp_path_factory, name: str, compute: Callable[[], Any]) -> Any:
    """compute()'s JSON result, computed by one pytest-xdist worker of the run only.

    Every worker that runs a test of this module would otherwise make the
    module fixture again: dozens of processes, each importing TensorFlow.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return compute()
    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, for all workers
    result = shared / f"{name}.json"
    try:
        os.close(os.open(shared / f"{name}.lock", os.O_CREAT | os.O_EXCL))
    except FileExistsError:  # another worker computes it
        deadline = time.time() + 900
        while not result.exists():
            assert time.time() < deadline, f"no {result} from the worker making it"
            time.sleep(0.2)
        value = json.loads(result.read_text())
        assert "failed" not in value, value.get("failed")
        return value["value"]
    try:
        value = {"value": compute()}
    except BaseException as error:
        value = {"failed": f"{type(error).__name__}: {error}"}
        raise
    finally:
        (shared / f"{name}.json.tmp").write_text(json.dumps(value))
        os.rename(shared / f"{name}.json.tmp", result)
    return value["value"]


def _run_cli(tmp: pathlib.Path) -> dict[str, Any]:
    cases = _cli_cases(tmp)
    fx.make_class_folders(str(tmp / "wrapped"), {"A": 4, "B": 4}, size=(8, 8))
    commands = {name: [str(arg) for arg in command] for name, (command, _) in cases.items()}
    commands["help"] = MODULE + ["--help"]
    commands["odd names"] = MODULE + [f"--input_dir={_odd_names(tmp)}",
                                      f"--output_dir={tmp / 'odd out ü'}", "--num_workers=2"]
    # Relative paths from another folder: the wrapper must not change directory.
    commands["wrapper"] = [os.path.join(REPO, "scripts", "make_tfrecords.sh"),
                           "wrapped", "wrapped_out", "--num_shards=2"]
    commands["wrapper usage"] = [os.path.join(REPO, "scripts", "make_tfrecords.sh")]
    before = tree(tmp)

    def run(name: str) -> tuple[int, str, str]:
        done = subprocess.run(commands[name], cwd=tmp if name.startswith("wrapper") else REPO,
                              capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr

    # A few at a time: each one that reaches a path check imports TensorFlow.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = dict(zip(commands, pool.map(run, commands)))
    messages = {name: message for name, (_, message) in cases.items()}
    return dict(tmp=str(tmp), messages=messages, results=results, before=before,
                after=tree(tmp))


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    made = _once_per_run(tmp_path_factory, "make_tfrecords_cli",
                         lambda: _run_cli(tmp_path_factory.mktemp("cli")))
    return (pathlib.Path(made["tmp"]), made["messages"], made["results"], made["before"],
            made["after"])


CLI_ERRORS = [
    "input missing", "input empty", "input flag empty", "input is a file",
    "input dangling symlink", "input remote", "input ~ after =", "no class folders",
    "class name with a line break", "class without valid images", "output not empty",
    "output flag empty", "output ~ after =", "output is a file", "output under a file",
    "output dangling symlink", "output not UTF-8", "output is the class root",
    "output in a class folder", "output links into a class folder", "folder where a file goes",
    "num_shards 0", "num_shards 10001", "num_shards text", "fraction 1.5", "fraction 0",
    "fraction nan", "fraction inf", "max side -1", "max side 5", "max side 65501", "quality 0",
    "quality 101", "workers 0", "workers 100000", "seed -1", "seed 2**31", "seed text",
    "no input flag", "stray argument", "unknown flag",
]


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_errors_are_one_line_and_change_nothing(cli, case):
    tmp, cases, results, before, after = cli
    returncode, _, stderr = results[case]
    assert returncode != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("make_tfrecords: error: ")
    assert cases[case] in lines[0]
    # Nothing of the case's own lost, changed or added: no records, no info.
    mine = lambda snapshot: {p: h for p, h in snapshot.items()
                             if p.startswith(os.path.join("cases", case) + os.sep)}
    assert mine(after) == mine(before)


def test_cli_cases_are_all_tested_and_leave_shared_inputs_alone(cli):
    tmp, cases, results, before, after = cli
    assert sorted(cases) == sorted(CLI_ERRORS)
    made_by_successes = ("wrapped_out" + os.sep, "odd out ü" + os.sep)
    shared = lambda snapshot: {p: h for p, h in snapshot.items()
                               if not p.startswith(("cases" + os.sep, *made_by_successes))}
    assert shared(after) == shared(before)
    assert not os.path.exists(os.path.join(REPO, "~"))


def test_odd_names_and_symlinks_convert_and_broken_entries_are_reported(cli):
    tmp, _, results, _, _ = cli
    returncode, stdout, stderr = results["odd names"]
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    info = json.loads((tmp / "odd out ü" / records.INFO_FILE).read_text())
    assert info["class_names"] == ["Común chickweed", "Fat Hen", "Linked"]
    found = all_records(str(tmp / "odd out ü"))
    assert {f: r["label"] for f, r in found.items()} == {
        "Común chickweed/foto ñ 0.png": 0, "Común chickweed/001.png": 0,
        "Fat Hen/000.png": 1, "Fat Hen/001.png": 1, "Fat Hen/link.png": 1,
        "Linked/0.png": 2,
    }
    reasons = skip_reasons(info)
    assert sorted(reasons) == ["Fat Hen/caf\\xe9.png", "Fat Hen/gone.png", "Fat Hen/loop.png"]
    assert reasons["Fat Hen/caf\\xe9.png"].startswith("file name is not UTF-8")
    assert reasons["Fat Hen/gone.png"] == (
        f"broken symlink: to {tmp / 'elsewhere' / 'nowhere.png'} (No such file or directory)"
    )
    assert reasons["Fat Hen/loop.png"].startswith("broken symlink: ")
    folders = {d["folder"]: d["reason"] for d in info["non_class_folders"]}
    assert folders == {"Fat Hen/up": "is inside a class folder; not read",
                       "Loop": "is a broken symlink; not read"}
    assert "Común chickweed" in stdout and "skipped 3 file(s)" in stdout


def test_help_documents_every_flag(cli):
    _, _, results, _, _ = cli
    _, stdout, _ = results["help"]
    for flag in ("input_dir", "output_dir", "num_shards", "validation_fraction", "seed",
                 "max_image_side", "jpeg_quality", "num_workers", "overwrite", "tfds_name",
                 "tfds_data_dir", "tfds_download"):
        assert f"--{flag}" in stdout or f"--[no]{flag}" in stdout


def test_shell_wrapper_converts_and_prints_a_summary(cli):
    tmp, _, results, _, _ = cli
    returncode, stdout, stderr = results["wrapper"]
    assert returncode == 0, stderr
    assert "train: 6 examples in 2 shard(s)" in stdout
    assert "validation: 2 examples in 1 shard(s)" in stdout
    assert records.read_dataset_info(str(tmp / "wrapped_out")).num_shards["train"] == 2
    returncode, _, stderr = results["wrapper usage"]
    assert returncode == 2 and stderr.startswith("usage:")


def _fake_python(path: pathlib.Path, name: str) -> pathlib.Path:
    """An executable at `path` that prints `name` and its arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho {name} "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("setting, repo_venv, expected", [
    ("PYTHON", True, "chosen"),
    ("VIRTUAL_ENV", True, "activated"),  # the active one, even beside the repository's
    (None, True, "repo-venv"),
    (None, False, "path-python3"),  # not a python3 of the system's own
], ids=["$PYTHON", "activated venv", "repo .venv", "python3 on PATH"])
def test_shell_wrapper_runs_the_active_python(tmp_path, setting, repo_venv, expected):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "scripts", "make_tfrecords.sh"), repo / "scripts")
    if repo_venv:
        _fake_python(repo / ".venv" / "bin" / "python", "repo-venv")
    _fake_python(tmp_path / "bin" / "python3", "path-python3")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    if setting == "PYTHON":
        env["PYTHON"] = str(_fake_python(tmp_path / "chosen" / "python", "chosen"))
    elif setting == "VIRTUAL_ENV":
        _fake_python(tmp_path / "active" / "bin" / "python", "activated")
        env["VIRTUAL_ENV"] = str(tmp_path / "active")
    result = subprocess.run([str(repo / "scripts" / "make_tfrecords.sh"), "IN", "OUT", "--seed=1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected, "-m", "input_pipeline.make_tfrecords",
                                     "--input_dir=IN", "--output_dir=OUT", "--seed=1"]
