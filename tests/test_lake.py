"""Code tests for the lake: partition paths, idempotent writes, the validated manifest."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from fleet import lake


def test_days_are_inclusive_and_ordered() -> None:
    assert lake.days(date(2013, 2, 27), date(2013, 3, 1)) == [
        date(2013, 2, 27),
        date(2013, 2, 28),
        date(2013, 3, 1),
    ]
    with pytest.raises(ValueError, match="before start"):
        lake.days(date(2013, 3, 1), date(2013, 2, 1))


def test_changed_partitions_lose_their_validated_mark(tmp_path) -> None:
    frames = {date(2013, 1, d): pd.DataFrame({"x": [d, d + 1]}) for d in (1, 2, 3)}
    paths = lake.load_partitions(tmp_path, "toy", frames)
    assert [p.parent.name for p in paths] == [
        "date=2013-01-01",
        "date=2013-01-02",
        "date=2013-01-03",
    ]
    assert lake.unvalidated(tmp_path, "toy", paths) == []
    assert lake.existing_days(tmp_path, "toy") == set(frames)

    # a rewrite with other content (a bad upstream copy) must be validated again
    lake.write_partition(tmp_path, "toy", date(2013, 1, 2), pd.DataFrame({"x": [-1]}))
    assert lake.unvalidated(tmp_path, "toy", paths) == [paths[1]]
    # identical content keeps its mark: the digest is of the bytes, not the time
    lake.write_partition(tmp_path, "toy", date(2013, 1, 3), frames[date(2013, 1, 3)])
    assert lake.unvalidated(tmp_path, "toy", paths) == [paths[1]]

    lake.mark_validated(tmp_path, "toy", [paths[1]])
    assert lake.unvalidated(tmp_path, "toy", paths) == []
    assert lake.read_partitions(paths)["x"].tolist() == [1, 2, -1, 3, 4]
