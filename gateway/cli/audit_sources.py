"""Which audit files a ``mailgate audit`` command reads: the files named, or ``--config FILE``.

Files named on the command line (current and rotated, ``.gz`` included, in any
order) or the ``[audit] path`` of a config with its rotated siblings; either way
put in chain order, with the current file and where its chain state belongs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gateway.audit import files as audit_files
from gateway.audit.files import AuditFileError
from gateway.errors import UsageError


@dataclass(frozen=True)
class Sources:
    paths: list[str]  # oldest first, files with records only
    current: str | None  # the file being written (for --follow and the chain state)
    state: str | None  # where the writer's chain state file belongs, beside `current`


def find_sources(args: argparse.Namespace) -> Sources:
    files: list[str] = list(getattr(args, "files", []) or [])
    if args.config and files:
        raise UsageError("give audit files or --config FILE, not both")
    if args.config:
        from gateway.config.toml import load

        path = load(args.config).audit.path
        if path == "-":
            raise UsageError(
                f'{args.config}: audit.path: found "-" (standard output), expected a file path; '
                "pass the files that captured the gateway's output instead"
            )
        found = audit_files.siblings(path)
        if not found:
            raise AuditFileError(
                f"{path}: no audit file there, nor rotated ones (audit.path of {args.config})"
            )
        current = path
    elif files:
        found = files
        current = None
    else:
        raise UsageError(
            "give audit files, or --config FILE to read [audit] path and its rotated files"
        )
    ordered = audit_files.chain_order(found)
    if current is None:
        current = ordered[-1] if ordered else files[-1]
    # where the writer keeps the head of what it wrote last (verify and head require it)
    return Sources(ordered, current, audit_files.state_path(current))


def sources_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="audit files: current and rotated, .gz included, in any order",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read [audit] path from this config and find its "
        "rotated files (instead of naming files)",
    )
