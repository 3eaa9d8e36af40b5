"""Alpha158, Alpha360 and LABEL0 against the independent pandas re-implementation of Qlib's engine.

The fixture holds what breaks naive implementations: suspended rows (NaN and absent), a late listing
and one listed three days before the end, flat and near-flat price stretches, a flat-volume stretch,
tied highs and lows, NaN volume on trading days, a zero-volume day (inf in CORD's input), a zero open
(±inf features) and a missing vwap.
"""

import numpy as np
import pandas as pd
import pytest

from qpipe.features.alpha158 import ALPHA158_NAMES, FILTER_COL_20, alpha158_columns
from qpipe.features.alpha360 import ALPHA360_NAMES, alpha360_columns
from qpipe.features.label import LABEL_NAME, label
from qpipe.features.panel import Panel, panel_from_frame
from qpipe_tests import qlib_reference as qlib

N_DAYS = 200
LOOKBACK_ROWS = 61


def _fixture_frame(n_days: int = N_DAYS, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_days)
    frames = []
    for name in ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH"):
        close = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
        open_ = close * np.exp(rng.normal(0, 0.01, n_days))
        high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.01, n_days)))
        low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.01, n_days)))
        frame = pd.DataFrame({
            "date": dates, "instrument": name, "open": open_, "high": high, "low": low, "close": close,
            "vwap": (high + low + close) / 3, "volume": rng.lognormal(12, 0.5, n_days),
        })  # fmt: skip
        prices = ["open", "high", "low", "close", "vwap"]
        if name == "AAA":  # suspended rows present with NaN fields; repeated highs
            frame.loc[30:33, prices + ["volume"]] = np.nan
            frame.loc[50:70:4, "high"] = frame.loc[48, "high"]
        elif name == "BBB":  # listed on row 45 with near-flat prices (rolling std < 2e-5), suspension rows absent
            near_flat = 20.0 + np.tile([0.0, 4e-6, 8e-6, 4e-6], 4)
            frame.loc[45:60, prices] = np.column_stack([near_flat] * len(prices))
            frame = frame.drop(index=[*range(45), 100, 101, 102])
        elif name == "CCC":  # flat prices for a month, then flat volume
            frame.loc[60:90, prices] = 20.0
            frame.loc[120:130, "volume"] = 1e5
        elif name == "DDD":  # prices on a coarse grid (ties in highs and lows everywhere), a zero open
            frame[prices] = (frame[prices] * 2).round() / 2
            frame.loc[150, "open"] = 0.0
        elif name == "EEE":  # trading days without a volume
            frame.loc[[70, 71, 150], "volume"] = np.nan
        elif name == "FFF":  # a zero-volume day: Log($volume/Ref($volume,1)+1) = inf the day after
            frame.loc[80, "volume"] = 0.0
        elif name == "GGG":  # listed three days before the end
            frame = frame.iloc[-3:]
        elif name == "HHH":  # no vwap in the source
            frame["vwap"] = np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return _fixture_frame()


@pytest.fixture(scope="module")
def panel(frame: pd.DataFrame) -> Panel:
    return panel_from_frame(frame)


def assert_matches_qlib(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape, name
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{name}: NaN mask differs")
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref), err_msg=f"{name}: +inf differs")
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref), err_msg=f"{name}: -inf differs")
    finite = np.isfinite(ref)
    error = np.abs(ours[finite].astype(np.float64) - ref[finite]) / np.maximum(1.0, np.abs(ref[finite]))
    assert error.max(initial=0.0) <= 1e-5, f"{name}: max scaled error {error.max():.3g}"
    # Same dtype flow as Qlib: only float64 rounding noise may flip a float32 result, and rarely.
    identical = np.mean(ours[finite] == ref[finite]) if finite.any() else 1.0
    assert identical >= 0.99, f"{name}: only {identical:.1%} of values bit-identical"


