"""rung.training: the options and schedule every engine shares."""

from __future__ import annotations

import pytest


def test_warmup_cosine_schedule_shared_by_the_engines():
    from rung.training import warmup_cosine

    rates = [warmup_cosine(s, 1.0, 12, warmup_steps=2, min_lr_ratio=0.1) for s in range(12)]
    assert rates[:2] == [0.5, 1.0] and rates[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:]))
    assert warmup_cosine(0, 3e-4, 1) == 3e-4


def test_the_options_give_each_step_its_rate_from_the_one_schedule():
    from rung.training import TrainingOptions, warmup_cosine

    options = TrainingOptions(steps=10, learning_rate=2e-3, warmup_steps=3, min_lr_ratio=0.2)
    rates = [options.learning_rate_at(s) for s in range(10)]
    assert rates == [warmup_cosine(s, 2e-3, 10, 3, 0.2) for s in range(10)]
    assert rates[0] == pytest.approx(2e-3 / 3) and rates[2] == 2e-3 and rates[-1] == pytest.approx(4e-4)
