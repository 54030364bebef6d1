"""A prepared TFDS image-classification data set as the input, instead of a folder.

Any data set with one `Image` and one `ClassLabel` feature will do (or
several, when its supervised keys say which). Class names are the
ClassLabel's, in its order, so labels keep TFDS's numbers. Its `train`
split is converted; its `validation` split, where it has one, becomes ours
(otherwise the stratified split applies); other splits (`test`) are left
out and reported.

The encoded images are copied, undecoded, into a local staging folder, one
file per example: from there the rest is the folder conversion's, so the
same checks, resizing, skip report, de-duplication and all-or-nothing shards
apply, and the worker processes stay without TensorFlow. Nothing is
downloaded unless asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator

from absl import logging
import tensorflow_datasets as tfds

from input_pipeline import records, storage
from input_pipeline.conversion import parallel
from input_pipeline.conversion.classes import InputLayout, SourceImage, unusable_class_name
from input_pipeline.conversion.options import ConversionError, ConvertOptions

FeaturePath = tuple[str, ...]  # keys from the top FeaturesDict down


@dataclasses.dataclass(frozen=True)
class TfdsInput:
    """Which TFDS data set to convert (the --tfds_* flags)."""

    name: str  # "plant_village", or with a version: "plant_village:1.0.2"
    data_dir: str | None = None  # None: TFDS's default (~/tensorflow_datasets, $TFDS_DATA_DIR)
    download: bool = False  # let TFDS download and prepare it when it is not prepared


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # TFDS warns of each folder it looks in that holds no data set: noise
    # before the one line that says what is missing.
    before = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _builder(source: TfdsInput) -> tuple[tfds.core.DatasetBuilder, bool]:
    """The data set's builder, and whether it is prepared; nothing is read or downloaded."""
    if source.data_dir and not source.download:
        try:
            storage.check_input_dir(source.data_dir, "--tfds_data_dir")
        except storage.PathError as error:
            raise ConversionError(str(error)) from error
    try:
        with _quiet():
            builder = tfds.builder(source.name, data_dir=source.data_dir)
            prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ConversionError(
            f"--tfds_name={source.name}: TFDS has no data set of that name or version; use a "
            "name from the TFDS catalogue (e.g. plant_village) or one prepared in "
            "--tfds_data_dir") from error
    except ValueError as error:  # e.g. a malformed name or version
        raise ConversionError(f"--tfds_name={source.name}: {storage.first_line(error)}") from error
    if not prepared and not source.download:
        raise ConversionError(
            f"--tfds_name={source.name} is not prepared in {builder.data_dir}: point "
            "--tfds_data_dir at the folder that holds it, or pass --tfds_download to let "
            "TFDS download and prepare it there")
    return builder, prepared


def _paths_of(features: tfds.features.FeaturesDict, kind: type,
              prefix: FeaturePath = ()) -> list[FeaturePath]:
    found = []
    for key, feature in features.items():
        if isinstance(feature, tfds.features.FeaturesDict):
            found += _paths_of(feature, kind, (*prefix, key))
        elif isinstance(feature, kind):
            found.append((*prefix, key))
    return found


def _pick(info: tfds.core.DatasetInfo, kind: type, position: int, what: str) -> FeaturePath:
    """The one feature of `kind`, or the one the supervised keys name."""
    paths = _paths_of(info.features, kind)
    keys = info.supervised_keys
    if len(paths) > 1 and isinstance(keys, tuple) and isinstance(keys[position], str):
        paths = [p for p in paths if "/".join(p) == keys[position]]
    if len(paths) != 1:
        # Sorted: TFDS gives a prepared data set's features in no fixed order.
        names = ", ".join(sorted("/".join(p) for p in _paths_of(info.features, kind))) or "none"
        raise ConversionError(
            f"--tfds_name={info.full_name} needs one {what} feature, it has {names} "
            f"(its features: {', '.join(sorted(info.features.keys()))}): not an image "
            "classification data set this converter can read")
    return paths[0]


def _class_names(info: tfds.core.DatasetInfo, label: FeaturePath) -> tuple[str, ...]:
    feature = info.features
    for key in label:
        feature = feature[key]
    names = tuple(feature.names)
    for name in names:
        if not name or unusable_class_name(name):
            raise ConversionError(
                f"--tfds_name={info.full_name} has a class name that cannot be a label "
                f"({name!r}: empty, not UTF-8 or with a control character)")
    return names


