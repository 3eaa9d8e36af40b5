"""A China A-share market end to end: a Qlib provider directory on the Shanghai calendar.

The fixture's ``calendars/day.txt`` holds the XSHG sessions of 2019: 2019-07-04 and 2019-11-28
(Shanghai traded, New York did not) are in it; the Spring Festival (2019-02-04..08) and National
Day (2019-10-01..07) weeks are not. Each check runs qpipe as a user does, in processes of its
own with the Qlib source configured (the calendar is read when the code location loads).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from qpipe.calendar import exchange_calendar
from qpipe.data.qlib_provider import write_qlib_provider
from qpipe.data.synthetic import SyntheticSpec, generate_market
from qpipe_tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DAY = "2019-07-04"

PROBE = """
import json
from datetime import datetime
from zoneinfo import ZoneInfo
import dagster as dg
from qpipe.calendar import market_calendar
from qpipe.definitions import defs
from qpipe.freshness import due_session
from qpipe.partitions import trading_days
from qpipe.schedules import after_close

shanghai = ZoneInfo("Asia/Shanghai")
ticks = {}
for day in ("2019-07-04", "2019-10-01", "2019-10-08", "2019-02-04"):
    when = datetime.fromisoformat(day).replace(hour=16, minute=30, tzinfo=shanghai)
    with dg.instance_for_test() as instance, dg.build_schedule_context(
            scheduled_execution_time=when, repository_def=defs.get_repository_def(), instance=instance) as context:
        result = after_close.evaluate_tick(context)
    ticks[day] = [r.partition_key for r in result.run_requests]
due = {when: str(due_session(market_calendar(), datetime.fromisoformat(when).replace(tzinfo=shanghai)))
       for when in ("2019-09-30 19:59", "2019-09-30 20:00", "2019-10-07 23:00", "2019-10-08 20:00")}
print(json.dumps({"keys": trading_days.get_partition_keys(), "cron": after_close.cron_schedule,
                  "due": due,
                  "timezone": after_close.execution_timezone, "ticks": ticks}))
"""


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cn") / "cn_data"
    spec = SyntheticSpec(n_instruments=30, index_size=20, origin="2018-06-01")
    market = generate_market(spec, start="2019-01-02", end="2019-12-31", calendar=exchange_calendar("XSHG"))
    write_qlib_provider(market.prices, root, market.universe)
    return root


def _env(provider: Path, home: Path, **extra: str) -> dict:
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    return {**os.environ, "QPIPE_SOURCE": "qlib", "QPIPE_SOURCE_PATH": str(provider), "QPIPE_QLIB_MARKET": "syn20",
            "QPIPE_PARTITIONS_START": "2019-01-02", "QPIPE_HOME": str(home / "qpipe"),
            "DAGSTER_HOME": str(dagster_home), **extra}


def _launch(env: dict, assets: str, partition: str) -> None:
    flag = "--partition-range" if "..." in partition else "--partition"
    done = subprocess.run([str(BIN / "dg"), "launch", "--assets", assets, flag, partition], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def test_partitions_and_schedule_follow_the_providers_shanghai_calendar(provider, tmp_path):
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=_env(provider, tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-4000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    day_txt = (provider / "calendars" / "day.txt").read_text().split()
    assert [k for k in found["keys"] if k <= "2019-12-31"] == day_txt  # exactly the provider's days
    assert {"2019-07-04", "2019-11-28"} <= set(day_txt)
    assert not {"2019-02-04", "2019-02-08", "2019-10-01", "2019-10-07"} & set(found["keys"])
    assert found["keys"][-1] > "2019-12-31"  # later weekdays are partitions already: days the provider appends
    assert found["cron"] == "30 16 * * 1-5" and found["timezone"] == "Asia/Shanghai"
    # Due 5 hours after the 15:00 close, and not over the National Day week
    assert found["due"] == {"2019-09-30 19:59": "2019-09-27", "2019-09-30 20:00": "2019-09-30",
                            "2019-10-07 23:00": "2019-09-30", "2019-10-08 20:00": "2019-10-08"}
    assert found["ticks"] == {"2019-07-04": ["2019-07-04"], "2019-10-01": [], "2019-10-08": ["2019-10-08"],
                              "2019-02-04": []}


def test_a_one_day_run_on_a_shanghai_only_session_equals_the_full_range(provider, tmp_path):
    one, full = tmp_path / "one", tmp_path / "full"
    _launch(_env(provider, one), "raw/prices,raw/universe,raw/concepts", "2019-03-01...2019-07-31")  # > LOOKBACK before DAY
    with duckdb.connect(str(one / "qpipe" / "warehouse.duckdb"), read_only=True) as con:
        days = {str(d) for (d,) in con.execute("SELECT DISTINCT date FROM raw.prices").fetchall()}
        stamped = con.execute("SELECT name FROM meta.calendar").fetchall()
    assert DAY in days and "2019-10-01" not in days and stamped == [("qlib day.txt (XSHG hours)",)]
    (full / "qpipe").mkdir(parents=True)
    shutil.copy(one / "qpipe" / "warehouse.duckdb", full / "qpipe" / "warehouse.duckdb")
    _launch(_env(provider, one), "features/alpha158,features/alpha360", DAY)
    _launch(_env(provider, full), "features/alpha158,features/alpha360", "2019-06-03...2019-07-31")
    for table in ("features.alpha158", "features.alpha360"):
        rows = []
        for home in (one, full):
            with duckdb.connect(str(home / "qpipe" / "warehouse.duckdb"), read_only=True) as con:
                rows.append(con.execute(f"SELECT * FROM {table} WHERE date = ? ORDER BY instrument", [DAY]).fetchnumpy())
        assert len(rows[0]["instrument"]) > 0 and list(rows[0]) == list(rows[1])
        for column in rows[0]:
            a, b = np.asarray(rows[0][column]), np.asarray(rows[1][column])
            if a.dtype.kind == "f":
                assert a.tobytes() == b.tobytes(), (table, column)  # bit for bit, NaN included
            else:
                assert a.tolist() == b.tolist(), (table, column)


def test_prices_of_another_calendar_are_refused_by_name(provider, tmp_path):
    home = tmp_path / "xnys"
    env = _env(provider, home, QPIPE_CALENDAR="XNYS")
    done = subprocess.run([str(BIN / "dg"), "launch", "--assets", "raw/prices", "--partition-range",
                           "2019-07-01...2019-07-05"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "dates that are not sessions" in done.stdout + done.stderr and DAY in done.stdout + done.stderr
    assert not (home / "qpipe" / "warehouse.duckdb").exists() or duckdb.connect(
        str(home / "qpipe" / "warehouse.duckdb"), read_only=True).execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'prices'").fetchone()[0] == 0
