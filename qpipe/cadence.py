"""How often checkpoints are retrained: every trading day (Qlib's rolling retrain at its finest), weekly,
monthly, or every N trading days (Qlib's ``RollingGen(step=N)``).

On the other days the daily run still ingests, computes features, predicts and reports; the
predictions use the newest checkpoint at or before the day. ``python -m qpipe.cadence FROM TO``
prints the retrain days of a range, ready for ``dagster job backfill --partitions``.
"""

import argparse
from datetime import date, timedelta

import numpy as np
import pandas as pd

from qpipe.calendar import trading_days
from qpipe.settings import get_settings, parse_cadence


def retrain_days(start: str | date, end: str | date, cadence: str | int, anchor: str | date) -> np.ndarray:
    """The trading days in [start, end] on which checkpoints are retrained.

    ``weekly`` and ``monthly`` retrain on the first trading day of each calendar week or month
    (a Tuesday after a Monday holiday); every N trading days counts from ``anchor``, the first
    partition, so the days do not move when the range does.
    """
    first = pd.Timestamp(start).date()
    if isinstance(cadence, int):
        days = trading_days(anchor, end)
        keep = np.arange(len(days)) % cadence == 0
    else:
        days = trading_days(first - timedelta(days=40), end)  # enough to see where the week or month began
        if cadence == "daily":
            keep = np.ones(len(days), dtype=bool)
        else:
            ordinal = days.astype(np.int64)  # days since 1970-01-01, a Thursday
            period = days.astype("datetime64[M]").astype(np.int64) if cadence == "monthly" else (ordinal + 3) // 7
            keep = np.r_[True, period[1:] != period[:-1]]
    return days[keep & (days >= np.datetime64(first, "D"))]


def is_retrain_day(day: str | date, cadence: str | int, anchor: str | date) -> bool:
    return len(retrain_days(day, day, cadence, anchor)) == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("start")
    parser.add_argument("end")
    parser.add_argument("--every", default=None, help="cadence (default: QPIPE_RETRAIN_EVERY)")
    args = parser.parse_args()
    try:
        settings = get_settings()
        cadence = parse_cadence(args.every) if args.every else settings.retrain_every
    except ValueError as error:  # a bad QPIPE_* value (SettingsError) or --every: one line, not a traceback
        parser.exit(2, f"qpipe: {error}\n")
    print(",".join(str(d) for d in retrain_days(args.start, args.end, cadence, settings.first_partition)))


if __name__ == "__main__":
    main()
