"""The feed's fan-out, per viewer and without a network: where a viewer starts, what waits
for its connection, what a backed-up viewer skips (the end-to-end behaviour is in test_live)."""
from __future__ import annotations

from api.live.sender import Subscriber, Unit


class FakeSender:
    """Stands for a PassthroughSender: records what it is given, answers as told
    (True sent, False backed up, None not connected)."""

    def __init__(self):
        self.units: list[Unit] = []
        self.answers: list[bool | None] = []

    def send_unit(self, unit: Unit) -> bool | None:
        answer = self.answers.pop(0) if self.answers else True
        if answer:
            self.units.append(unit)
        return answer


def au(n: int, key: bool = False, packets: int = 3) -> Unit:
    return Unit([bytes([n]) * 100 for _ in range(packets)], n * 9000, key)


def test_a_unit_marks_its_last_packet_only():
    unit = au(1, packets=4)
    assert unit.markers == (0, 0, 0, 0x80)
    assert au(2, packets=1).markers == (0x80,)
    assert Unit([], 0, False).markers == ()


def test_a_viewer_starts_at_a_keyframe_and_gets_what_waited_for_its_connection():
    sub = Subscriber(feed=None, maxsize=10)
    sub.push(au(0))                      # before any keyframe: not kept
    sub.push(au(1, key=True))
    sub.push(au(2))
    assert [u.timestamp for u in sub.pending] == [9000, 18000]
    sender = FakeSender()
    sub.attach(sender)                   # the connection is up: what waited goes first
    sub.push(au(3))
    assert [u.timestamp for u in sender.units] == [9000, 18000, 27000]
    assert sub.sent == 3 and sub.skipped == 0 and not sub.pending


def test_a_backed_up_viewer_skips_to_the_next_keyframe():
    sub = Subscriber(feed=None, maxsize=10)
    sender = FakeSender()
    sub.attach(sender)
    sub.push(au(1, key=True))
    sender.answers = [False]             # its socket is full
    sub.push(au(2))
    sub.push(au(3))                      # not a keyframe: skipped
    sub.push(au(4, key=True))
    sub.push(au(5))
    assert [u.timestamp for u in sender.units] == [9000, 36000, 45000]
    assert sub.sent == 3 and sub.skipped == 1


def test_a_connection_not_up_sends_nothing_and_resumes_at_a_keyframe():
    sub = Subscriber(feed=None, maxsize=10)
    sender = FakeSender()
    sub.attach(sender)
    sender.answers = [None]
    sub.push(au(1, key=True))
    sub.push(au(2))
    sub.push(au(3, key=True))
    assert [u.timestamp for u in sender.units] == [27000]
    assert sub.sent == 1 and sub.skipped == 0


def test_a_viewer_that_does_not_connect_in_time_keeps_only_a_bounded_backlog():
    sub = Subscriber(feed=None, maxsize=3)
    for n in range(1, 5):                # a keyframe and three more: one too many
        sub.push(au(n, key=n == 1))
    assert sub.pending == [] and sub.skipped == 3 and sub.need_key
    sub.push(au(5))
    sub.push(au(6, key=True))
    assert [u.timestamp for u in sub.pending] == [54000]


def test_an_ended_viewer_takes_nothing():
    sub = Subscriber(feed=None, maxsize=3)
    sender = FakeSender()
    sub.attach(sender)
    sub.end()
    sub.push(au(1, key=True))
    sub.attach(sender)
    assert sender.units == [] and sub.ended.is_set()
