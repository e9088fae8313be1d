import math

import pytest

from sparsernn.prune.schedules import (
    AGPSchedule,
    NarangSchedule,
    NoSchedule,
    OneShotSchedule,
    agp_sparsity,
    make_schedule,
    narang_slopes,
    narang_threshold,
    oneshot_sparsity,
    paper_steps,
)

WINDOW = dict(start=100, ramp=300, end=600, freq=100)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (99, 0.0), (100, 0.0),  # updates need start < step
    (150, 0.0), (199, 0.0),  # no update yet
    (200, 0.3 * 101 / 100),  # first update, S < itr < R
    (299, 0.3 * 101 / 100),  # off-freq: unchanged
    (300, (0.3 * 201 + 0.45 * 1) / 100),  # itr = R: the ramp begins
    (500, (0.3 * 201 + 0.45 * 201) / 100),  # last update before E
    (599, (0.3 * 201 + 0.45 * 201) / 100),
    (600, (0.3 * 201 + 0.45 * 201) / 100),  # itr = E is not an update
    (10_000, (0.3 * 201 + 0.45 * 201) / 100),  # frozen after E
])
def test_narang_threshold_hand_computed(step, expected):
    assert narang_threshold(step, theta=0.3, phi=0.45, **WINDOW) == pytest.approx(expected)


def test_narang_threshold_is_monotone_staircase():
    values = [narang_threshold(s, theta=0.1, phi=0.2, **WINDOW) for s in range(800)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    changes = [s for s in range(1, 800) if values[s] != values[s - 1]]
    assert changes == [200, 300, 400, 500]


def test_narang_slopes_equation_1():
    theta, phi = narang_slopes(1.0, **WINDOW)
    assert theta == pytest.approx(2 * 100 / (2 * 200 + 3 * 300))
    assert phi == pytest.approx(1.5 * theta)
    assert narang_slopes(0.5, **WINDOW, ramp_ratio=2.0)[1] == pytest.approx(2 * theta * 0.5)


def test_final_threshold_near_q_at_paper_scale():
    # 20 epochs of 500 steps: S = epoch 2, R = 25%, E = 50% (Table 1), phi = 1.5 theta.
    window = paper_steps(20, 500)
    assert window == {"start": 500, "ramp": 2500, "end": 5000, "freq": 100}
    q = 0.0731
    theta, phi = narang_slopes(q, **window)
    final = narang_threshold(10_000, theta=theta, phi=phi, **window)
    assert final == pytest.approx(q, rel=0.03)
    assert final != pytest.approx(q, rel=1e-6)  # Equation 1 ignores the staircase's last step


def test_target_mode_final_threshold_equals_q_exactly():
    schedule = NarangSchedule(**WINDOW, sparsity=0.9)
    assert schedule.threshold(10_000, q=0.25) == pytest.approx(0.25, rel=1e-12)
    assert schedule.threshold(100, q=0.25) == 0.0
    assert 0 < schedule.threshold(200, q=0.25) < schedule.threshold(300, q=0.25) < 0.25


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (99, 0.0), (100, 0.0), (150, 0.0),
    (200, 0.9 - 0.9 * 0.75 ** 3), (299, 0.9 - 0.9 * 0.75 ** 3),
    (300, 0.9 - 0.9 * 0.5 ** 3), (400, 0.9 - 0.9 * 0.25 ** 3), (499, 0.9 - 0.9 * 0.25 ** 3),
    (500, 0.9), (9999, 0.9),
])
def test_agp_sparsity_hand_computed(step, expected):
    kw = dict(initial=0.0, final=0.9, start=100, end=500, freq=100)
    assert agp_sparsity(step, **kw) == pytest.approx(expected)


def test_agp_with_initial_sparsity():
    kw = dict(initial=0.5, final=0.9, start=0, end=100, freq=50)
    assert agp_sparsity(0, **kw) == 0.5
    assert agp_sparsity(50, **kw) == pytest.approx(0.9 - 0.4 * 0.125)


