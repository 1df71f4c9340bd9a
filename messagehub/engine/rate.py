"""A send rate shared by every process that sends through one provider account."""

from __future__ import annotations

import time
from typing import Callable

from sqlalchemy import Engine, bindparam, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from messagehub.models import RateSchedule

_schedules = RateSchedule.__table__


def _later_of(moment):
    """Return the later of the stored slot and ``moment``, in SQL that SQLite and PostgreSQL both run."""
    return case((_schedules.c.next_at > moment, _schedules.c.next_at), else_=moment)


# Move the account's next free slot past the messages about to leave, and
# return where it ends. One statement, so two processes never get the same
# slot, on SQLite as on PostgreSQL.
_RESERVE = (
    update(_schedules)
    .where(_schedules.c.account_id == bindparam("a_id"))
    .values(next_at=_later_of(bindparam("now")) + bindparam("cost"))
    .returning(_schedules.c.next_at)
)
_HOLD = (
    update(_schedules)
    .where(_schedules.c.account_id == bindparam("a_id"))
    .values(next_at=_later_of(bindparam("until")))
)


class SharedRate:
    """Spaces the messages of one account at ``per_second``, across processes and hosts.

    Each ``acquire`` reserves the next slots of the account's schedule in the
    database and sleeps until the first of them. The schedule keeps no tokens
    to save up, so an idle account cannot burst above its rate afterwards.
    """

    def __init__(
        self,
        engine: Engine,
        account_id: int,
        per_second: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        if per_second <= 0:
            raise ValueError(f"the rate of account {account_id} must be above zero, not {per_second}")
        self.engine = engine
        self.account_id = account_id
        self.per_second = per_second
        self.sleep = sleep
        self.clock = clock
        self._ensure_row()

    def acquire(self, count: int = 1) -> float:
        """Wait until ``count`` messages may leave; return the seconds waited."""
        cost = count / self.per_second
        with self.engine.begin() as connection:
            ends_at = connection.execute(_RESERVE, {"a_id": self.account_id, "now": self.clock(), "cost": cost}).scalar()

        # A batch leaves at the start of its reserved span: the span itself
        # keeps the next batch, of this process or another, at the rate.
        delay = ends_at - cost - self.clock()
        if delay > 0:
            self.sleep(delay)
        return max(delay, 0.0)

    def hold(self, seconds: float) -> None:
        """Keep every sender of the account waiting ``seconds`` from now (the provider asked so)."""
        with self.engine.begin() as connection:
            connection.execute(_HOLD, {"a_id": self.account_id, "until": self.clock() + seconds})

    def _ensure_row(self) -> None:
        with self.engine.begin() as connection:
            exists = connection.execute(
                select(_schedules.c.account_id).where(_schedules.c.account_id == self.account_id)
            ).first()
        if exists:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(_schedules).values(account_id=self.account_id, next_at=0.0))
        except IntegrityError:
            pass  # another process created it first
