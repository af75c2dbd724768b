"""FIFO slot rotation: a freed slot is reused only after every other free one."""

from sipproxy.supervisor.slots import Slots


def test_slots_are_handed_out_in_order_and_run_out() -> None:
    slots = Slots(3)
    assert [slots.allocate(), slots.allocate(), slots.allocate()] == [0, 1, 2]
    assert slots.allocate() is None
    assert (slots.used, slots.free) == (3, 0)


def test_freed_slot_is_not_reused_first() -> None:
    slots = Slots(4)
    for _ in range(3):
        slots.allocate()  # 0, 1, 2
    slots.release(0)
    assert slots.allocate() == 3  # the next after the last handed out, not the freed 0
    assert slots.allocate() == 0  # wraps round to the oldest freed one


def test_rotation_goes_round_in_a_circle() -> None:
    slots = Slots(3)
    seen = []
    for _ in range(7):
        slot = slots.allocate()
        assert slot is not None
        seen.append(slot)
        slots.release(slot)
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_release_of_an_unused_slot_is_harmless() -> None:
    slots = Slots(2)
    slots.release(1)
    assert slots.free == 2