def test_oneshot():
    assert oneshot_sparsity(9, sparsity=0.9, at=10) == 0.0
    assert oneshot_sparsity(10, sparsity=0.9, at=10) == 0.9
    assert oneshot_sparsity(10**6, sparsity=0.9, at=10) == 0.9


def test_update_steps():
    narang = NarangSchedule(**WINDOW, theta=0.1, phi=0.15)
    assert [s for s in range(700) if narang.is_update_step(s)] == [200, 300, 400, 500]
    agp = AGPSchedule(start=100, end=500, freq=100)
    assert [s for s in range(700) if agp.is_update_step(s)] == [100, 200, 300, 400, 500]
    assert [s for s in range(700) if OneShotSchedule(at=250).is_update_step(s)] == [250]
    assert not any(NoSchedule().is_update_step(s) for s in range(700))


@pytest.mark.parametrize("kwargs, message", [
    (dict(start=10, ramp=10, end=10, freq=1), "end must be > start"),
    (dict(start=10, ramp=5, end=20, freq=1), r"ramp must lie in \[start, end\]"),
    (dict(start=10, ramp=25, end=20, freq=1), r"ramp must lie in \[start, end\]"),
    (dict(start=10, ramp=15, end=20, freq=0), "freq must be an integer >= 1"),
    (dict(start=-1, ramp=15, end=20, freq=1), "start must be an integer >= 0"),
])
def test_narang_threshold_rejects_bad_window(kwargs, message):
    with pytest.raises(ValueError, match=message):
        narang_threshold(5, theta=0.1, phi=0.1, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(q=-0.1), "q must be a finite number >= 0"),
    (dict(q=math.nan), "q must be a finite number >= 0"),
    (dict(q=0.1, ramp_ratio=-1), "ramp_ratio must be"),
])
def test_narang_slopes_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        narang_slopes(**kwargs, **WINDOW)


@pytest.mark.parametrize("kwargs, message", [
    (dict(initial=0.0, final=1.0), r"final must lie in \[0, 1\)"),
    (dict(initial=-0.1, final=0.5), r"initial must lie in \[0, 1\)"),
    (dict(initial=0.6, final=0.5), "initial must be <= final"),
])
def test_agp_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        agp_sparsity(5, start=0, end=10, freq=1, **kwargs)


def test_schedule_objects_validate():
    with pytest.raises(ValueError, match="either theta and phi, or sparsity"):
        NarangSchedule(**WINDOW)
    with pytest.raises(ValueError, match="either theta and phi, or sparsity"):
        NarangSchedule(**WINDOW, theta=0.1, phi=0.1, sparsity=0.9)
    with pytest.raises(ValueError, match="theta and phi must be given together"):
        NarangSchedule(**WINDOW, theta=0.1)
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
        NarangSchedule(**WINDOW, sparsity=1.0)
    with pytest.raises(ValueError, match="would never prune"):
        NarangSchedule(start=101, ramp=150, end=199, freq=100, sparsity=0.9)
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
        OneShotSchedule(at=5, sparsity=1.5)
    with pytest.raises(ValueError, match="at must be an integer >= 1"):
        OneShotSchedule(at=0)
    with pytest.raises(ValueError, match="end must be > start"):
        AGPSchedule(start=5, end=5)
    with pytest.raises(ValueError, match="epochs must be an integer >= 4"):
        NarangSchedule.from_epochs(3, 100, sparsity=0.9)


def test_from_epochs_and_registry():
    schedule = NarangSchedule.from_epochs(20, 500, sparsity=0.9)
    assert (schedule.start, schedule.ramp, schedule.end, schedule.freq) == (500, 2500, 5000, 100)
    assert make_schedule("oneshot", at=3) == OneShotSchedule(at=3)
    with pytest.raises(ValueError, match="valid: none, narang, agp, oneshot"):
        make_schedule("magic")
