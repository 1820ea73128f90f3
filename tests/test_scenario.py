"""Scenario files are checked against their schema before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from wallwatch.lab import scenario

GOOD = """
name = "t"
clock_start = "2014-01-21T15:10:00+08:00"
time_scale = 60.0
[[injectors]]
id = "i"
profile = "injector3"
active = [["2014-01-21T15:15:00+08:00", "2014-01-21T15:39:00+08:00"]]
rules = [{ pattern = "com" }]
"""


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("time_scale = 60.0", "time_scale = 0"), "time_scale must be a positive number"),
        (("time_scale = 60.0", "time_scale = nan"), "time_scale must be a positive number"),
        (("time_scale = 60.0", "time_scale = 60.0\ndelay_ms = -5"), "delay_ms must be >= 0"),
        (("time_scale = 60.0", "time_scale = 60.0\ntimescale = 2"), "timescale"),
        (('profile = "injector3"', 'profile = "injector9"'), "injector9"),
        (
            ('rules = [{ pattern = "com" }]', 'rules = [{ pattern = "com", ancor = "suffix" }]'),
            "ancor",
        ),
        (
            ('rules = [{ pattern = "com" }]', 'rules = [{ pattern = "com", anchor = "middle" }]'),
            "anchor",
        ),
        (("15:39:00", "15:00:00"), "is not after"),
        (('clock_start = "2014-01-21T15:10:00+08:00"', 'clock_start = "yesterday"'), "clock_start"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_field(change: tuple[str, str], says: str,
                                                     tmp_path: Path) -> None:  # fmt: skip
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(ValueError, match="bad scenario") as caught:
        scenario.load(str(path))
    assert str(path) in str(caught.value) and says in str(caught.value)


def test_the_good_file_and_every_shipped_scenario_load(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    assert scenario.load(str(path)).time_scale == 60.0
    for name in scenario.available():
        scenario.load(name)
