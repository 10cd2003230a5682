"""Which audit files a ``mailgate audit`` command reads: the files named, or ``--config FILE``.

Files named on the command line (current and rotated, ``.gz`` included, in any
order; a quoted glob such as ``'/var/log/mailgate/*/audit.jsonl*'`` is expanded here)
or the ``[audit] path`` of a config with its rotated siblings. The files are grouped
into chains, one per instance (a current file and its rotated siblings: the same
folder and name, `gateway.audit.files.chain_groups`); each chain is put in chain
order, with its current file and where its chain state belongs.
"""

from __future__ import annotations

import argparse
import glob
import os
from dataclasses import dataclass

from gateway.audit import files as audit_files
from gateway.audit.files import AuditFileError
from gateway.errors import UsageError


@dataclass(frozen=True)
class Chain:
    """One writer's files: one instance's chain."""

    paths: list[str]  # oldest first, files with records only
    current: str  # the file being written (for --follow and the chain state)
    state: str  # where the writer's chain state file belongs, beside `current`


@dataclass(frozen=True)
class Sources:
    paths: list[str]  # every chain's files, chain after chain
    current: str | None  # the file being written (for --follow and the chain state)
    state: str | None  # where the writer's chain state file belongs, beside `current`
    chains: tuple[Chain, ...] = ()  # one per instance; `current` and `state` are the first's

    @property
    def several(self) -> bool:
        return len(self.chains) > 1


def _chain(found: list[str], current: str | None) -> Chain:
    ordered = audit_files.chain_order(found)
    if current is None:
        current = ordered[-1] if ordered else found[-1]
    return Chain(ordered, current, audit_files.state_path(current))


def _expand(files: list[str]) -> list[str]:
    """Globs the shell left alone (quoted, or from a hook) are expanded, without the chain
    state files they may catch; a name that exists, or matches nothing, is taken as it is
    (then `cannot open` names it); a file named twice is read once."""
    found: list[str] = []
    for name in files:
        matches = (
            sorted(m for m in glob.glob(name) if not m.endswith(audit_files.STATE_SUFFIX))
            if glob.has_magic(name) and not os.path.lexists(name)
            else []
        )
        found.extend(matches or [name])
    return list(dict.fromkeys(found))


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
        chains = [_chain(found, path)]
    elif files:
        chains = [_chain(group, None) for group in audit_files.chain_groups(_expand(files))]
    else:
        raise UsageError(
            "give audit files, or --config FILE to read [audit] path and its rotated files"
        )
    # where each writer keeps the head of what it wrote last (verify and head require it)
    first = chains[0]
    return Sources(
        [path for chain in chains for path in chain.paths],
        first.current,
        first.state,
        tuple(chains),
    )


def sources_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="audit files: current and rotated, .gz included, in any order; several "
        "instances' files (or a quoted glob) are merged in time order",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read [audit] path from this config and find its "
        "rotated files (instead of naming files)",
    )
