"""Loop boundaries, periodic actions and throughput, with an injected clock."""

import pytest

from trainer import periodic


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("step, target, per_loop, intervals, milestones, expected", [
    (0, 1000, 100, (), (), 100),
    (950, 1000, 100, (), (), 1000),           # never past the target
    (0, 1000, 100, (30,), (), 30),            # eval/checkpoint multiples
    (30, 1000, 100, (30, 0), (), 60),         # 0 means never
    (60, 1000, 100, (250, 40), (), 80),
    (0, 1000, 100, (), (9, 15), 9),           # profiler milestones
    (9, 1000, 100, (), (9, 15), 15),
    (15, 1000, 100, (), (9, 15), 115),
])
def test_next_stop(step, target, per_loop, intervals, milestones, expected):
    assert periodic.next_stop(step, target, per_loop, intervals=intervals,
                              milestones=milestones) == expected


def test_every():
    every = periodic.Every(50)
    assert [s for s in range(0, 201) if every.due(s)] == [50, 100, 150, 200]
    assert not any(periodic.Every(0).due(s) for s in range(100))


def test_throughput_and_eta_follow_the_clock():
    clock = FakeClock()
    meter = periodic.Throughput(global_batch_size=64, clock=clock)
    meter.start(step=100)
    clock.now += 8.0
    images_per_second, seconds_left = meter.update(step=200, target=500)
    assert images_per_second == pytest.approx(100 * 64 / 8.0)
    assert seconds_left == pytest.approx(300 * 8.0 / 100)
    clock.now += 2.0  # the next loop is measured from the last update
    images_per_second, _ = meter.update(step=300, target=500)
    assert images_per_second == pytest.approx(100 * 64 / 2.0)


def test_format_duration():
    assert periodic.format_duration(0) == "0:00:00"
    assert periodic.format_duration(3725.4) == "1:02:05"