def test_column_names_order_and_count():
    assert len(ALPHA158_NAMES) == 158 and len(set(ALPHA158_NAMES)) == 158
    assert ALPHA158_NAMES == [name for name, _ in qlib.alpha158_expressions()]
    assert ALPHA158_NAMES[:13] == ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2",
                                   "OPEN0", "HIGH0", "LOW0", "VWAP0"]  # fmt: skip
    assert ALPHA158_NAMES[13:18] == ["ROC5", "ROC10", "ROC20", "ROC30", "ROC60"]
    assert ALPHA158_NAMES[-1] == "VSUMD60"
    assert len(ALPHA360_NAMES) == 360 and ALPHA360_NAMES == [name for name, _ in qlib.alpha360_expressions()]
    assert ALPHA360_NAMES[0] == "CLOSE59" and ALPHA360_NAMES[59] == "CLOSE0" and ALPHA360_NAMES[60] == "OPEN59"
    assert ALPHA360_NAMES[-1] == "VOLUME0"
    assert FILTER_COL_20 == ["KLEN", "KLOW", "ROC60", "STD5", "RSQR5", "RSQR10", "RSQR20", "RSQR60", "RESI5",
                             "RESI10", "CORR5", "CORR10", "CORR20", "CORR60", "CORD5", "CORD10", "CORD60",
                             "VSTD5", "WVMA5", "WVMA60"]  # fmt: skip
    assert LABEL_NAME == "LABEL0"


def test_alpha158_matches_qlib_reference(panel: Panel):
    names = []
    for (name, ours), (ref_name, expression) in zip(alpha158_columns(panel), qlib.alpha158_expressions(), strict=True):
        assert name == ref_name
        assert_matches_qlib(name, ours, qlib.evaluate_panel(expression, panel))
        names.append(name)
    assert names == ALPHA158_NAMES


def test_alpha360_matches_qlib_reference(panel: Panel):
    for (name, ours), (ref_name, expression) in zip(alpha360_columns(panel), qlib.alpha360_expressions(), strict=True):
        assert name == ref_name
        assert_matches_qlib(name, ours, qlib.evaluate_panel(expression, panel))


def test_label_matches_qlib_reference(panel: Panel):
    ours = label(panel)
    assert_matches_qlib(LABEL_NAME, ours, qlib.evaluate_panel(qlib.LABEL_EXPRESSION, panel))
    assert np.isnan(ours[-2:]).all()


def test_fixture_reaches_the_edge_cases(panel: Panel):
    """Guard the fixture itself: the edge cases above must actually be present."""
    columns = dict(alpha158_columns(panel))
    bbb, ccc, ddd = (list(panel.instruments).index(name) for name in ("BBB", "CCC", "DDD"))
    assert columns["STD5"][55, bbb] > 0 and np.isnan(columns["RSQR5"][55, bbb]) and np.isnan(columns["CORR5"][55, bbb])
    assert columns["KMID"][150, ddd] == np.inf and columns["KLOW"][150, ddd] == -np.inf
    assert np.isnan(columns["RSQR20"][85, ccc]) and np.isnan(columns["CORR20"][85, ccc])
    assert columns["STD5"][85, ccc] == 0.0 and columns["RANK5"][85, ccc] == np.float32(0.6)
    ggg = list(panel.instruments).index("GGG")
    assert panel.first[ggg] == N_DAYS - 3
    assert columns["CNTP5"][N_DAYS - 3, ggg] == 0.0 and columns["MA60"][N_DAYS - 3, ggg] == 1.0
    assert columns["IMAX60"][N_DAYS - 3, ggg] == np.float32(1 / 60)


@pytest.mark.parametrize("k", [1, 5])
def test_lookback_panel_reproduces_full_history_bit_for_bit(frame: pd.DataFrame, panel: Panel, k: int):
    """A panel of the last 61+k days, with first dates as the loader passes them, gives identical last k rows."""
    first_dates = frame.groupby("instrument")["date"].min().to_dict()
    cut = panel.dates[-(LOOKBACK_ROWS + k)]
    short = panel_from_frame(frame[frame["date"] >= cut], first_dates=first_dates)
    assert list(short.instruments) == list(panel.instruments)
    full_columns = [*alpha158_columns(panel), *alpha360_columns(panel), (LABEL_NAME, label(panel))]
    short_columns = [*alpha158_columns(short), *alpha360_columns(short), (LABEL_NAME, label(short))]
    for (name, full), (_, part) in zip(full_columns, short_columns, strict=True):
        np.testing.assert_array_equal(part[-k:], full[-k:], err_msg=name)


