"""Campaign status values and the one function that changes them."""

from __future__ import annotations

from messagehub.models import CampaignStatus

DRAFT = CampaignStatus.DRAFT.value
RUNNING = CampaignStatus.RUNNING.value
PAUSED = CampaignStatus.PAUSED.value
FINISHED = CampaignStatus.FINISHED.value
FAILED = CampaignStatus.FAILED.value

# Allowed moves. A running campaign may be "started" again: that is a run
# resuming after its process died. A paused campaign may finish when the
# pause came after its last recipient.
_ALLOWED = {
    DRAFT: {RUNNING},
    RUNNING: {RUNNING, PAUSED, FINISHED, FAILED},
    PAUSED: {RUNNING, FINISHED},
    FAILED: {RUNNING},
    FINISHED: set(),
}

_REFUSALS = {
    (FINISHED, RUNNING): "Campaign {id} has finished; duplicate it to send it again.",
    (DRAFT, PAUSED): "Campaign {id} has not been launched, so there is nothing to pause.",
    (PAUSED, PAUSED): "Campaign {id} is already paused.",
    (FINISHED, PAUSED): "Campaign {id} has finished, so there is nothing to pause.",
    (FAILED, PAUSED): "Campaign {id} has failed; resume it or leave it.",
}


class StatusError(Exception):
    """A status change that is not allowed, with a message for the user."""


def check_transition(campaign_id: int, current: str, new: str) -> None:
    """Raise StatusError unless a campaign may go from ``current`` to ``new``."""
    if new in _ALLOWED.get(current, set()):
        return

    template = _REFUSALS.get((current, new), "Campaign {id} cannot go from {current} to {new}.")
    raise StatusError(template.format(id=campaign_id, current=current, new=new))
