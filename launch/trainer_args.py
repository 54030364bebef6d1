"""Checks the trainer flags a launcher forwards, before anything is created or sent.

A job can wait hours for its machines and then fail on its first line because of a typo
after `--`. So both launchers parse those flags here first, with the trainer's own
definitions (`trainer.config`, which imports no TensorFlow), read flagfiles from the copy of
configs/ that travels with the code, and refuse paths the job's machines cannot see.

launch/tpu_vm.sh runs it as a command; the exit status is 0, or 2 with one line on stderr:

    python3 -m launch.trainer_args --prog=tpu_vm.sh --sets=--strategy=tpu --sets=--tpu=local \\
        --needs_model_dir -- --flagfile=configs/tpu_v5e_8.cfg --model_dir=gs://BUCKET/run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from absl import logging  # noqa: F401  (defines absl's logging flags, which the trainer takes)

from trainer import config

REPO = Path(__file__).resolve().parents[1]
# The one folder of flagfiles that the images (launch/Dockerfile*) and the TPU VM get.
CONFIGS = "configs"
# Path flags of the trainer that must be on storage every machine of the job shares.
# (--cache_dir is scratch for the built-in demo: the machine's own disk is right for it.)
SHARED_PATH_FLAGS = ("data_dir", "model_dir", "init_checkpoint", "pretrained")
_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


class TrainerFlagError(ValueError):
    """A trainer flag the job would fail on; its text is one line that names the flag."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the trainer will run: what the launcher adds and what its machines see."""

    # `--name=value` flags the launcher puts before the user's, for the hardware.
    sets: tuple[str, ...] = ()
    # Path prefixes of storage that the job's machines can all read and write.
    storage: tuple[str, ...] = ("gs://",)
    # Whether configs/ travels with the code (the images and the TPU VM copy it; an sdist
    # installs only the Python packages).
    ships_configs: bool = True
    # No AIP_* folders to fall back on (a TPU VM), so --model_dir must be given.
    needs_model_dir: bool = False


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` is not a Cloud Storage bucket name, or None."""
    if not bucket:
        return "names no bucket"
    # Dotted names may reach 222 characters, 63 per dot-separated part.
    longest = 222 if "." in bucket else 63
    if (not 3 <= len(bucket) <= longest or not _BUCKET.fullmatch(bucket)
            or any(len(part) > 63 for part in bucket.split("."))):
        return (f"{bucket!r} is not a bucket name (3-63 lowercase letters, digits, '-', '_' "
                f"and '.', starting and ending with a letter or digit)")
    return None


def cloud_path_problem(path: str, prefixes: Sequence[str] = ("gs://",)) -> str | None:
    """Why `path` is not a folder the job's machines share, or None.

    Args:
      path: the value of a path flag.
      prefixes: the storage the machines mount: gs://, and on Vertex AI also its /gcs/ FUSE
        mount of the same buckets.
    """
    prefix = next((p for p in prefixes if path.startswith(p)), None)
    if prefix is None:
        kinds = " or ".join(f"{p}BUCKET/PATH" for p in prefixes)
        return f"must be {kinds} (the job's machines cannot see local paths)"
    bucket = path.removeprefix(prefix).partition("/")[0]
    problem = bucket_problem(bucket)
    if problem:
        return f"{problem}: use {prefix}BUCKET/PATH"
    if "\n" in path or "\r" in path:
        return "has a line break, which Cloud Storage names cannot hold"
    return None


def trainer_flag_values() -> flags.FlagValues:
    """A fresh set of the flags `python -m trainer.main` takes, all unparsed."""
    flag_values = flags.FlagValues()
    config.define_flags(flag_values)
    # trainer.main runs under absl.app, so absl's logging flags (--v, --alsologtostderr, ...)
    # work there too. Not absl.app's own (--run_with_pdb, ...): a debugger prompt in a job
    # would wait forever.
    for flag in flags.FLAGS.get_flags_for_module("absl.logging"):
        flag = copy.deepcopy(flag)
        flag.unparse()  # This process's own command line may have set it.
        flag_values[flag.name] = flag
    return flag_values


def check(args: Sequence[str], target: Target, repo: Path = REPO) -> flags.FlagValues:
    """Parses `args` as `python -m trainer.main` on `target` will, and returns the flags.

    Raises:
      TrainerFlagError: for the first flag the job would fail on, saying what to do.
    """
    parsed = _parse([_local_arg(arg, target, repo) for arg in args])
    for flag in target.sets:
        name = flag.removeprefix("--").partition("=")[0]
        if parsed[name].present:
            raise TrainerFlagError(
                f"trainer flag {parsed[name].serialize()}: the launcher sets {flag} for this "
                f"hardware; drop it")
    _check_shared_paths(parsed, target)
    if parsed.data_dir:
        # The trainer's rules between flags. Without --data_dir it first applies the demo's
        # flagfile to the flags not given, so the values seen here would not be its.
        try:
            config.from_flags(parsed, data_dir=parsed.data_dir,  # Only the flags matter here.
                              paths=config.Paths.resolve(parsed.model_dir or "unused"))
        except ValueError as e:
            raise TrainerFlagError(f"trainer flags: {e}") from None
    return parsed


def _parse(args: list[str]) -> flags.FlagValues:
    """The trainer's flags parsed from `args`; absl's complaint made one line."""
    parsed = trainer_flag_values()
    try:
        parsed(["trainer.main", *args])
    except flags.UnrecognizedFlagError as e:
        _, _, suggestions = str(e).partition("Did you mean: ")
        hint = f" (did you mean --{suggestions.rstrip(' ?')}?)" if suggestions else ""
        raise TrainerFlagError(f"trainer flag {e.flagvalue}: trainer.main has no such "
                               f"flag{hint}") from None
    except flags.Error as e:  # Mostly "flag --name=value: what is wrong with it".
        message = " ".join(str(e).split())
        raise TrainerFlagError(f"trainer {message}" if message.startswith("flag --")
                               else f"trainer flags: {message}") from None
    return parsed


def _check_shared_paths(parsed: flags.FlagValues, target: Target) -> None:
    """Raises TrainerFlagError for a folder flag the job's machines could not all reach."""
    if parsed.model_dir is None and target.needs_model_dir:
        raise TrainerFlagError(
            "trainer flag --model_dir is required here (there are no Vertex AI AIP_* folders "
            "to fall back on): add --model_dir=gs://BUCKET/PATH")
    if parsed.data_dir is None and not target.ships_configs:
        raise TrainerFlagError(
            "trainer flag --data_dir is required here: without it the trainer runs its "
            "built-in demo, which reads configs/, and this job's code has none")
    for name in SHARED_PATH_FLAGS:
        value = parsed[name].value
        if value == "":
            # The trainer would take an empty folder for none: the demo data, or no output.
            raise TrainerFlagError(f"trainer flag --{name}= is empty: give "
                                   f"{target.storage[0]}BUCKET/PATH or leave it out")
        problem = value and cloud_path_problem(value, target.storage)
        if problem:
            raise TrainerFlagError(f"trainer flag --{name}={value}: {problem}")


def _local_arg(arg: str, target: Target, repo: Path) -> str:
    """`arg`, checked, with a flagfile made the local path of the file the job will read."""
    if not arg.startswith("--") or arg == "--":
        raise TrainerFlagError(f"trainer arguments must be --name=value flags, got {arg!r}")
    if not arg.startswith("--flagfile="):
        return arg
    value = arg.removeprefix("--flagfile=")
    if not target.ships_configs:
        raise TrainerFlagError(
            f"trainer flag {arg}: this job's code has no {CONFIGS}/ (an sdist installs only "
            f"the Python packages): pass the flags themselves, or use an image")
    # The job runs from its copy of the repository, so that is where relative paths point.
    local = (repo / value).resolve()
    if not value or Path(value).is_absolute() or not local.is_relative_to(
            (repo / CONFIGS).resolve()):
        raise TrainerFlagError(
            f"trainer flag {arg}: the job has only the repository's {CONFIGS}/ folder: put the "
            f"file there and give its path from the repository, e.g. {CONFIGS}/gpu_1x.cfg")
    if not local.is_file():
        raise TrainerFlagError(f"trainer flag {arg}: there is no file {local}")
    return f"--flagfile={local}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], usage="%(prog)s [options] -- [trainer flags]")
    parser.add_argument("--prog", default="trainer_args", help="Launcher named in errors.")
    parser.add_argument("--sets", action="append", default=[], metavar="--NAME=VALUE",
                        help="A trainer flag the launcher sets itself (repeatable).")
    parser.add_argument("--needs_model_dir", action="store_true",
                        help="No AIP_* folders on the machines: --model_dir is required.")
    # Split by hand: argparse would take a trainer flag after `--` for one of its own.
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    options = parser.parse_args(argv[:split])
    try:
        check(argv[split + 1:],
              Target(sets=tuple(options.sets), needs_model_dir=options.needs_model_dir))
    except TrainerFlagError as e:
        print(f"{options.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
