"""The embedded default: `python -m trainer.main` with no --data_dir."""

import json
import os

from tests.trainer_fixtures import assert_ok, run_module


def test_default_run_uses_cached_synthetic_data_and_the_cpu_demo_config(tmp_path):
    cache, model_dir = tmp_path / "cache", tmp_path / "out"
    # The demo configuration except for length and size, so the test stays short.
    args = [f"--cache_dir={cache}", f"--model_dir={model_dir}", "--train_steps=2",
            "--steps_per_loop=1", "--image_size=32", "--width=8"]
    first = run_module("trainer.main", *args, timeout=600)
    assert_ok(first)
    log = first.stderr
    # The first lines say it is synthetic data and how to pass real data.
    opening = log[:log.index("training resnet18")]
    assert "BUILT-IN SYNTHETIC" in opening and "--data_dir" in opening
    assert "global batch 64" in log  # from configs/cpu_demo.cfg
    assert "decoded training images at 64 px in memory" in log  # --cache_decoded, at 2 x 32 px
    (records_dir,) = cache.glob("synthetic-*/records")
    info = json.loads((records_dir / "records_info.json").read_text())
    assert len(info["class_names"]) == 12
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == info["splits"]["validation"]["num_examples"]

    args[2] = "--train_steps=3"  # resume the same run one step further
    second = run_module("trainer.main", *args, timeout=600)
    assert_ok(second)
    assert "using cached synthetic records" in second.stderr
    assert "step 3/3" in second.stderr
    assert os.path.exists(model_dir / "export" / "saved_model.pb")
