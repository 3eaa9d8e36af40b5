"""Trading days: the calendar, the partitions built on it, and the after-close schedule."""

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np

from qpipe.calendar import is_trading_day, trading_days
from qpipe.partitions import trading_days as partitions
from qpipe.schedules import after_close


def test_calendar_equals_the_real_nyse_days_of_the_sp500_data(sp500):
    real = np.sort(sp500["date"].unique()).astype("datetime64[D]")
    assert np.array_equal(trading_days(str(real[0]), str(real[-1])), real)


def test_holidays_and_special_closures():
    for closed in ("2024-07-04", "2024-03-29", "2023-06-19", "2012-10-29", "2018-12-05", "2024-01-13"):
        assert not is_trading_day(closed), closed
    for open_day in ("2024-07-05", "2024-03-28", "2021-06-18", "2024-01-16"):
        assert is_trading_day(open_day), open_day


def test_partition_keys_are_trading_days_and_lookbacks_count_trading_days():
    friday_evening = datetime(2024, 1, 19, 18, 0, tzinfo=ZoneInfo("America/New_York"))
    keys = partitions.get_partition_keys(current_time=friday_evening)
    assert keys[-3:] == ["2024-01-17", "2024-01-18", "2024-01-19"]  # today's partition exists after the close
    assert "2024-01-15" not in keys and "2024-01-13" not in keys  # MLK day, a Saturday
    upstream = dg.TimeWindowPartitionMapping(start_offset=-2).get_upstream_mapped_partitions_result_for_partitions(
        partitions.subset_with_partition_keys(["2024-01-16"]), partitions, partitions).partitions_subset
    assert sorted(upstream.get_partition_keys()) == ["2024-01-11", "2024-01-12", "2024-01-16"]


def _tick(when: datetime):
    from qpipe.definitions import defs
    context = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
    return after_close.evaluate_tick(context)


def test_schedule_runs_the_days_partition_after_close_and_skips_holidays():
    ny = ZoneInfo("America/New_York")
    friday = _tick(datetime(2024, 1, 12, 17, 30, tzinfo=ny))
    assert [r.partition_key for r in friday.run_requests] == ["2024-01-12"]
    holiday = _tick(datetime(2024, 1, 15, 17, 30, tzinfo=ny))
    assert not holiday.run_requests and "holiday" in holiday.skip_message
    assert after_close.cron_schedule == "30 17 * * 1-5"  # no weekend ticks at all
