"""Quarantine: a queued message whose envelope or files fail their checks is set aside once.

A message `Spool.load` refuses (`EnvelopeInvalid`: a wrong field type, an address
that would inject MAIL or RCPT parameters, a ``body`` symlink, a file that is not
ours) is never delivered and never looked at again: one rename into
``quarantine/ID`` and one ``message.quarantined`` audit event naming the problems.
The operator inspects it there, and deletes it or repairs it and moves it back.
No reactor.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.audit.events import Event
from gateway.queue.spool import QUARANTINE, EnvelopeInvalid, MessageGone, Spool

MAX_PROBLEMS = 20  # listed in the audit record (all are counted)
MAX_PROBLEM_TEXT = 300
REASON = (
    "its envelope or files are not what mailgate writes; it is never delivered "
    f"(see {QUARANTINE}/ID in the spool, docs/queue.md)"
)


def set_aside(spool: Spool, audit: Any, state: str, queue_id: str, error: EnvelopeInvalid) -> bool:
    """Move the message to quarantine/ and log it once; False if it could not be moved."""
    try:
        spool.quarantine(state, queue_id)
    except MessageGone:
        # moved by the operator meanwhile (nothing left to set aside), or quarantine/ID is taken
        return not os.path.lexists(spool.folder(state, queue_id))
    except OSError:
        return False
    audit.event(
        Event.MESSAGE_QUARANTINED,
        queue_id=queue_id,
        state=state,
        problems=[p[:MAX_PROBLEM_TEXT] for p in error.problems[:MAX_PROBLEMS]],
        problem_count=len(error.problems),
        reason=REASON,
    )
    return True
