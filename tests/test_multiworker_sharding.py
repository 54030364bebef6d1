"""MultiWorkerMirrored on two or three processes on 127.0.0.1, with fewer shards than workers.

With fewer shards of a split than input pipelines, the workers share it by
record: they must still train, and evaluate every validation example exactly
once. Records that predate the shard lengths in `records_info.json` are
counted at start-up. (The rest of MultiWorkerMirrored is in `test_multiworker.py`.)
"""

from __future__ import annotations

import json
import os

import pytest

from tests.record_fixtures import write_records
from tests.trainer_fixtures import finish_all


@pytest.mark.parametrize(
    "workers,num_shards,shard_lengths",
    [(2, {"train": 4, "validation": 1}, False), (3, {"train": 2, "validation": 2}, True)],
    ids=["2_workers_1_validation_shard_counted", "3_workers_2_shards_each"],
)
def test_workers_outnumbering_the_shards_train_and_evaluate_every_example_once(
        tmp_path, start_trainers, workers, num_shards, shard_lengths):
    # Records converted with --num_shards=4 --validation_fraction=0.25 have
    # one validation shard; the first case's predate shard_lengths, so they
    # are counted at start-up, before MultiWorkerMirrored starts TensorFlow.
    data = write_records(str(tmp_path / "data"), num_shards=num_shards,
                         shard_lengths=shard_lengths)
    model_dir = str(tmp_path / "model")
    processes = start_trainers(data.data_dir, model_dir, "--train_steps=2",
                               "--mode=train_and_eval", f"--batch_size={2 * workers}",
                               workers=workers)
    assert finish_all(processes) == [0] * workers, "".join(p.tail() for p in processes)
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    assert metrics["step"] == 2 and metrics["num_examples"] == 13
    for process in processes:
        assert "(13 examples)" in process.wait_for(r"eval at step 2: .*").group(0)
        assert bool(process.all(r"counting the records of the \d+ validation shards")) == (
            not shard_lengths)
        for split, shards in num_shards.items():
            if shards < workers:
                process.wait_for(rf"the {split} split has {shards} shards in .*, fewer than the "
                                 rf"{workers} input pipelines")