def _nested(path: FeaturePath, value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


def _get(example: dict[str, Any], path: FeaturePath) -> Any:
    for key in path:
        example = example[key]
    return example


def _splits(info: tfds.core.DatasetInfo) -> list[str]:
    if records.TRAIN not in info.splits:
        raise ConversionError(
            f"--tfds_name={info.full_name} has no {records.TRAIN} split (it has "
            f"{', '.join(info.splits)})")
    return [s for s in records.SPLITS if s in info.splits]


def _origin(builder: tfds.core.DatasetBuilder, splits: list[str]) -> dict[str, Any]:
    info = builder.info
    return {
        "name": info.name, "version": str(info.version), "data_dir": str(builder.data_dir),
        "splits": splits, "unused_splits": [s for s in info.splits if s not in splits],
        "license": info.redistribution_info.license, "citation": info.citation.strip(),
        "homepage": info.homepage, "description": info.description.strip(),
    }


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """A TFDS data set checked for conversion; its examples not read yet."""

    builder: tfds.core.DatasetBuilder
    prepared: bool  # else it is downloaded and prepared by `stage`
    image: FeaturePath
    label: FeaturePath
    class_names: tuple[str, ...]


def open_dataset(source: TfdsInput) -> TfdsDataset:
    """Finds the data set and its image and label features, before any output is written.

    Raises:
      ConversionError: unknown, unprepared (without `download`) or not an
        image classification data set.
    """
    builder, prepared = _builder(source)
    info = builder.info  # from the data set's files, or the builder's code
    label = _pick(info, tfds.features.ClassLabel, 1, "ClassLabel")
    return TfdsDataset(builder, prepared, _pick(info, tfds.features.Image, 0, "Image"), label,
                       _class_names(info, label))


def _prepare(dataset: TfdsDataset) -> None:
    try:
        dataset.builder.download_and_prepare()
    except Exception as error:  # noqa: BLE001 - TFDS's downloaders raise many types
        raise ConversionError(
            f"downloading --tfds_name={dataset.builder.info.full_name} failed "
            f"({storage.first_line(error)}): check the network, or prepare it by hand and "
            "pass --tfds_data_dir") from error


def stage(dataset: TfdsDataset, folder: str, options: ConvertOptions) -> InputLayout:
    """Copies the data set's encoded images into `folder`; returns them as the input.

    Downloads and prepares it first where `open_dataset` found it unprepared.

    Raises:
      ConversionError: the download failed, or the data set has no train split.
    """
    if not dataset.prepared:
        _prepare(dataset)
    builder, image, label, class_names = (
        dataset.builder, dataset.image, dataset.label, dataset.class_names)
    info = builder.info
    splits = _splits(info)
    own_validation = records.VALIDATION in splits
    sources, unusable = [], []
    total = sum(info.splits[s].num_examples for s in splits)
    with parallel.progress_bar(total, "reading TFDS", options.show_progress) as bar:
        for split in splits:
            os.makedirs(os.path.join(folder, split))
            examples = builder.as_dataset(split=split, shuffle_files=False,
                                          decoders=_nested(image, tfds.decode.SkipDecoding()))
            for index, example in enumerate(tfds.as_numpy(examples)):
                bar.update()
                path = os.path.join(folder, split, f"{index:08d}")
                with open(path, "wb") as f:
                    f.write(_get(example, image))
                number = int(_get(example, label))
                known = 0 <= number < len(class_names)
                entry = SourceImage(
                    path=path, rel=f"{split}/{index}", label=number if known else 0,
                    class_name=class_names[number] if known else "",
                    split=split if own_validation else None)
                if known:
                    sources.append(entry)
                else:  # TFDS marks unlabelled examples -1
                    unusable.append((entry, f"no label: {number} is not a class number"))
    return InputLayout(
        root=folder, class_names=class_names, sources=tuple(sources), unusable=tuple(unusable),
        non_class_folders=(), source=f"TFDS {info.full_name} in {builder.data_dir}",
        origin=_origin(builder, splits),
    )
