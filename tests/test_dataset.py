"""create_dataset end to end on the tiny records of `tests/record_fixtures.py`.

Over 400 lines because it is one file per module under test: the three
pipelines and the sharing of records among input pipelines are all reached
through `create_dataset`, on the same fixtures.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from input_pipeline import dataset as dataset_lib
from input_pipeline import mixing, records
from input_pipeline.dataset import create_dataset
from tests.record_fixtures import RecordSet, write_records

IMAGE_SIZE = 24


def input_context(num_pipelines: int, pipeline_id: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=num_pipelines,
    )


def image_colours(images: tf.Tensor, mean, std) -> np.ndarray:
    """Undoes the normalisation: the mean 0..255 colour of each image, [batch, 3]."""
    pixels = images.numpy().astype(np.float32) * np.array(std) + np.array(mean)
    return pixels.mean(axis=(1, 2)) * 255


def identify(rs: RecordSet, split: str, images: tf.Tensor, labels: tf.Tensor):
    """(example, label) for each real (non-padding) image of a batch."""
    found = []
    for colour, label in zip(image_colours(images, rs.mean, rs.std), labels.numpy(), strict=True):
        if label == dataset_lib.PADDING_LABEL:
            continue
        example = rs.nearest_example(split, colour)
        # Flat colours come back within JPEG rounding, far below the 12-level
        # spacing between examples.
        assert np.abs(np.subtract(example.colour, colour)).max() < 4
        found.append((example, int(label)))
    return found


def eval_batches(rs: RecordSet, batch_size: int, **kwargs) -> list[tuple[tf.Tensor, tf.Tensor]]:
    ds = create_dataset(
        rs.data_dir,
        records.VALIDATION,
        batch_size=batch_size,
        image_size=IMAGE_SIZE,
        training=False,
        **kwargs,
    )
    return list(ds)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_shapes_and_dtypes(tiny_records, dtype, training, cache_decoded):
    ds = create_dataset(
        tiny_records.data_dir,
        records.TRAIN,
        batch_size=4,
        image_size=IMAGE_SIZE,
        training=training,
        dtype=dtype,
        cache_decoded=cache_decoded,
    )
    assert ds.element_spec[0].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert ds.element_spec[0].dtype == dtype
    assert ds.element_spec[1] == tf.TensorSpec([4], tf.int32)
    # Eval: all 5 batches, so the padded last one is checked too.
    for images, labels in ds.take(5):
        assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == dtype
        assert labels.dtype == tf.int32
        assert np.all(np.isfinite(images.numpy().astype(np.float32)))


@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_training_labels_survive_augmentation_and_match_labels_txt(tiny_records, cache_decoded):
    class_names = records.read_labels(tiny_records.data_dir)
    ds = create_dataset(
        tiny_records.data_dir,
        records.TRAIN,
        batch_size=5,
        image_size=IMAGE_SIZE,
        training=True,
        seed=3,
        cache_decoded=cache_decoded,
    )
    seen = []
    # 8 batches of 5 from 18 examples: the stream goes on past an epoch.
    for images, labels in ds.take(8):
        for example, label in identify(tiny_records, records.TRAIN, images, labels):
            assert example.label == label
            assert example.filename.startswith(class_names[label] + "/")
            seen.append(example)
    assert len(seen) == 40
    # Drawn from across the split, not one shard (epochs blend in the
    # shuffle buffer, so an exact count would be flaky).
    assert len(set(seen)) >= 10


@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_each_example_of_a_batch_gets_its_own_augmentation(tmp_path, cache_decoded):
    # Every record holds the same asymmetric image, so only the augmentation
    # (drawn per example from the batch's seed) tells the outputs apart.
    rs = write_records(os.fspath(tmp_path))
    y, x = np.mgrid[:40, :48]
    pixels = np.stack([y * 6, x * 5, (x * y) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    record = records.make_example(buffer.getvalue(), height=40, width=48, filename="a/x.png",
                                  label=0, class_name=rs.class_names[0]).SerializeToString()
    for shard in range(rs.num_shards[records.TRAIN]):
        path = os.path.join(rs.data_dir, records.shard_name(records.TRAIN, shard, 4))
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(5):
                writer.write(record)
    ds = create_dataset(rs.data_dir, records.TRAIN, batch_size=8, image_size=IMAGE_SIZE,
                        training=True, seed=0, cache_decoded=cache_decoded)
    for images, _ in ds.take(2):
        assert len({image.tobytes() for image in images.numpy()}) >= 6


def train_batches(rs: RecordSet, num_batches: int, **kwargs) -> list[tuple[np.ndarray, ...]]:
    """The first training batches, in a fixed order (with one shard per split)."""
    ds = create_dataset(rs.data_dir, records.TRAIN, batch_size=4, image_size=IMAGE_SIZE,
                        training=True, seed=5, **kwargs)
    options = tf.data.Options()
    options.deterministic = True
    return [tuple(x.numpy() for x in b) for b in ds.with_options(options).take(num_batches)]


@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_randaugment_and_mixing_explicitly_off_is_the_default(few_shards, cache_decoded):
    # With its batches the same as before RandAugment and mixing existed
    # (checked once against the code before them).
    rs = few_shards(1, 1)
    default = train_batches(rs, 2, cache_decoded=cache_decoded)
    explicit = train_batches(rs, 2, cache_decoded=cache_decoded, randaugment=None,
                             mixing=mixing.MixOptions())  # mixes nothing
    for (images, labels), (explicit_images, explicit_labels) in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(images, explicit_images)
        np.testing.assert_array_equal(labels, explicit_labels)
        assert labels.dtype == np.int32


@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_randaugment_changes_colours_but_not_shapes_or_labels(tiny_records, cache_decoded):
    ds = create_dataset(tiny_records.data_dir, records.TRAIN, batch_size=4, image_size=IMAGE_SIZE,
                        training=True, seed=1, cache_decoded=cache_decoded, randaugment=(2, 9.0),
                        dtype=tf.float16)
    assert ds.element_spec == (tf.TensorSpec([4, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float16),
                               tf.TensorSpec([4], tf.int32))
    # The records are flat colours, which only RandAugment's colour ops
    # change (`identify` finds every plain crop within 4 levels of one).
    distances = []
    for images, labels in ds.take(3):
        assert np.isfinite(images.numpy()).all()
        assert set(labels.numpy()) <= set(range(4))
        colours = image_colours(tf.cast(images, tf.float32), tiny_records.mean, tiny_records.std)
        for colour in colours:
            example = tiny_records.nearest_example(records.TRAIN, colour)
            distances.append(np.abs(np.subtract(example.colour, colour)).max())
    assert max(distances) > 12, "RandAugment changed no colour"


@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_mixing_yields_soft_targets_that_match_the_mixed_colours(tiny_records, cache_decoded):
    ds = create_dataset(tiny_records.data_dir, records.TRAIN, batch_size=4, image_size=IMAGE_SIZE,
                        training=True, seed=2, dtype=tf.bfloat16, cache_decoded=cache_decoded,
                        mixing=mixing.MixOptions(1.0, 1.0))
    assert ds.element_spec == (tf.TensorSpec([4, IMAGE_SIZE, IMAGE_SIZE, 3], tf.bfloat16),
                               tf.TensorSpec([4, 4], tf.float32))
    mixed_rows = 0
    for images, targets in ds.take(3):
        targets = targets.numpy()
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        assert ((targets > 0).sum(axis=1) <= 2).all()
        mixed_rows += int((targets.max(axis=1) < 0.99).sum())
        # Red is 30 + 60 * label and blue 220 - 60 * label (record_fixtures):
        # mixup's blend and CutMix's pasted area weigh them as the targets do.
        label = targets @ np.arange(4)
        colours = image_colours(tf.cast(images, tf.float32), tiny_records.mean, tiny_records.std)
        # bfloat16 keeps 8 bits: about 1% of a normalised value.
        np.testing.assert_allclose(colours[:, 0], 30 + 60 * label, atol=6)
        np.testing.assert_allclose(colours[:, 2], 220 - 60 * label, atol=6)
    assert mixed_rows >= 4, "hardly any example was mixed"


def test_evaluation_refuses_randaugment_and_mixing(tiny_records):
    for augmentation in ({"randaugment": (2, 9.0)}, {"mixing": mixing.MixOptions(0.2)}):
        with pytest.raises(ValueError, match="augment training batches only"):
            eval_batches(tiny_records, batch_size=4, **augmentation)
    # Mixing that never mixes changes nothing, there either.
    _, labels = eval_batches(tiny_records, batch_size=4, mixing=mixing.MixOptions())[0]
    assert labels.dtype == tf.int32 and labels.shape == (4,)


def test_eval_covers_every_example_once_and_pads_with_minus_one(tiny_records):
    batches = eval_batches(tiny_records, batch_size=5)  # 13 examples -> 5 + 5 + 3 (+2 padding)
    assert len(batches) == 3
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    real = labels[labels != dataset_lib.PADDING_LABEL]
    expected = [e.label for e in tiny_records.examples[records.VALIDATION]]
    assert collections.Counter(real.tolist()) == collections.Counter(expected)
    np.testing.assert_array_equal(labels[-2:], [-1, -1])
    assert not np.any(batches[-1][0].numpy()[-2:]), "padding images should be zeros"

    found = [
        pair
        for images, labels in batches
        for pair in identify(tiny_records, records.VALIDATION, images, labels)
    ]
    assert sorted(e.filename for e, _ in found) == sorted(
        e.filename for e in tiny_records.examples[records.VALIDATION]
    )
    assert all(example.label == label for example, label in found)


def test_eval_batches_are_a_multiple_of_the_replicas_of_a_pipeline(tiny_records):
    # One pipeline feeding 2 replicas (MirroredStrategy): 13 examples in
    # batches of 2 are 7 batches; an 8th, all padding, lets the last step
    # feed both replicas instead of being dropped by tf.distribute.
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    ds = dataset_lib.create_dataset(
        tiny_records.data_dir, records.VALIDATION, batch_size=2, image_size=IMAGE_SIZE,
        training=False, input_context=context)
    labels = np.concatenate([labels.numpy() for _, labels in ds])
    assert len(labels) == 16
    assert sorted(labels[labels >= 0].tolist()) == sorted(
        e.label for e in tiny_records.examples[records.VALIDATION])


def test_eval_order_is_deterministic(tiny_records):
    first = [labels.numpy().tolist() for _, labels in eval_batches(tiny_records, batch_size=4)]
    second = [labels.numpy().tolist() for _, labels in eval_batches(tiny_records, batch_size=4)]
    assert first == second


def test_normalisation_uses_the_data_sets_mean_and_std(tiny_records):
    images, labels = eval_batches(tiny_records, batch_size=13)[0]
    for image, (example, _) in zip(
        images.numpy(), identify(tiny_records, records.VALIDATION, images, labels), strict=True
    ):
        expected = (np.array(example.colour) / 255 - tiny_records.mean) / tiny_records.std
        np.testing.assert_allclose(
            image, np.broadcast_to(expected, image.shape), atol=4 / 255 / min(tiny_records.std)
        )

    # An explicit `info` wins over the file's statistics.
    info = records.read_dataset_info(tiny_records.data_dir)
    identity = dataclasses.replace(info, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images, labels = eval_batches(tiny_records, batch_size=13, info=identity)[0]
    unnormalised = dataclasses.replace(tiny_records, mean=identity.mean, std=identity.std)
    assert len(identify(unnormalised, records.VALIDATION, images, labels)) == 13


def shard_of(rs: RecordSet, split: str, example) -> int:
    return rs.examples[split].index(example) % rs.num_shards[split]


def test_eval_shards_files_across_input_pipelines(tiny_records):
    # 3 validation shards over 2 pipelines: shards {0, 2} and {1}.
    per_pipeline = []
    for pipeline_id in range(2):
        batches = eval_batches(
            tiny_records, batch_size=4, input_context=input_context(2, pipeline_id)
        )
        found = [
            e
            for images, labels in batches
            for e, _ in identify(tiny_records, records.VALIDATION, images, labels)
        ]
        per_pipeline.append((len(batches), found))
    (batches0, found0), (batches1, found1) = per_pipeline
    assert {shard_of(tiny_records, records.VALIDATION, e) for e in found0} == {0, 2}
    assert {shard_of(tiny_records, records.VALIDATION, e) for e in found1} == {1}
    assert not set(found0) & set(found1)
    assert sorted(found0 + found1, key=lambda e: e.filename) == sorted(
        tiny_records.examples[records.VALIDATION], key=lambda e: e.filename
    )
    # 9 and 4 examples: both yield ceil(9 / 4) = 3 batches, so no worker waits.
    assert batches0 == batches1 == 3


@pytest.mark.parametrize("cache_decoded", [False, True], ids=["fused_decode", "cached"])
def test_training_shards_files_across_input_pipelines(tiny_records, cache_decoded):
    for pipeline_id, shards in [(0, {0, 2}), (1, {1, 3})]:
        ds = create_dataset(
            tiny_records.data_dir,
            records.TRAIN,
            batch_size=4,
            image_size=IMAGE_SIZE,
            training=True,
            input_context=input_context(2, pipeline_id),
            seed=0,
            cache_decoded=cache_decoded,
        )
        found = [
            e
            for images, labels in ds.take(4)
            for e, _ in identify(tiny_records, records.TRAIN, images, labels)
        ]
        assert {shard_of(tiny_records, records.TRAIN, e) for e in found} == shards


@pytest.fixture(scope="module")
def few_shards(tmp_path_factory):
    """`get(train_shards, validation_shards, shard_lengths=True)`: a RecordSet, written once."""
    written: dict[tuple[int, int, bool], RecordSet] = {}

    def get(train_shards: int, validation_shards: int, shard_lengths: bool = True) -> RecordSet:
        key = (train_shards, validation_shards, shard_lengths)
        if key not in written:
            written[key] = write_records(
                os.fspath(tmp_path_factory.mktemp("few_shards")),
                num_shards={records.TRAIN: train_shards, records.VALIDATION: validation_shards},
                shard_lengths=shard_lengths,
            )
        return written[key]

    return get


def in_record_order(rs: RecordSet, split: str) -> list:
    """The examples of `split` as the shards hold them, shard after shard."""
    num_shards = rs.num_shards[split]
    return [e for shard in range(num_shards) for e in rs.examples[split][shard::num_shards]]


@pytest.mark.parametrize("shard_lengths", [True, False], ids=["shard_lengths", "counted"])
@pytest.mark.parametrize(
    "num_shards,num_pipelines,replicas_per_pipeline",
    [(1, 2, 1), (1, 3, 1), (2, 3, 1), (1, 2, 2), (2, 3, 2)],
)
def test_eval_with_fewer_shards_than_pipelines_covers_every_example_once(
    few_shards, num_shards, num_pipelines, replicas_per_pipeline, shard_lengths
):
    rs = few_shards(4, num_shards, shard_lengths)
    found, num_batches = [], []
    for pipeline_id in range(num_pipelines):
        context = tf.distribute.InputContext(
            num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
            num_replicas_in_sync=num_pipelines * replicas_per_pipeline)
        batches = eval_batches(rs, batch_size=2, input_context=context)
        num_batches.append(len(batches))
        for images, labels in batches:
            padding = labels.numpy() == dataset_lib.PADDING_LABEL
            assert not np.any(images.numpy()[padding]), "padding images should be zeros"
            found += [e for e, _ in identify(rs, records.VALIDATION, images, labels)]
    assert sorted(e.filename for e in found) == sorted(
        e.filename for e in rs.examples[records.VALIDATION])
    # 13 examples dealt one at a time: at most ceil(13 / n) per pipeline, in
    # batches of 2, and whole steps for its replicas.
    most = math.ceil(math.ceil(13 / num_pipelines) / 2)
    expected = math.ceil(most / replicas_per_pipeline) * replicas_per_pipeline
    assert num_batches == [expected] * num_pipelines


def test_eval_pipelines_left_without_records_yield_padding_in_step(tmp_path):
    rs = write_records(os.fspath(tmp_path), examples_per_split={records.VALIDATION: 2},
                       num_shards={records.VALIDATION: 1})
    labels = [
        np.concatenate([labels.numpy() for _, labels in eval_batches(
            rs, batch_size=2, input_context=input_context(3, pipeline_id))])
        for pipeline_id in range(3)
    ]
    assert [x.tolist() for x in labels] == [[0, -1], [1, -1], [-1, -1]]


@pytest.mark.parametrize("num_shards,num_pipelines", [(1, 2), (2, 3)])
def test_training_with_fewer_shards_than_pipelines_shards_by_record(
    few_shards, caplog, num_shards, num_pipelines
):
    # The cached path reads through the same interleave.
    rs = few_shards(num_shards, 1)
    order = in_record_order(rs, records.TRAIN)
    for pipeline_id in range(num_pipelines):
        ds = create_dataset(
            rs.data_dir, records.TRAIN, batch_size=4, image_size=IMAGE_SIZE, training=True,
            input_context=input_context(num_pipelines, pipeline_id), seed=0)
        # 60 draws from 6 or 9 records: each shows up, however shuffled.
        found = {e for images, labels in ds.take(15)
                 for e, _ in identify(rs, records.TRAIN, images, labels)}
        assert found == set(order[pipeline_id::num_pipelines])
    assert (f"the train split has {num_shards} shards in {rs.data_dir}, fewer than the "
            f"{num_pipelines} input pipelines: each reads the whole split") in caplog.text
    assert {r.levelname for r in caplog.records if "input pipelines" in r.getMessage()} == {
        "WARNING"}


def test_training_refuses_an_input_pipeline_left_without_records(tiny_records):
    with pytest.raises(ValueError) as error:
        create_dataset(tiny_records.data_dir, records.TRAIN, batch_size=2, image_size=IMAGE_SIZE,
                       training=True, input_context=input_context(20, 0))
    message = str(error.value)
    assert "\n" not in message
    assert re.fullmatch(
        r"the train split in \S+ has 18 examples in 4 shards, which leaves input pipeline 18 "
        r"of 20 none to train on: convert more images or train on fewer workers or hosts",
        message), message


def test_shard_lengths_that_do_not_match_the_shards_are_a_clear_error(tmp_path):
    rs = write_records(os.fspath(tmp_path))
    path = os.path.join(rs.data_dir, records.INFO_FILE)
    with open(path) as f:
        raw = json.load(f)
    raw["splits"][records.VALIDATION]["shard_lengths"] = [5, 4]
    records.write_json(path, raw)
    with pytest.raises(ValueError) as error:
        eval_batches(rs, batch_size=2)
    assert re.fullmatch(
        r"found 3 validation shards in \S+ but records_info.json has shard_lengths for 2: an "
        r"interrupted conversion or copy\? Convert or copy again", str(error.value)
    ), str(error.value)


def test_with_shard_lengths_counts_only_the_splits_dataset_info_lacks(tmp_path, monkeypatch):
    old = write_records(os.fspath(tmp_path / "old"), shard_lengths=False)
    new = write_records(os.fspath(tmp_path / "new"))
    old_info, new_info = (records.read_dataset_info(rs.data_dir) for rs in (old, new))
    assert old_info.shard_lengths == {}
    assert new_info.shard_lengths == {records.TRAIN: (5, 5, 4, 4), records.VALIDATION: (5, 4, 4)}
    assert records.with_shard_lengths(old_info, old.data_dir) == new_info

    # Lengths already listed are checked against the files, never counted again.
    def no_counting(path):
        raise AssertionError(f"counted {path}")

    with monkeypatch.context() as patched:
        patched.setattr(records, "_count_records", no_counting)
        assert records.with_shard_lengths(new_info, new.data_dir) == new_info

    # A shard cut short (an interrupted copy) is named.
    shard = os.path.join(old.data_dir, records.shard_name(records.VALIDATION, 1, 3))
    os.truncate(shard, os.path.getsize(shard) - 10)
    with pytest.raises(ValueError, match=rf"^{re.escape(shard)} ends inside its record 4: an "
                                         "interrupted conversion or copy"):
        records.with_shard_lengths(old_info, old.data_dir)


def test_find_corrupt_shards_names_each_damaged_shard_and_why(tmp_path):
    rs = write_records(os.fspath(tmp_path))
    shard = [os.path.join(rs.data_dir, records.shard_name(records.TRAIN, i, 4)) for i in range(4)]
    # Zero bytes inside the first record's payload: its CRC no longer matches.
    with open(shard[1], "r+b") as f:
        f.seek(40)
        f.write(bytes(20))
    # A well-formed record whose image bytes are not an image.
    with tf.io.TFRecordWriter(shard[3]) as writer:
        writer.write(records.make_example(
            b"not a jpeg", height=8, width=8, filename="x.png", label=0,
            class_name=rs.class_names[0]).SerializeToString())
    corrupt = records.find_corrupt_shards(rs.data_dir, records.TRAIN)
    assert [entry.split(" (")[0] for entry in corrupt] == [shard[1], shard[3]]
    assert all(entry.endswith(")") and "\n" not in entry for entry in corrupt), corrupt
    assert records.find_corrupt_shards(rs.data_dir, records.VALIDATION) == []


def test_missing_data_dir_is_a_clear_error(tmp_path):
    missing = os.fspath(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=rf"{missing}.*python -m input_pipeline.make_tfrecords"
    ):
        create_dataset(missing, records.TRAIN, batch_size=2, image_size=IMAGE_SIZE, training=True)


def test_no_shards_is_a_clear_error(tiny_records, tmp_path):
    data_dir = os.fspath(tmp_path)
    shutil.copy(os.path.join(tiny_records.data_dir, records.INFO_FILE), data_dir)
    with pytest.raises(
        FileNotFoundError, match=r"no train shards match .*python -m input_pipeline.make_tfrecords"
    ):
        create_dataset(data_dir, records.TRAIN, batch_size=2, image_size=IMAGE_SIZE, training=True)


def test_missing_shard_is_a_clear_error(tmp_path):
    rs = write_records(os.fspath(tmp_path))
    os.remove(os.path.join(rs.data_dir, records.shard_name(records.VALIDATION, 1, 3)))
    with pytest.raises(ValueError, match=r"found 2 validation shards .* lists 3"):
        create_dataset(
            rs.data_dir, records.VALIDATION, batch_size=2, image_size=IMAGE_SIZE, training=False
        )


def test_reads_records_on_gcs(gcs_emulator, gcs_dir):
    # In a subprocess: TF's gs:// client takes the emulator's proxy settings
    # from the environment once per process (see tests/gcs_fixtures.py).
    code = textwrap.dedent(
        """
        import sys
        from input_pipeline import records
        from input_pipeline.dataset import create_dataset
        from tests.record_fixtures import write_records

        rs = write_records(sys.argv[1], shard_lengths=False)
        common = dict(batch_size=4, image_size=8)
        batches = list(create_dataset(rs.data_dir, records.VALIDATION, training=False, **common))
        real = sum(int((labels >= 0).numpy().sum()) for _, labels in batches)
        train = create_dataset(rs.data_dir, records.TRAIN, training=True, **common)
        info = records.with_shard_lengths(records.read_dataset_info(rs.data_dir), rs.data_dir)
        print(real, next(iter(train))[0].shape, info.shard_lengths[records.VALIDATION])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, gcs_dir],
        env={**gcs_emulator.subprocess_env(), "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + gcs_emulator.diagnostics()
    assert proc.stdout.split() == ["13", "(4,", "8,", "8,", "3)", "(5,", "4,", "4)"]
