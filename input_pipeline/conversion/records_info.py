"""What was converted: the content of records_info.json and the end-of-run summary.

The summary is made from the dict alone, so what the user reads at the end
of a run is what the trainer will read from records_info.json.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from input_pipeline.conversion.classes import InputLayout
from input_pipeline.conversion.options import ConvertOptions
from input_pipeline.conversion.planning import ShardPlan
from input_pipeline.conversion.writing import Tally

DATASET_NAME = "plant_seedlings"


def _channel_stats(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale from a (3, 256) histogram."""
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = histogram.reshape(3, 256).astype(np.float64)
    n = counts.sum(axis=1)
    mean = counts @ values / n
    var = counts @ (values**2) / n - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def build_info(
    layout: InputLayout,
    plan: Sequence[ShardPlan],
    options: ConvertOptions,
    tally: Tally,
) -> dict[str, Any]:
    """The dict that records_info.json holds (read back by `records.read_dataset_info`)."""
    mean, std = _channel_stats(tally.histogram)
    splits = {}
    for split, counts in tally.class_counts.items():
        splits[split] = {
            "num_examples": sum(counts.values()),
            "num_shards": sum(1 for shard in plan if shard.split == split),
            "shard_lengths": tally.shard_lengths[split],
            "class_counts": {n: counts[i] for i, n in enumerate(layout.class_names)},
        }
    origin = {"tfds": layout.origin} if layout.origin else {}
    return {
        "name": layout.origin.get("name", DATASET_NAME),
        "source": layout.source,
        **origin,
        "class_names": list(layout.class_names),
        "splits": splits,
        "image": {
            "format": "JPEG",
            "jpeg_quality": options.jpeg_quality,
            "max_image_side": options.max_image_side,
            "mean": mean,
            "std": std,
        },
        "seed": options.seed,
        "validation_fraction": options.validation_fraction,
        "skipped": [{"file": s.rel, "reason": reason} for s, reason in tally.skipped],
        "non_class_folders": list(layout.non_class_folders),
    }


def _summary_of_skipped(skipped: Sequence[dict[str, str]]) -> list[str]:
    # Reasons read "kind: detail"; one line per kind keeps a summary of a
    # thousand bad files readable (records_info.json lists every one).
    by_kind: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for entry in skipped:
        by_kind[entry["reason"].split(":")[0]].append(entry)
    lines = [f"skipped {len(skipped)} file(s)" + (":" if skipped else "")]
    for kind, entries in sorted(by_kind.items()):
        first = entries[0]
        lines.append(f"  {kind}: {len(entries)}, e.g. {first['file']} ({first['reason']})")
    return lines


def _summary_of_origin(origin: dict[str, Any]) -> list[str]:
    # The terms come first: a user must see them before using the data.
    left_out = f"; left out: {', '.join(origin['unused_splits'])}" if origin["unused_splits"] else ""
    validation = ("its own" if "validation" in origin["splits"]
                  else "none, so a stratified share of train (--validation_fraction)")
    lines = [f"TFDS splits read: {', '.join(origin['splits'])}{left_out}; validation: {validation}"]
    where = origin["homepage"] or "the data set's documentation"
    lines.append(f"licence: {origin['license'] or f'not stated by the data set: see {where}'}")
    if origin["citation"]:
        lines += ["cite:", *("  " + line for line in origin["citation"].splitlines())]
    return lines


def format_summary(info: dict[str, Any]) -> str:
    """The end-of-run report: examples per split and class, what was skipped."""
    splits = info["splits"]
    lines = [f"converted {info['source']}:"]
    for split, entry in splits.items():
        lines.append(
            f"  {split}: {entry['num_examples']} examples in {entry['num_shards']} shard(s)"
        )
    width = max(len(n) for n in info["class_names"] + ["class"])
    lines.append(f"  {'class':<{width}}" + "".join(f"{s:>12}" for s in splits))
    for name in info["class_names"]:
        counts = "".join(f"{e['class_counts'][name]:>12}" for e in splits.values())
        lines.append(f"  {name:<{width}}{counts}")
    lines += _summary_of_skipped(info["skipped"])
    for folder in info["non_class_folders"]:
        lines.append(f"not a class folder, not read: {folder['folder']}/ {folder['reason']}")
    if "tfds" in info:
        lines += _summary_of_origin(info["tfds"])
    image = info["image"]
    lines.append(f"train mean {image['mean']} std {image['std']} (RGB, 0..1)")
    return "\n".join(lines)
