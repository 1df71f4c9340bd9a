"""A look at the handover journal each time a runner is about to commit outcomes."""

from __future__ import annotations

from messagehub.engine.handover import read_journals
from messagehub.engine.runner import CampaignRunner


def accepted_at_each_flush(runner: CampaignRunner, handover_dir: str, campaign_id: int) -> list[set[int]]:
    """Make ``runner`` read its journal before each write of outcomes; return the accepted ids seen, flush by flush.

    Each set is what a process killed just before that write would leave.
    """
    seen: list[set[int]] = []
    flush = runner.store.flush

    def flush_after_reading_journal() -> None:
        seen.append(read_journals(handover_dir, campaign_id).accepted)
        flush()

    runner.store.flush = flush_after_reading_journal
    return seen
