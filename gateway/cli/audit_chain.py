"""``mailgate audit verify | head``: check the hash chain, and print its head to keep elsewhere.

`verify` checks every link of the files given (see `gateway.audit.chain`), then the
end of the chain against an anchor: the chain state the gateway keeps beside its
audit file (required unless ``--no-state``) and, with ``--head SEQ:HASH``, a head
printed earlier by `head` and kept where the files' writers cannot reach. Anything
it could not check is a problem, said with the file and what was expected.

Files of several instances are several chains (`gateway.cli.audit_sources`): each is
checked on its own, against its own state, and the last line names those not intact.

Exit status: 0 intact (and anchored), 1 a problem found or an anchor that cannot be
checked (or a file that cannot be read), 2 a command line that does not say enough.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from gateway.audit import chain as audit_chain
from gateway.audit import files as audit_files
from gateway.audit.files import AuditFileError, Progress, Scan
from gateway.cli.audit_sources import Chain, find_sources, sources_arguments
from gateway.errors import UsageError
from gateway.terminal import printable

SHOW_BREAKS = 50
NO_STATE_ADVICE = (
    "; without it, records cut from the end of the chain cannot be detected (for files that "
    "never had one, such as standard-output captures, pass --no-state; --head SEQ:HASH checks "
    "against a head kept elsewhere)"
)


def _anchor(args: argparse.Namespace) -> audit_chain.Head | None:
    if args.head is None:
        return None
    head = audit_chain.parse_head(args.head)
    if head is None:
        raise UsageError(
            f"--head: found {args.head!r}, expected SEQ:HASH as printed by `mailgate audit head` "
            "(a sequence number of at least 1, a colon, 64 lowercase hex digits)"
        )
    return head


def cmd_verify(args: argparse.Namespace) -> int:
    anchor = _anchor(args)
    sources = find_sources(args)
    if not sources.several:
        lines, intact = _verify_chain(args, sources.chains[0], anchor)
        sys.stdout.write("".join(printable(line) + "\n" for line in lines))
        return 0 if intact else 1
    if anchor is not None:
        raise UsageError(
            "--head: names one chain's head, but the files hold "
            f"{len(sources.chains)} chains ({', '.join(c.current for c in sources.chains)}); "
            "verify one instance's files with it"
        )
    failed = []
    for chain in sources.chains:  # each instance's file is its own chain, with its own state
        try:
            lines, intact = _verify_chain(args, chain, None, named=True)
        except AuditFileError as exc:
            lines, intact = [f"FAILED: {chain.current}: {exc}"], False
        sys.stdout.write("".join(printable(line) + "\n" for line in lines))
        if not intact:
            failed.append(chain.current)
    count = len(sources.chains)
    summary = (
        f"FAILED: {len(failed)} of {count} chain(s) not intact: {', '.join(failed)}"
        if failed
        else f"OK: {count} chain(s) intact"
    )
    sys.stdout.write(printable(summary) + "\n")
    return 1 if failed else 0


def _verify_chain(
    args: argparse.Namespace,
    sources: Chain,
    anchor: audit_chain.Head | None,
    *,
    named: bool = False,
) -> tuple[list[str], bool]:
    """Check one chain: its links, then its end against its state and `anchor`; (lines, intact)."""
    check = audit_chain.ChainCheck(allow_restarts=args.allow_restarts)
    written: audit_chain.Head | None = None
    state_problem: str | None = None
    if not args.no_state and sources.state:
        try:  # read before the scan: the writer only moves it forward
            written = audit_files.read_state(sources.state)
        except audit_files.ChainStateError as exc:
            state_problem = str(exc).removeprefix(f"{sources.state}: ") + NO_STATE_ADVICE
        else:
            check.watch(written)
    if anchor is not None:
        check.watch(anchor)
    scan = Scan(sources.paths, Progress(sys.stderr))
    for path, number, text in scan:
        check.line(path, number, text)
    if check.verified == 0 and check.intact:
        raise AuditFileError(
            f"no audit records in {', '.join(sources.paths) or ', '.join(args.files or [])}"
        )
    if written is not None and sources.state:
        check.ends_at(written, sources.state)
    elif state_problem is not None and sources.state:
        check.unanchored(sources.state, state_problem)
    if anchor is not None:
        check.reaches(anchor, "--head")
    lines = [str(found) for found in check.breaks[:SHOW_BREAKS]]
    if check.problems > SHOW_BREAKS:
        lines.append(f"... and {check.problems - SHOW_BREAKS:,} more problem(s)")
    lines += _verify_notes(args, check, scan)
    files = f"{len(sources.paths)} file(s)" + (f" of {sources.current}" if named else "")
    if not check.intact:
        unanchored = check.problems == len(check.breaks) and all(
            b.kind == "no-state" for b in check.breaks
        )
        lines.append(
            f"FAILED: {check.problems:,} problem(s) in {check.verified:,} record(s) in {files}: "
            + (
                "the end of the chain cannot be checked"
                if unanchored
                else "the audit trail is not intact"
            )
        )
    else:
        assert check.first is not None and check.head is not None
        reached = f"; reaches --head seq {anchor.seq:,}" if anchor is not None else ""
        lines.append(
            f"OK: {check.verified:,} record(s) verified in {files}, seq {check.first.seq:,} to "
            f"{check.head.seq:,}{reached}; last hash {check.head.hash}"
        )
    return lines, check.intact


def _verify_notes(args: argparse.Namespace, check: audit_chain.ChainCheck, scan: Scan) -> list[str]:
    notes = [
        f"note: {path}:{number}: the last line is incomplete (still being written, or cut by a "
        "crash); not verified"
        for path, number in scan.incomplete
    ]
    if check.first is not None and check.first.seq > 1:
        notes.append(
            f"note: the chain starts at seq {check.first.seq}; the records before it are in files "
            "not given here"
        )
    if check.restarts and args.allow_restarts:
        notes.append(
            f"note: a new chain started {check.restarts} time(s) (allowed by --allow-restarts)"
        )
    if args.no_state:
        notes.append(
            "note: --no-state: the end of the chain was not checked against a chain state; "
            + (
                "records after the --head given could have been cut unnoticed"
                if args.head
                else "records cut from the end would not show"
            )
        )
    return notes


def cmd_head(args: argparse.Namespace) -> int:
    """Print the chain head (``SEQ:HASH``) of the newest record, for the operator to keep elsewhere."""
    sources = find_sources(args)
    if sources.several:
        raise UsageError(
            f"head: the files hold {len(sources.chains)} chains "
            f"({', '.join(c.current for c in sources.chains)}); give one instance's files"
        )
    if not sources.paths:
        raise AuditFileError(
            f"no audit records in {', '.join(args.files or []) or sources.current}"
        )
    written = None
    if not args.no_state and sources.state:  # first: the writer may add records meanwhile
        try:
            written = audit_files.read_state(sources.state)
        except audit_files.ChainStateError as exc:
            raise audit_files.ChainStateError(str(exc) + NO_STATE_ADVICE) from None
    newest = sources.paths[-1]
    text = audit_files.last_line(newest)
    sealed = audit_chain.unseal(text) if text is not None else None
    if sealed is None:
        raise AuditFileError(
            f'{newest}: the last complete line is not a sealed record; expected one ending in ,"seq":N,'
            '"prev":"<64 hex>","hash":"<64 hex>"} (check the files with `mailgate audit verify`)'
        )
    if not sealed.intact:
        raise AuditFileError(
            f"{newest}: the last record (seq {sealed.seq}) does not match its hash: it was edited "
            "(check the files with `mailgate audit verify`)"
        )
    head = audit_chain.Head(sealed.seq, sealed.hash)
    if written is not None and (
        written.seq > head.seq or (written.seq == head.seq and written.hash != head.hash)
    ):
        raise AuditFileError(
            f"{newest}: the last record is seq {head.seq} but the gateway wrote up to seq "
            f"{written.seq} ({sources.state}): records were cut from the end or rewritten; "
            "no head printed (check the files with `mailgate audit verify`)"
        )
    sys.stdout.write(audit_chain.format_head(head) + "\n")
    return 0


def _state_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-state",
        action="store_true",
        help="the files have no chain state beside them (standard-output captures, copies): "
        "do not require FILE.chain",
    )


def add_commands(
    sub: Any, guarded: Callable[[Callable[[argparse.Namespace], int]], Callable[..., int]]
) -> None:
    """Add ``verify`` and ``head`` to the ``mailgate audit`` subcommands."""
    verify = sub.add_parser(
        "verify", help="check the hash chain: deleted, changed, inserted or moved records"
    )
    sources_arguments(verify)
    verify.add_argument(
        "--allow-restarts",
        action="store_true",
        help="accept a new chain starting mid-stream (stdout logs: each start begins one)",
    )
    verify.add_argument(
        "--head",
        metavar="SEQ:HASH",
        help="a head printed earlier by `mailgate audit head`: the chain must hold it, unchanged",
    )
    _state_argument(verify)
    verify.set_defaults(func=guarded(cmd_verify))

    head = sub.add_parser(
        "head", help="print the chain head (SEQ:HASH) to keep elsewhere, for `verify --head`"
    )
    sources_arguments(head)
    _state_argument(head)
    head.set_defaults(func=guarded(cmd_head))
