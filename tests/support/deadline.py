"""A `mamlpp train --time-limit` deadline whose decisions the test scripts."""

from __future__ import annotations

from mamlpp.runs.stops import Deadline


class ScriptedDeadline(Deadline):
    """`has_room_for` answers from `ROOM` in turn (one answer per epoch boundary); `expired`
    is False for its first `EXPIRES_AFTER` calls (the trainer asks once per iteration), then
    True (None: never). So the trainer's stops do not depend on the machine's speed. Patch it
    in as `mamlpp.runs.cli.Deadline` and set `ROOM`/`EXPIRES_AFTER` with monkeypatch."""

    ROOM: list[bool] = []
    EXPIRES_AFTER: int | None = None

    def expired(self) -> bool:
        if ScriptedDeadline.EXPIRES_AFTER is None:
            return False
        ScriptedDeadline.EXPIRES_AFTER -= 1
        return ScriptedDeadline.EXPIRES_AFTER < 0

    def has_room_for(self, seconds: float) -> bool:
        return ScriptedDeadline.ROOM.pop(0)
