"""Whether the spool's folders and files can be trusted, and opening them without following links.

Everything in the spool is believed: an envelope says whom mailgate sends as and
to, with the upstream's credentials; a body is sent as it is. So only the
gateway's user may be able to change it, and nothing in it may point elsewhere:

- the spool root (``queue.path``, its symbolic links resolved) and every state
  folder: folders (a state folder not a symbolic link: moves between states are
  renames within one file system), owned by the spool's user or root, not
  writable by group or others;
- every folder above the root: owned by the spool's user or root, not writable by
  group or others unless sticky (like ``/tmp``: then nobody else can rename what
  is ours in it);
- a message folder and its files are opened without following symbolic links
  (``O_NOFOLLOW``, the folder's files through its descriptor) and refused unless
  they are a folder and regular files with one link, owned by the spool's user
  or root, not writable by group or others (so not a FIFO that would block, not a
  hard link to someone else's file).

The spool's user is the effective user; when that is root, the owner of the spool
root (so ``sudo mailgate queue list`` reads the service account's spool). No reactor.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import BinaryIO

from gateway.errors import MailgateError

KEY = "queue.path"
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class SpoolUnsafe(MailgateError):
    """The spool's folders let someone else change the mail; `problems` names each folder."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SpoolFileRefused(OSError):
    """A message folder or file that is not what mailgate writes (a link, a FIFO, not ours)."""


def spool_owner(root: str) -> int:
    """The uid the spool must belong to (see the module's docstring)."""
    euid = os.geteuid()
    if euid != 0:
        return euid
    try:
        return os.stat(root).st_uid
    except OSError:
        return 0


def _owner_text(owner: int) -> str:
    return f"uid {owner} (the user mailgate runs as) or root" if owner else "root"


def _mode_problem(path: str, info: os.stat_result, owner: int, *, sticky_ok: bool) -> str | None:
    if info.st_uid not in (owner, 0):
        return f"{KEY}: {path}: found owner uid {info.st_uid}, expected {_owner_text(owner)}"
    writable = info.st_mode & _WRITABLE_BY_OTHERS
    if writable and not (sticky_ok and info.st_mode & stat.S_ISVTX):
        who = " and ".join(
            name
            for bit, name in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others"))
            if writable & bit
        )
        mode = stat.S_IMODE(info.st_mode)
        expected = (
            "a folder only its owner can write, or one with the sticky bit"
            if sticky_ok
            else "a folder only its owner can write"
        )
        return f"{KEY}: {path}: found mode {mode:04o} (writable by {who}), expected {expected} (chmod go-w {path})"
    return None


def _parents(path: str) -> list[str]:
    found: list[str] = []
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return found
        found.append(parent)
        path = parent


def folder_problems(root: str, states: Iterable[str], owner: int) -> list[str]:
    """Every reason the spool at `root` cannot be trusted ([] when it can); missing folders pass."""
    real = os.path.realpath(root)
    where_named = os.path.realpath(os.path.dirname(os.path.abspath(root)))
    problems: list[str] = []
    seen: set[str] = set()
    for parent in [*_parents(real), where_named, *_parents(where_named)]:
        if parent in seen or parent == real:
            continue
        seen.add(parent)
        try:
            info = os.stat(parent)
        except OSError:
            continue
        problem = _mode_problem(parent, info, owner, sticky_ok=True)
        if problem is not None:
            problems.append(problem.replace(f"{parent}:", f"{parent} (above the spool):", 1))
    for folder, is_state in [(real, False), *((os.path.join(real, s), True) for s in states)]:
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{KEY}: {folder}: cannot be examined ({exc.strerror})")
            continue
        if stat.S_ISLNK(info.st_mode) and is_state:
            problems.append(
                f"{KEY}: {folder}: found a symbolic link, expected a folder (every state folder "
                "on the spool's own file system, so moving a message is one rename)"
            )
            continue
        if not stat.S_ISDIR(info.st_mode):
            problems.append(f"{KEY}: {folder}: found something else, expected a folder")
            continue
        problem = _mode_problem(folder, info, owner, sticky_ok=False)
        if problem is not None:
            problems.append(problem)
    return problems


def _refuse(path: str, info: os.stat_result, owner: int, *, folder: bool) -> None:
    kind = "folder" if folder else "regular file"
    if folder and not stat.S_ISDIR(info.st_mode) or not folder and not stat.S_ISREG(info.st_mode):
        raise SpoolFileRefused(errno.EPERM, f"not a {kind}", path)
    if not folder and info.st_nlink != 1:
        raise SpoolFileRefused(errno.EPERM, f"{info.st_nlink} hard links, expected 1", path)
    if info.st_uid not in (owner, 0):
        raise SpoolFileRefused(
            errno.EPERM, f"owned by uid {info.st_uid}, expected {_owner_text(owner)}", path
        )
    if info.st_mode & _WRITABLE_BY_OTHERS:
        raise SpoolFileRefused(errno.EPERM, "writable by group or others", path)


def _open(path: str, flags: int, dir_fd: int | None = None, shown: str = "") -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise SpoolFileRefused(
                errno.ELOOP, "a symbolic link, never followed", shown or path
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise SpoolFileRefused(errno.ENOTDIR, "not a folder", shown or path) from None
        raise


def open_folder(path: str, owner: int | None = None) -> int:
    """A descriptor of the message folder at `path` (its last component never a link).

    With `owner`, also refused unless owned by it (or root) and not writable by others.
    """
    fd = _open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        info = os.fstat(fd)
        _refuse(path, info, owner if owner is not None else info.st_uid, folder=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(
    folder_fd: int, name: str, owner: int | None = None, *, shown: str = "", write: bool = False
) -> int:
    """A read (or, with `write`, read and append) descriptor of the regular file `name` in the
    folder `folder_fd` (never a link).

    Opened non-blocking, so a FIFO put there cannot hang the caller, then checked.
    """
    mode = os.O_RDWR | os.O_APPEND if write else os.O_RDONLY
    fd = _open(name, mode | os.O_NONBLOCK, dir_fd=folder_fd, shown=shown)
    try:
        info = os.fstat(fd)
        _refuse(shown or name, info, owner if owner is not None else info.st_uid, folder=False)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(folder_fd: int, name: str, owner: int, limit: int, *, shown: str = "") -> bytes:
    """The whole of a small regular file in the folder (`SpoolFileRefused` beyond `limit` octets)."""
    fd = open_file(folder_fd, name, owner, shown=shown)
    try:
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data
            data += chunk
        raise SpoolFileRefused(errno.EFBIG, f"larger than {limit} octets", shown or name)
    finally:
        os.close(fd)


def open_body(path: str) -> BinaryIO:
    """The body file at `path` for reading: neither it nor its message folder may be a link."""
    folder, name = os.path.split(path)
    folder_fd = open_folder(folder)
    try:
        fd = open_file(folder_fd, name, shown=path)
    finally:
        os.close(folder_fd)
    return os.fdopen(fd, "rb")
