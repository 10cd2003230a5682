"""``mailgate audit search | show | summary``, and the wiring of every ``mailgate audit`` command.

Every subcommand reads audit files named on the command line (current and
rotated, ``.gz`` included, in any order; several instances' files are merged in
time order) or the ``[audit] path`` of ``--config FILE``
with its rotated siblings (`gateway.cli.audit_sources`). Files are streamed one
line at a time. ``verify`` and ``head`` live in `gateway.cli.audit_chain`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from gateway.audit import files as audit_files
from gateway.audit import query as audit_query
from gateway.audit import report as audit_report
from gateway.audit import report_html, report_text
from gateway.audit import view as audit_view
from gateway.audit.events import Event
from gateway.audit.files import AuditFileError, Progress, Scan
from gateway.cli import audit_chain as audit_chain_cli
from gateway.cli.audit_sources import Sources, find_sources, sources_arguments
from gateway.errors import UsageError
from gateway.terminal import printable

BAD_LINES_PER_FILE = 10


class Records:
    """Parsed records from a scan; lines that are not JSON are reported on stderr and skipped."""

    def __init__(self, sources: Sources, stderr: IO[str]) -> None:
        progress = Progress(stderr)
        self.scan = Scan(sources.paths, progress)
        # several instances: each chain scanned in its order, the lines merged in time order
        self.scans = [Scan(chain.paths, progress) for chain in sources.chains]
        self.lines: Iterable[tuple[str, int, str]] = (
            audit_files.merged(self.scans) if len(self.scans) > 1 else self.scan
        )
        self.stderr = stderr
        self.bad = 0
        self._bad_in: dict[str, int] = {}

    def __iter__(self) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
        return self.parsed(self.lines, None)

    def where(
        self, wanted: Callable[[str], bool] | None
    ) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
        return self.parsed(self.lines, wanted)

    def parsed(
        self, lines: Iterable[tuple[str, int, str]], wanted: Callable[[str], bool] | None
    ) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
        for path, number, text in lines:
            if not text.strip():
                continue
            if not (text.startswith("{") and text.endswith("}")):  # cheap: every line is looked at
                self._complain(path, number, ValueError("a record is one JSON object on one line"))
                continue
            if wanted is not None and not wanted(
                text
            ):  # cheaper than parsing lines nobody asked for
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                self._complain(path, number, exc)
                continue
            if isinstance(record, dict):
                yield path, number, text, record

    def _complain(self, path: str, number: int, exc: ValueError) -> None:
        self.bad += 1
        count = self._bad_in[path] = self._bad_in.get(path, 0) + 1
        if count > BAD_LINES_PER_FILE:
            raise AuditFileError(
                f"{path}: not an audit log (more than {BAD_LINES_PER_FILE} lines are not "
                "JSON records)"
            )
        self.stderr.write(
            printable(f"mailgate: {path}:{number}: not a JSON record ({exc}); skipped") + "\n"
        )

    @property
    def status(self) -> int:
        return 1 if self.bad else 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _window(args: argparse.Namespace) -> audit_query.Window:
    now = _now()
    since = audit_query.parse_time("--since", args.since, now) if args.since else None
    until = audit_query.parse_time("--until", args.until, now) if args.until else None
    if since and until and since >= until:
        raise UsageError(f"--since {args.since} is not before --until {args.until}")
    return audit_query.Window(since, until)


def _unicode(stream: IO[str]) -> bool:
    return (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"


# --- search -------------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    query = audit_query.MessageFilter.build(
        _window(args),
        senders=args.sender,
        recipients=args.recipient,
        clients=args.client,
        rules=args.rule,
        upstreams=args.upstream,
        outcomes=args.outcome,
        sessions=args.session,
    )
    sources = find_sources(args)
    if args.follow and sources.several:
        raise UsageError(
            "--follow reads one instance's current file; give one instance's files "
            f"(found {len(sources.chains)} chains: {', '.join(c.current for c in sources.chains)})"
        )
    records = Records(sources, sys.stderr)
    out = sys.stdout
    table = (
        None
        if args.json
        else audit_view.MessageTable.fitting(shutil.get_terminal_size((200, 24)).columns)
    )
    if table is not None:
        out.write(table.header() + "\n")
    matched = 0

    def emit(text: str, record: dict[str, Any]) -> None:
        nonlocal matched
        if query.matches(record):
            matched += 1
            # --json: a record as written is printable ASCII, so only an edited line changes here
            # (its controls become JSON \u escapes: the same JSON value, inert on a terminal)
            out.write((printable(text) if table is None else table.row(record)) + "\n")
            if args.follow:
                out.flush()

    def wanted(text: str) -> bool:
        return audit_query.RESULT in text and query.window.may_contain(text)

    if args.follow:
        _stop_on_signals()
    try:
        for _, _, text, record in records.where(wanted):
            emit(text, record)
        if args.follow and sources.current:
            out.flush()
            live = audit_files.follow(sources.current, records.scan.positions.get(sources.current))
            for _, _, text, record in records.parsed(live, wanted):
                emit(text, record)
    except KeyboardInterrupt:
        if not args.follow:
            raise
        return records.status  # Ctrl-C is how --follow ends: not a failure
    if table is not None and out.isatty():
        sys.stderr.write(f"{matched:,} message(s)\n")
    return records.status


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """--follow ends on Ctrl-C or SIGTERM, even where SIGINT was inherited as ignored
    (a shell's background job, a supervisor): both become a clean stop."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (embedded): leave the handlers alone
        pass


# --- show ---------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    wanted_id = args.session_id.strip().lower()
    if len(wanted_id) < 4 or not all(c.isalnum() or c in "-_" for c in wanted_id):
        raise UsageError(
            f"SESSION_ID: found {args.session_id!r}, expected a session id (or its first 4+ "
            "characters) as in the session_id field"
        )
    sources = find_sources(args)
    records = Records(sources, sys.stderr)
    needle = f'"session_id":"{wanted_id}'
    found: list[tuple[str, int, dict[str, Any]]] = []
    texts: list[str] = []
    ids: set[str] = set()
    for path, number, text, record in records.where(lambda text: needle in text):
        session = next(
            (s.lower() for s in audit_query.sessions_of(record) if s.lower().startswith(wanted_id)),
            None,
        )
        if session is None:
            continue
        ids.add(session)
        if len(ids) > 1:
            if len(ids) >= 5:
                break
            continue
        found.append((path, number, record))
        texts.append(text)
    if len(ids) > 1:
        raise UsageError(
            f"SESSION_ID: {args.session_id!r} matches several sessions ({', '.join(sorted(ids))}"
            f"{', ...' if len(ids) >= 5 else ''}); give more characters"
        )
    if not found:
        raise AuditFileError(
            f"session {args.session_id}: not found in {', '.join(sources.paths) or 'the files'}"
        )
    if args.json:
        sys.stdout.write("".join(printable(t) + "\n" for t in texts))
    else:
        sys.stdout.write(audit_view.timeline(ids.pop(), found) + "\n")
    return records.status


# --- summary ------------------------------------------------------------------------------------

_SESSION_EVENTS = (Event.SESSION_OPENED, Event.SESSION_DENIED)
_SUMMARY_EVENTS = (audit_query.RESULT, Event.MAIL_REFUSED, *_SESSION_EVENTS)


def cmd_summary(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UsageError(f"--top: found {args.top}, expected a number of rows of at least 1")
    window = _window(args)
    sources = find_sources(args)
    records = Records(sources, sys.stderr)
    summary = audit_report.Summary(window)

    def triage(text: str) -> bool:
        """Parse only what the summary needs: sessions are counted from the line's head alone."""
        head = audit_query.peek(text)
        if head is None:  # not laid out as the gateway writes it: parse it and let Summary decide
            return any(name in text for name in _SUMMARY_EVENTS)
        when, event = head
        if event in _SESSION_EVENTS:
            summary.count_session(event, when)
            return False
        return event in _SUMMARY_EVENTS and window.admits(when)

    for _, _, _, record in records.where(triage):
        summary.add(record)
    if args.html:
        page = report_html.render_html(summary, sources.paths, _now(), top=args.top)
        try:
            with open(args.html, "w", encoding="utf-8") as handle:
                handle.write(page)
        except OSError as exc:
            raise AuditFileError(
                f"{args.html}: cannot write the HTML page: {exc.strerror}"
            ) from None
        print(
            f"wrote {args.html}: {summary.messages:,} message(s) from {len(sources.paths)} file(s)"
        )
    else:
        width = min(shutil.get_terminal_size((100, 24)).columns, 120)
        print(
            report_text.render_text(
                summary, width=width, unicode=_unicode(sys.stdout), top=args.top
            )
        )
    return records.status


# --- wiring -------------------------------------------------------------------------------------


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="from this time: ISO (2026-11-28T13:00Z; UTC when no zone) or an age (30m, 2h, 7d)",
    )
    parser.add_argument(
        "--until", metavar="TIME", help="up to (not including) this time, as for --since"
    )


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # `mailgate audit search ... | head`: the reader has had enough
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return run


def add_commands(subparsers: Any) -> None:
    """Add ``mailgate audit ...`` to the top-level parser's subcommands."""
    audit = subparsers.add_parser(
        "audit",
        help="review audit logs: search, show, summary, verify, head",
        description="Review audit logs (current and rotated files, .gz "
        "included): search, show, summary, verify, head.",
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")

    search = sub.add_parser("search", help="messages matching filters, as a table or JSON lines")
    sources_arguments(search)
    _window_arguments(search)
    many = {"action": "append", "default": []}
    search.add_argument(
        "--sender", metavar="ADDR", help="envelope sender; * and ? are wildcards", **many
    )
    search.add_argument(
        "--recipient", metavar="ADDR", help="any recipient; * and ? are wildcards", **many
    )
    search.add_argument("--client", metavar="IP|CIDR", help="the app's address or network", **many)
    search.add_argument(
        "--rule", metavar="NAME", help="a policy rule that decided a recipient", **many
    )
    search.add_argument(
        "--upstream", metavar="NAME", help="the upstream the message went to", **many
    )
    search.add_argument(
        "--outcome",
        metavar="OUTCOME",
        help="as in message.result: relayed, rejected, deferred, failed",
        **many,
    )
    search.add_argument(
        "--session", metavar="ID", help="a session id (* for a prefix: 3fa2*)", **many
    )
    search.add_argument(
        "--json", action="store_true", help="print matching records as JSON lines, unchanged"
    )
    search.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="then keep reading the current file for new messages (Ctrl-C to stop)",
    )
    search.set_defaults(func=_guarded(cmd_search))

    show = sub.add_parser("show", help="one session's whole timeline")
    show.add_argument(
        "session_id", metavar="SESSION_ID", help="the session_id (or its first characters)"
    )
    sources_arguments(show)
    show.add_argument(
        "--json", action="store_true", help="print the session's records as JSON lines"
    )
    show.set_defaults(func=_guarded(cmd_show))

    summary = sub.add_parser("summary", help="counts and charts over a time window")
    sources_arguments(summary)
    _window_arguments(summary)
    summary.add_argument(
        "--top", type=int, default=10, metavar="N", help="rows in each top list (default 10)"
    )
    summary.add_argument(
        "--html", metavar="FILE", help="write one self-contained HTML page with charts"
    )
    summary.set_defaults(func=_guarded(cmd_summary))

    audit_chain_cli.add_commands(sub, _guarded)
