"""gateway.audit.events: one catalogue of event names, documented in docs/audit.md and enforced."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from gateway.audit.events import Event
from gateway.audit.log import AuditLog

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def _documented() -> set[str]:
    section = DOCS.read_text().split("### Event catalogue", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z]+\.[a-z_]+)` \|", section, re.M))


def test_docs_list_exactly_the_catalogue():
    """docs/audit.md's event catalogue names every Event and nothing else."""
    assert _documented() == {e.value for e in Event}


def test_a_name_outside_the_catalogue_is_refused():
    """The audit log writes no event that the catalogue does not define."""
    log = AuditLog("-", stream=io.StringIO())
    with pytest.raises(ValueError):
        log.event("session.made_up")  # type: ignore[arg-type]


def test_a_catalogued_name_is_written_as_its_string():
    """An Event is recorded as its plain name."""
    stream = io.StringIO()
    AuditLog("-", stream=stream).event(Event.GATEWAY_STOPPED)
    assert '"event":"gateway.stopped"' in stream.getvalue().replace(" ", "")