def test_a_day_a_csv_lacks_gets_qlibs_features_through_the_ingest_and_the_store(tmp_path, sp500):
    """Real sp500 rows of four stocks, three of which lack days (UA five, ESS and MMC one each): ingested and
    featurized as the pipeline does, the stored Alpha158 rows are the oracle's on Qlib's layout of the same files
    (dump_bin: each stock's days between its first and last rows, NaN where it has none), the lacking days included;
    before, those days had no row, where Qlib scores 80 of their 158 columns."""
    import duckdb

    from qpipe.calendar import calendar_for
    from qpipe.data.ingest import ingest_prices
    from qpipe.data.tabular import TabularSource
    from qpipe.features.store import FEATURE_SETS, write_features
    from qpipe_tests.test_sources import SP500_GAPS

    rows = sp500[sp500["symbol"].isin(["UA", "ESS", "MMC", "AAPL"]) & sp500["date"].astype(str).between(
        "2015-01-02", "2016-04-29")]
    path = tmp_path / "prices.csv"
    rows.drop(columns=["factor"]).to_csv(path, index=False)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        ingest_prices(con, TabularSource(str(path)), calendar_for("auto", "tabular", str(path)),
                      pd.Timestamp("2015-01-02"), pd.Timestamp("2016-04-29"), "test", allow_missing=True)
        write_features(con, [FEATURE_SETS["alpha158"]], "2015-04-01", "2016-04-29")
        stored = con.execute("SELECT * FROM features.alpha158 ORDER BY date, instrument").df()

    factor = rows["adj_close"] / rows["close"]
    adjusted = pd.DataFrame({"date": pd.to_datetime(rows["date"]), "instrument": rows["symbol"],
                             **{c: rows[c] * factor for c in ("open", "high", "low", "close")},
                             "volume": rows["volume"] / factor})
    calendar = np.sort(adjusted["date"].unique())
    qlib_layout = pd.concat(  # dump_bin's data_merge_calendar: the calendar between the stock's first and last rows
        [group.set_index("date").reindex(calendar[(calendar >= group["date"].min()) & (calendar <= group["date"].max())])
         .rename_axis("date").reset_index().assign(instrument=name)
         for name, group in adjusted.groupby("instrument")], ignore_index=True)
    panel = panel_from_frame(qlib_layout)
    inside = panel.dates >= np.datetime64("2015-04-01")
    expected_rows = [(pd.Timestamp(d), name) for t, d in enumerate(panel.dates) if inside[t]
                     for j, name in enumerate(panel.instruments) if panel.present[t, j]]
    assert list(stored[["date", "instrument"]].itertuples(index=False, name=None)) == expected_rows
    lacking = {(pd.Timestamp(d), name) for d, name in SP500_GAPS}
    assert len(lacking) == 7 and lacking <= set(expected_rows)
    index = {key: i for i, key in enumerate(expected_rows)}
    numbers = {f"{d:%Y-%m-%d} {name}": int(stored.iloc[index[(d, name)], 2:].notna().sum()) for d, name in lacking}
    assert set(numbers.values()) == {80}  # of 158: the windows that reach past the empty day, as Qlib scores them
    for name, expression in qlib.alpha158_expressions():
        ref = qlib.evaluate_panel(expression, panel)[inside][panel.present[inside]].astype(np.float64)
        ours = stored[name].to_numpy(np.float64)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{name}: NaN mask differs")
        np.testing.assert_array_equal(ours[np.isinf(ref)], ref[np.isinf(ref)], err_msg=name)
        finite = np.isfinite(ref)
        # pandas' rolling std, Qlib's, of volumes in the millions carries its own history's rounding (1.4e-5 in WVMA5)
        error = np.abs(ours[finite] - ref[finite]) / np.maximum(1.0, np.abs(ref[finite]))
        assert error.max(initial=0.0) <= 1e-4, f"{name}: max scaled error {error.max():.3g}"
