"""A `mamlpp train --time-limit` deadline whose decisions the test scripts."""

from __future__ import annotations

from mamlpp.runs.stops import Deadline


class ScriptedDeadline(Deadline):
    """Never expires; `has_room_for` answers from `ROOM` in turn (one answer per epoch
    boundary), so the trainer's stops do not depend on the machine's speed. Patch it in as
    `mamlpp.runs.cli.Deadline` and set `ROOM` with monkeypatch."""

    ROOM: list[bool] = []

    def expired(self) -> bool:
        return False

    def has_room_for(self, seconds: float) -> bool:
        return ScriptedDeadline.ROOM.pop(0)
