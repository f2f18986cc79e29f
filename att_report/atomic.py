"""Write a directory under a temporary name and rename it into place only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from att_report.errors import OutputExistsError

PARTIAL_PREFIX = ".partial-"


def check_replaceable(target: Path, force: bool, is_ours: Callable[[Path], bool], kind: str) -> None:
    """Refuse to overwrite `target` unless `force` is set and it holds only our own output."""
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise OutputExistsError(
            f"{target} already exists; choose another output path or pass --force to replace the {kind}."
        )
    if not target.is_dir() or not is_ours(target):
        raise OutputExistsError(
            f"{target} exists and is not an att-report {kind}; it is never deleted, so choose another output path."
        )


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces `target`, on any failure it is removed."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f"{PARTIAL_PREFIX}{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, moving an existing `target` aside first and deleting it after."""
    retired = None
    if target.exists():
        retired = target.parent / f"{PARTIAL_PREFIX}{target.name}.{os.getpid()}.old"
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
    staging.rename(target)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flush every file so a rename never publishes data still in the page cache only."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
