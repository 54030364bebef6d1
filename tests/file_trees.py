"""Snapshots of a folder's files, for tests that check a run changed nothing."""

from __future__ import annotations

import hashlib
import os
import pathlib


def tree(root: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (or target of every link) below `root`.

    Empty folders are left out: a refused run may leave the output folder
    it made, which holds nothing that could look like data.
    """
    found = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as file:
                    found[rel] = hashlib.sha256(file.read()).hexdigest()
    return found
