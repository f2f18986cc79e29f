"""Write a directory under a temporary name and rename it into place only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from att_report.errors import OutputExistsError, UsageError

PARTIAL_PREFIX = ".partial-"


def check_replaceable(target: Path, force: bool, is_ours: Callable[[Path], bool], kind: str,
                      flag: str = "--force") -> None:
    """Refuse to overwrite `target` unless `flag` was given and it holds only our own output; an empty folder is
    simply used; refuse a target that cannot be created at all. Callers run this before any slow work."""
    if not target.exists() and not target.is_symlink():
        _check_creatable(target)
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return  # an empty folder: the staged output takes its place
    if not is_ours(target):
        raise OutputExistsError(
            f"{target} exists and is not an att-report {kind} ({_describe(target)}); att-report never replaces it, "
            "so choose another output path."
        )
    if not force:
        raise OutputExistsError(f"{target} already holds an att-report {kind}; pass {flag} to replace it.")


def _describe(target: Path) -> str:
    """Say what is at an existing path, so a refusal names what it found."""
    if target.is_symlink():
        return "a symbolic link"
    if not target.is_dir():
        return "a file"
    names = sorted(entry.name for entry in target.iterdir())
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"a folder holding {shown}"


def _check_creatable(target: Path) -> None:
    """The nearest existing ancestor of `target` must be a directory this process may write in."""
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create {target}, because {ancestor} is a file; choose an output path in a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {target}, because {ancestor} is not writable; choose another output path.")


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces `target`, on any failure it is removed."""
    target = target.absolute()
    staging = target.parent / f"{PARTIAL_PREFIX}{target.name}.{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as error:
        raise UsageError(f"cannot create {target} ({error.strerror}); choose a path in a writable directory.")
    try:
        yield staging
        _fsync_tree(staging)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """Yield a sibling path to write one file at; on success it replaces `target`, on any failure it is removed."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f"{PARTIAL_PREFIX}{target.name}.{os.getpid()}"
    try:
        yield staging
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
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
