"""The one way anything is written to disk: under a temporary name beside the target, then renamed over it.

A reader (a host listing LoRAs, a resumed run) sees the old file or the complete new one, never a half-written one.
New files follow the umask like any other file (tempfile.mkstemp would leave them 0600, unreadable to a web UI
running as another user).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from .errors import UserError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def wrapped_os_error(e: BaseException) -> OSError | None:
    """The OS error inside a library's own exception: safetensors (Rust) raises SafetensorError with "… (os error
    28)" in its text instead of an OSError, so a full disk would otherwise escape as a traceback."""
    if isinstance(e, OSError):
        return e
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def raise_as_disk_error(path: Path, e: BaseException) -> NoReturn:
    """Inside an except block: a failed write as one line (disk_error), anything else raised on unchanged."""
    os_error = wrapped_os_error(e)
    if os_error is None:
        raise e
    raise disk_error(path, os_error) from None


def disk_error(path: Path, e: OSError) -> UserError:
    """One line for a write that failed (disk full, read-only, permissions)."""
    if e.errno == errno.ENOSPC:
        return UserError(f"the disk is full: could not write {path}; free some space and run again")
    if e.errno == errno.ENAMETOOLONG:
        return UserError(f"the file name {path.name!r} is longer than the file system allows")
    return UserError(f"cannot write {path}: {e.strerror or e}")


def _free_name(path: Path) -> Path:
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise UserError(f"no free name beside {path}")


def _place_without_replacing(tmp: Path, path: Path) -> None:
    """tmp becomes path only if path is still free: a file that appeared there while a run worked (another run, the
    user) is the user's. The new file then goes to the next free name, and the error says where."""
    target = path
    while True:
        try:
            os.link(tmp, target)  # fails if target exists, unlike a rename
            tmp.unlink()
            break
        except FileExistsError:
            target = _free_name(path)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # no hard links here (FAT, some network shares): check, then rename; the window is the rename itself
            if os.path.lexists(target):
                target = _free_name(path)
            os.replace(tmp, target)
            break
    if target != path:
        raise UserError(f"{path} appeared while this run worked; it is kept as it is, and the new file was saved as "
                        f"{target}")


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o666, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is renamed onto `path`, on any failure removed. With
    replace=False a file found at `path` by then is kept (_place_without_replacing)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise disk_error(path, e) from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, mode & ~current_umask())
        if replace:
            os.replace(tmp, path)
        else:
            _place_without_replacing(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise_as_disk_error(path, e)


def write_atomic(path: str | Path, write: Callable[[Path], object], replace: bool = True) -> Path:
    """write(tmp_path) fills the temporary file; then it replaces `path` (or, replace=False, only takes it if free)."""
    with atomic_path(path, replace=replace) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def follow_umask(folder: str | Path) -> None:
    """Modes as for any file the user makes: safetensors writes 0600 whatever the umask, which would keep a model
    made by one user from a web UI running as another."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def remove_tree(path: str | Path) -> bool:
    """shutil.rmtree that also empties read-only folders (a model copied from a read-only share keeps its 0555
    folders, and without write permission on a folder its files cannot be unlinked); False if anything is left."""
    def writable_then_retry(func, name, _exc_info):
        for folder in (os.path.dirname(name), name):
            if os.path.isdir(folder) and not os.path.islink(folder):
                os.chmod(folder, 0o700)
        func(name)

    try:
        shutil.rmtree(path, onerror=writable_then_retry)
    except OSError:
        pass
    return not os.path.lexists(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed into place: complete or absent."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="." + path.name[:40] + ".", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise disk_error(path, e) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_as_disk_error(path, e)


def check_folder_writable(folder: str | Path) -> Path:
    """Said before the work, not after it: a folder that takes no new files. One not there yet is not made (a run
    that fails would leave it behind, empty): the folder it would be made in is probed instead, and returned."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write into {folder}: it is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise disk_error(folder, e) from None
    return folder


@contextmanager
def staged_files(folder: str | Path, replace: bool = True) -> Iterator[Path]:
    """A hidden folder inside `folder` to write a set of files into (a report with its plot and grids); they are
    moved into `folder` once all are written, so a failure part way leaves the earlier set whole, not mixed. With
    replace=False, files of those names that appeared meanwhile (another run into the same folder) are kept, and
    the new set goes to a free sibling folder, which the error names."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".staged.", suffix=".tmp", dir=folder))
    except OSError as e:
        raise disk_error(folder, e) from None
    try:
        yield stage
        files = sorted(stage.iterdir())
        folders = [f.name for f in files if (folder / f.name).is_dir()]
        if folders:  # checked for all before any is moved: a set is replaced whole or not at all
            raise UserError(f"{', '.join(folders)} in {folder} is a folder; the new files were not written")
        taken = [f.name for f in files if os.path.lexists(folder / f.name)]
        if taken and not replace:
            elsewhere = _free_name(folder)
            try:
                os.replace(stage, elsewhere)
                os.chmod(elsewhere, 0o777 & ~current_umask())  # made by mkdtemp: 0700 otherwise
            except OSError as e:
                raise disk_error(elsewhere, e) from None
            raise UserError(f"{', '.join(taken)} appeared in {folder} while this run worked; they are kept as they "
                            f"are, and this run's files were saved in {elsewhere}")
        for f in files:
            try:
                os.replace(f, folder / f.name)
            except OSError as e:
                raise disk_error(folder / f.name, e) from None
    finally:
        remove_tree(stage)
