"""Price sources read real data exactly, and bad input fails with a message that says where."""

import numpy as np
import pandas as pd
import pytest

from qpipe.data.qlib_provider import QlibSource, write_qlib_provider
from qpipe.data.sources import load_source, open_source
from qpipe.data.tabular import TabularSource
from qpipe.data.validation import PriceDataError


def _expected_adjusted(sp500: pd.DataFrame) -> pd.DataFrame:
    """What qpipe must hold for the S&P data: Yahoo OHLC x (adj_close / close), volume / factor."""
    f = sp500["adj_close"] / sp500["close"]
    out = pd.DataFrame({"date": pd.to_datetime(sp500["date"]), "instrument": sp500["symbol"],
                        "close": sp500["close"] * f, "high": sp500["high"] * f, "volume": sp500["volume"] / f})
    return out.sort_values(["date", "instrument"]).reset_index(drop=True)


def test_csv_folder_of_per_symbol_files_reads_all_of_sp500(tmp_path, sp500):
    folder = tmp_path / "csv"
    folder.mkdir()
    raw = sp500.drop(columns=["factor"]).rename(columns={"date": "Date", "adj_close": "Adj Close"})
    for symbol, rows in raw.groupby("symbol"):
        rows.to_csv(folder / f"{symbol}.csv", index=False)
    prices = TabularSource(str(folder)).prices()
    expected = _expected_adjusted(sp500)
    assert prices["instrument"].nunique() == 489
    prices = prices[prices["close"].notna()].reset_index(drop=True)  # and the 7 days the files lack: see below
    assert len(prices) == 606_505
    np.testing.assert_allclose(prices["close"], expected["close"], rtol=1e-12)
    np.testing.assert_allclose(prices["volume"], expected["volume"], rtol=1e-12)
    assert prices["vwap"].isna().all()  # the source has no vwap, so VWAP features will be NaN as in Qlib
    assert (prices["high"] >= prices["low"]).all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_name_column_is_the_symbol_whatever_else_the_header_holds(tmp_path, sp500, suffix):
    """Found by a user: the per-ticker files of sp500_5yr call the symbol ``Name``, which collided with a column
    of the scan's own file list ("Ambiguous reference to column name"); ``filename`` and ``id`` did too."""
    raw = sp500.head(200).drop(columns=["factor"]).rename(
        columns={"date": "Date", "adj_close": "Adj Close", "symbol": "Name"}).assign(filename="x", id=3)
    path = tmp_path / f"named{suffix}"
    raw.to_csv(path, index=False) if suffix == ".csv" else raw.to_parquet(path)
    expected = _expected_adjusted(sp500.head(200))
    for columns in ({}, {"Name": "instrument"}):  # recognised by its alias, and mapped as the README shows
        prices = TabularSource(str(path), columns=columns).prices()
        assert prices["instrument"].tolist() == expected["instrument"].tolist()
        np.testing.assert_allclose(prices["close"], expected["close"], rtol=1e-12)
    assert len(TabularSource(str(path)).prices(expected["date"].iloc[50], expected["date"].iloc[-1])) > 0


def test_parquet_file_with_mapped_columns(tmp_path, sp500):
    path = tmp_path / "renamed.parquet"
    sp500.rename(columns={"symbol": "permno", "close": "px_last"}).to_parquet(path)
    prices = TabularSource(str(path), columns={"permno": "instrument", "px_last": "close"}).prices().dropna(
        subset="close", ignore_index=True)  # the 7 suspended days the files lack (SP500_GAPS)
    expected = _expected_adjusted(sp500)
    np.testing.assert_allclose(prices["close"], expected["close"], rtol=1e-12)


def test_already_adjusted_rows_are_taken_as_they_are(tmp_path, sp500):
    path = tmp_path / "adj.csv"
    sp500.head(100).to_csv(path, index=False)
    prices = TabularSource(str(path), prices_adjusted=True).prices()
    expected = sp500.head(100).sort_values(["date", "symbol"])
    np.testing.assert_allclose(prices["close"], expected["close"], rtol=1e-12)


SP500_GAPS = {("2015-04-28", "MMC"), ("2015-08-25", "ESS"), *((day, "UA") for day in (
    "2015-11-09", "2015-12-14", "2016-02-08", "2016-02-22", "2016-03-21"))}  # the rows SOURCE.md says were dropped


def test_a_day_a_stock_lacks_between_its_first_and_last_rows_is_read_as_qlibs_dump_bin_writes_it(tmp_path, sp500):
    """Qlib's dump_bin writes each stock's days between its first and last rows, a day without a row as NaN: a
    suspended day, whose Alpha158 features (windows reaching past it) Qlib still scores. Before, such a day had no
    row in qpipe, and so no features: a user's CSV of suspended stocks did not give Qlib's figures."""
    path = tmp_path / "sp500.parquet"
    sp500.to_parquet(path)
    source = TabularSource(str(path))
    prices = source.prices()
    empty = prices[prices["close"].isna()]
    assert {(f"{d:%Y-%m-%d}", name) for d, name in empty[["date", "instrument"]].itertuples(index=False)} == SP500_GAPS
    assert empty[["open", "high", "low", "vwap", "volume", "factor"]].isna().all(axis=None)
    assert len(prices) == len(sp500) + len(SP500_GAPS) and not prices.duplicated(["date", "instrument"]).any()
    assert prices.equals(prices.sort_values(["date", "instrument"], ignore_index=True))
    spans = prices.groupby("instrument")["date"].agg(["min", "max"])  # nothing before a first row or after a last
    expected = sp500.assign(date=pd.to_datetime(sp500["date"])).groupby("symbol")["date"].agg(["min", "max"])
    assert spans.rename_axis("symbol").equals(expected)
    assert spans.loc["BHF", "min"] == pd.Timestamp("2017-07-17") and spans.loc["COH", "max"] == pd.Timestamp("2017-10-30")
    # a window holds the days of its range, the window of the day alone too
    window = source.prices("2015-12-01", "2015-12-31")
    assert window.equals(prices[prices["date"].between("2015-12-01", "2015-12-31")].reset_index(drop=True))
    day = source.prices("2016-02-08", "2016-02-08")
    assert day["close"].isna().sum() == 1 and day.loc[day["close"].isna(), "instrument"].tolist() == ["UA"]
    # a file changed since the last read is read again
    sp500[~((sp500["symbol"] == "AAPL") & (sp500["date"].astype(str) == "2016-02-09"))].to_parquet(path)
    again = source.prices("2016-02-08", "2016-02-10")
    assert set(again.loc[again["close"].isna(), "instrument"]) == {"UA", "AAPL"}


def test_qlib_provider_round_trip_keeps_suspension_rows_and_membership(tmp_path, sp500):
    canonical = load_source("tabular", str(_write(tmp_path, sp500)))
    universe = pd.DataFrame({"market": "sp10", "instrument": ["AAPL", "MSFT", "AAPL"],
                             "start_date": pd.to_datetime(["2013-01-02", "2013-01-02", "2016-01-04"]),
                             "end_date": pd.to_datetime(["2014-12-31", "2017-12-05", "2017-12-05"])})
    root = write_qlib_provider(canonical.prices, tmp_path / "qlib", universe)
    back = QlibSource(str(root), market="sp10", ingest="all")
    loaded = back.prices()
    # Qlib has a row for every calendar day of a listing span; MMC and ESS each lack one day -> NaN rows.
    gaps = loaded[loaded["close"].isna()]
    assert set(gaps["instrument"]) >= {"MMC", "ESS"}
    merged = canonical.prices.merge(loaded, on=["date", "instrument"], suffixes=("", "_q"))
    assert len(merged) == len(canonical.prices)
    np.testing.assert_allclose(merged["close_q"], merged["close"].astype(np.float32), rtol=0)
    spans = back.universe()
    assert spans.groupby("instrument").size().to_dict() == {"AAPL": 2, "MSFT": 1}


def _write(tmp_path, sp500):
    path = tmp_path / "sp500.csv"
    sp500.drop(columns=["factor"]).to_csv(path, index=False)
    return path


GOOD = "date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,10.5,1000\n2024-01-03,AAA,10.5,11,10,10.8,900\n"
BAD_CASES = {
    "missing column": ("date,symbol,open,high,low,volume\n2024-01-02,AAA,10,11,9,1000\n", "missing columns", None),
    "misnamed column": ("date,symbol,open,high,low,closing,volume\n2024-01-02,AAA,10,11,9,10,1000\n",
                        "missing columns", None),
    "non-numeric": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,abc,1000\n",
                    "non-numeric close", "AAA"),
    "negative price": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,-3,1000\n",
                       "non-positive close", "AAA"),
    "zero price": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,0,11,9,10,1000\n",
                   "non-positive open", "AAA"),
    "high below low": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,9,11,10,1000\n",
                       "high < low", "AAA"),
    "duplicate row": (GOOD + "2024-01-03,AAA,10.5,11,10,10.8,900\n", "duplicate (instrument, date) row", "AAA"),
    "unparseable date": ("date,symbol,open,high,low,close,volume\n2024-13-45,AAA,10,11,9,10,1000\n",
                         "unparseable date", "AAA"),
    "NaN price": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,,1000\n",
                  "incomplete price row", "AAA"),
    "close above high": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,12,1000\n",
                         "close > high", "AAA"),
    "open below low": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,8,11,9,10,1000\n",
                       "open < low", "AAA"),
    "volume 1e30": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,10,1e30\n",
                    "implausible volume", "AAA"),
    "close 1e30": ("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,1e30,9,1e30,1000\n",
                   "implausible high", "AAA"),  # (found by a user: stored, with a split-like-move warning only)
    "no symbol": ("date,symbol,open,high,low,close,volume\n2024-01-02, ,10,11,9,10,1000\n", "missing instrument", None),
    "negative close beside an adj close": ("date,symbol,open,high,low,close,adj close,volume\n"
                                           "2024-01-02,AAA,10,11,9,-3,49,1000\n", "non-positive close", "AAA"),
    "empty adj close on one row": ("date,symbol,open,high,low,close,adj close,volume\n2024-01-02,AAA,10,11,9,10,9.5,1000\n"
                                   "2024-01-03,AAA,10.5,11,10,10.8,,900\n", "missing factor", "AAA"),
    "empty close beside an adj close": ("date,symbol,open,high,low,close,volume,adj_close\n"
                                        "2024-01-02,AAA,10,11,9,,100,9\n", "incomplete price row", "AAA"),
    # (found in review: the factor adj close / close was empty, so every adjusted price was, and the row was stored
    # as a suspended day)
    "zero factor": ("date,symbol,open,high,low,close,volume,factor\n2024-01-02,AAA,10,11,9,10,1000,0\n",
                    "non-positive factor", "AAA"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_csv_names_file_instrument_date_and_rule(tmp_path, case):
    text, rule, instrument = BAD_CASES[case]
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "good.csv").write_text(GOOD.replace("AAA", "BBB"))
    (folder / "bad.csv").write_text(text)
    with pytest.raises(PriceDataError) as err:
        TabularSource(str(folder)).prices()
    message = str(err.value)
    assert rule in message and "bad.csv" in message and "Nothing was written" in message
    if instrument:
        assert f"instrument {instrument}" in message
    if rule not in ("missing columns", "unparseable date"):
        assert "2024-01-0" in message  # the offending row's date


def test_empty_source_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriceDataError, match="empty source"):
        TabularSource(str(tmp_path / "empty")).prices()
    (tmp_path / "header_only.csv").write_text("date,symbol,open,high,low,close,volume\n")
    with pytest.raises(PriceDataError, match="empty source"):
        TabularSource(str(tmp_path / "header_only.csv")).prices()
    with pytest.raises(PriceDataError, match="source not found"):
        TabularSource(str(tmp_path / "nowhere")).prices()


def test_qlib_bin_longer_than_calendar_is_rejected(tmp_path, sp500):
    canonical = load_source("tabular", str(_write(tmp_path, sp500)))
    root = write_qlib_provider(canonical.prices[canonical.prices["instrument"].isin(["AAPL", "MSFT"])], tmp_path / "q")
    bin_path = root / "features" / "msft" / "close.day.bin"
    np.hstack([np.fromfile(bin_path, dtype="<f4"), np.float32(1.0)]).astype("<f4").tofile(bin_path)
    with pytest.raises(PriceDataError) as err:
        QlibSource(str(root)).prices()
    assert "bin length does not match the calendar" in str(err.value)
    assert "msft" in str(err.value) and "MSFT" in str(err.value)


def test_a_rule_message_shows_the_value_in_the_file_beside_the_adjusted_one(tmp_path):
    path = tmp_path / "adjusted.csv"
    path.write_text("date,symbol,open,high,low,close,volume,factor\n2024-01-02,AAA,10,11,9,-3,1000,0.5\n")
    with pytest.raises(PriceDataError, match=r"non-positive close: .*close=-3 in the file \(-1.5 adjusted\)"):
        TabularSource(str(path)).prices()


def test_column_names_from_settings_and_headers_stay_names_never_sql(tmp_path):
    """Found by a user: a QPIPE_SOURCE_COLUMNS value such as "vwap, error('x') AS boom" ran as SQL."""
    path = tmp_path / "quoted.csv"
    path.write_text('date,symbol,open,high,low,"px""last",volume\n2024-01-02,AAA,10,11,9,10.5,1000\n')
    prices = TabularSource(str(path), columns={'px"last': "close"}).prices()
    assert prices["close"].tolist() == [10.5]
    with pytest.raises(PriceDataError, match=r"unknown column mapping: .*maps 'px\"last' to \"close, error\('x'\) AS boom\", "
                                             r"which is not a qpipe column \(one of date, instrument, open"):
        TabularSource(str(path), columns={'px"last': "close, error('x') AS boom"}).prices()


def test_dates_in_another_format_are_read_with_qpipe_source_date_format(tmp_path):
    """Found by a user: a file of MM/DD/YYYY dates failed the code location's import with 'no dates to make a
    calendar of' and an 82-line traceback."""
    from qpipe.calendar import calendar_for

    iso = tmp_path / "iso.csv"
    iso.write_text(GOOD + "2024-01-16,AAA,11,12,10,11.5,800\n")
    expected = TabularSource(str(iso)).prices()
    us = tmp_path / "us.csv"
    us.write_text(GOOD.replace("2024-01-02", "01/02/2024").replace("2024-01-03", "01/03/2024")
                  + "01/16/2024,AAA,11,12,10,11.5,800\n")
    for call in (lambda: TabularSource(str(us)).prices(), lambda: calendar_for("auto", "tabular", str(us))):
        with pytest.raises(PriceDataError, match=r"unparseable date: source .*us.csv.*date value '01/0[23]/2024' is not "
                                                 r"a date \(YYYY-MM-DD or YYYYMMDD; its dates may be '%m/%d/%Y' or "
                                                 r"'%d/%m/%Y': set QPIPE_SOURCE_DATE_FORMAT"):
            call()
    pd.testing.assert_frame_equal(TabularSource(str(us), date_format="%m/%d/%Y").prices(), expected)
    calendar = calendar_for("auto", "tabular", str(us), date_format="%m/%d/%Y")
    assert [str(d) for d in calendar.sessions] == ["2024-01-02", "2024-01-03", "2024-01-16"]
    one_day = TabularSource(str(us), date_format="%m/%d/%Y").prices("2024-01-16", "2024-01-16")
    assert one_day["date"].tolist() == [pd.Timestamp("2024-01-16")]  # a day's read filters inside the scan
    with pytest.raises(PriceDataError, match=r"date value '01/02/2024' is not a date in the format '%d.%m.%Y'"):
        TabularSource(str(us), date_format="%d.%m.%Y").prices()
    with pytest.raises(PriceDataError, match=r"date value '01/16/2024' is not a date in the format '%d/%m/%Y'"):
        calendar_for("auto", "tabular", str(us), date_format="%d/%m/%Y")  # not a calendar of the dates that parse
    shanghai = tmp_path / "shanghai.parquet"  # a time zone east of UTC: that zone's days, not UTC's
    local = expected.assign(date=expected["date"].dt.tz_localize("Asia/Shanghai"))
    local.rename(columns={"instrument": "symbol"}).drop(columns=["vwap", "factor"]).to_parquet(shanghai)
    pd.testing.assert_frame_equal(TabularSource(str(shanghai)).prices(), expected)
    assert TabularSource(str(shanghai)).prices("2024-01-16", "2024-01-16")["date"].tolist() == [pd.Timestamp("2024-01-16")]
    compact = tmp_path / "compact.csv"  # YYYYMMDD needs no setting
    compact.write_text(GOOD.replace("2024-01-02", "20240102").replace("2024-01-03", "20240103")
                       + "20240116,AAA,11,12,10,11.5,800\n")
    pd.testing.assert_frame_equal(TabularSource(str(compact)).prices(), expected)


def test_a_column_mapping_names_a_column_of_the_files_in_any_case(tmp_path):
    """Found by a user: QPIPE_SOURCE_COLUMNS naming a column no file has was accepted without a word."""
    path = tmp_path / "prices.csv"
    path.write_text(GOOD.replace("close", "px_last"))
    assert TabularSource(str(path), columns={"PX_Last": "close"}).prices()["close"].tolist() == [10.5, 10.8]
    with pytest.raises(PriceDataError, match=r"unknown column mapping: source .*prices.csv: QPIPE_SOURCE_COLUMNS maps "
                                             r"'Close', which no file of the source has \(its columns: date, high, "):
        TabularSource(str(path), columns={"Close": "close"}).prices()


def test_a_company_name_column_beside_the_symbol_is_not_taken_for_the_instrument(tmp_path, sp500):
    """Found in review: a vendor's ``name`` column ("AAPL Inc.") before ``symbol`` was stored as the instrument, 30
    new stocks and no row for the stored ones; so would a ``time`` column before ``date`` be."""
    raw = sp500.head(200).drop(columns=["factor"]).rename(columns={"adj_close": "Adj Close"})
    raw.insert(0, "name", raw["symbol"] + " Inc.")
    raw.insert(0, "time", "00:00")
    raw.to_csv(tmp_path / "vendor.csv", index=False)
    prices = TabularSource(str(tmp_path / "vendor.csv")).prices()
    expected = _expected_adjusted(sp500.head(200))
    assert prices["instrument"].tolist() == expected["instrument"].tolist()
    assert prices["date"].tolist() == expected["date"].tolist()
    # two columns mapped to one: one of them was dropped in silence
    with pytest.raises(PriceDataError, match=r"column mapped twice: .*QPIPE_SOURCE_COLUMNS maps 'close' and 'Adj Close' "
                                             r"to 'close': one of them would be dropped in silence"):
        TabularSource(str(tmp_path / "vendor.csv"), columns={"Adj Close": "close", "close": "close"}).prices()
    # two vendors' files, each with its own name of the date (found in code review: refused as mapped twice)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.csv").write_text(GOOD.replace("date", "TradeDate"))
    (tmp_path / "two" / "b.csv").write_text(GOOD.replace("date", "Dt").replace("AAA", "BBB"))
    both = TabularSource(str(tmp_path / "two"), columns={"TradeDate": "date", "Dt": "date"}).prices()
    assert sorted(both["instrument"].unique()) == ["AAA", "BBB"] and len(both) == 4


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    """Found in review: Excel's "CSV UTF-8" begins with a byte-order mark, and its first column, '\\ufeffdate',
    was not found, nor could QPIPE_SOURCE_COLUMNS name it as the error said."""
    (tmp_path / "excel.csv").write_bytes(GOOD.encode("utf-8-sig"))
    assert TabularSource(str(tmp_path / "excel.csv")).prices()["close"].tolist() == [10.5, 10.8]
    assert TabularSource(str(tmp_path / "excel.csv"), columns={"date": "date"}).prices()["close"].tolist() == [10.5, 10.8]


def test_a_row_in_two_files_names_both(tmp_path):
    """Found in review: a file downloaded twice ('AAPL (1).csv') named only one of them."""
    (tmp_path / "AAA.csv").write_text(GOOD)
    (tmp_path / "AAA (1).csv").write_text(GOOD)
    with pytest.raises(PriceDataError, match=r"duplicate \(instrument, date\) row: .*the row appears more than once, "
                                             r"in .*AAA \(1\).csv and .*AAA.csv"):
        TabularSource(str(tmp_path)).prices()


def test_broken_files_are_named_with_what_is_wrong(tmp_path, sp500):
    """Found by a user: pyarrow's message without a file name, and DuckDB's suggesting reader options."""
    cut = tmp_path / "cut.csv"
    cut.write_text("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,10.5,1000\n2024-01-03,AAA,10,1")
    with pytest.raises(PriceDataError, match=r"malformed file: source .*cut.csv: line 3 '2024-01-03,AAA,10,1': "
                                             r"4 values where the header has 7 \(a file cut mid-row"):
        TabularSource(str(cut)).prices()
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    whole = tmp_path / "whole.parquet"
    sp500.head(2000).to_parquet(whole)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for path in (empty, truncated):
        with pytest.raises(PriceDataError, match=rf"unreadable Parquet file: source .*{path.name}: .*"
                                                 r"\(an empty, truncated or non-Parquet file\)"):
            TabularSource(str(path)).prices()


def test_qlib_bin_with_a_corrupt_header_is_named(tmp_path, sp500):
    canonical = load_source("tabular", str(_write(tmp_path, sp500)))
    root = write_qlib_provider(canonical.prices[canonical.prices["instrument"].isin(["AAPL", "MSFT"])], tmp_path / "q")
    bin_path = root / "features" / "aapl" / "open.day.bin"
    values = np.fromfile(bin_path, dtype="<f4")
    values[0] = 1.5
    values.tofile(bin_path)
    with pytest.raises(PriceDataError, match=r"corrupt bin header: source .*aapl.open.day.bin, instrument AAPL"):
        QlibSource(str(root)).prices("2016-01-04", "2016-01-04")


def test_unknown_source_kind_is_named():
    with pytest.raises(ValueError, match="unknown price source 'yahoo'"):
        load_source("yahoo", "/tmp")


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux /proc/self/io)."""
    return int(next(line for line in open("/proc/self/io") if line.startswith("rchar")).split()[1])


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """60 instruments over 2 1/2 years as a Qlib provider, with a membership file and a benchmark index."""
    from qpipe.data.synthetic import SyntheticSpec, generate_market

    market = generate_market(SyntheticSpec(n_instruments=60, index_size=20, seed=5), end="2022-06-30")
    prices = market.prices.copy()
    index = prices[prices["instrument"] == "SYN0060"].assign(instrument="SH000300")
    prices = pd.concat([prices[prices["instrument"] != "SYN0060"], index], ignore_index=True)
    universe = market.universe[market.universe["market"] == "syn20"]
    root = write_qlib_provider(prices, tmp_path_factory.mktemp("qlib") / "provider", universe)
    return root, prices, universe


def test_qlib_window_is_the_slice_of_the_full_read_and_seeks_past_the_rest(provider):
    root, _, _ = provider
    source = QlibSource(str(root), ingest="all")
    full = source.prices()
    size = sum(p.stat().st_size for p in (root / "features").rglob("*.bin"))
    for start, end in (("2021-03-02", "2021-03-02"), ("2020-12-28", "2021-01-08"), ("2020-01-02", "2020-01-02")):
        before = _bytes_read()
        window = source.prices(start, end)
        read = _bytes_read() - before
        expected = full[(full["date"] >= start) & (full["date"] <= end)].reset_index(drop=True)
        pd.testing.assert_frame_equal(window, expected)
        if start == end:  # one day: the 7 bins' headers and one value each, plus day.txt and the folder listing
            assert read < 0.05 * size, (read, size)
    assert source.prices("2030-01-02", "2030-01-31").empty  # after the calendar: no rows, no error


def test_qlib_market_reads_its_members_since_the_first_partition_and_the_benchmark(provider):
    root, prices, universe = provider
    (root / "instruments" / "syn20.txt").write_text((root / "instruments" / "syn20.txt").read_text() + "GHOST\t2020-01-02\t2022-06-30\n")
    since = "2021-01-04"
    source = QlibSource(str(root), market="syn20", benchmark="SH000300", since=since)
    members = set(universe.loc[universe["end_date"] >= since, "instrument"])
    assert 0 < len(members) < prices["instrument"].nunique() - 1
    read = source.prices()
    assert set(read["instrument"]) == members | {"SH000300"}
    assert source.missing_members() == ["GHOST"]
    everything = QlibSource(str(root), market="syn20", ingest="all").prices()
    assert set(everything["instrument"]) == set(prices["instrument"])
    with pytest.raises(PriceDataError, match="missing benchmark.*SH000905"):
        QlibSource(str(root), market="syn20", benchmark="SH000905").prices()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_tabular_window_is_the_slice_of_the_full_read(tmp_path, sp500, suffix):
    path = tmp_path / f"prices.{suffix}"
    sp500.to_csv(path, index=False) if suffix == "csv" else sp500.to_parquet(path, index=False)
    source = TabularSource(str(path))
    full = source.prices()
    window = source.prices("2016-03-01", "2016-03-04")
    expected = full[(full["date"] >= "2016-03-01") & (full["date"] <= "2016-03-04")].reset_index(drop=True)
    assert len(expected) > 1500
    pd.testing.assert_frame_equal(window, expected)
    assert source.prices("2030-01-02", "2030-01-02").empty


def test_a_new_file_without_volume_fails_its_ingest_not_the_code_location(tmp_path):
    """Found in review: a vendor's new day file without its volume column took the whole code location down (the
    schedule, the sensors and the UI's assets gone) because the calendar read every column's mapping."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.csv").write_text("date,symbol,open,high,low,close,volume\n2024-01-02,AAA,10,11,9,10.5,100\n"
                                  "2024-01-03,AAA,10,11,9,10.5,100\n")
    (folder / "b.csv").write_text("date,symbol,open,high,low,close\n2024-01-04,AAA,10,11,9,10.5\n")
    env = {**os.environ, "QPIPE_HOME": str(tmp_path / "home"), "QPIPE_SOURCE": "tabular",
           "QPIPE_SOURCE_PATH": str(folder), "QPIPE_PARTITIONS_START": "2024-01-02"}
    loaded = subprocess.run([sys.executable, "-c", "from qpipe.definitions import defs; from qpipe.partitions import "
                             "trading_days; print(trading_days.get_partition_keys())"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert loaded.returncode == 0 and "'2024-01-04'" in loaded.stdout, loaded.stderr[-2000:]
    with pytest.raises(PriceDataError, match=r"missing columns: source .*b.csv: required \['volume'\]"):
        TabularSource(str(folder)).prices("2024-01-04", "2024-01-04")


def test_a_benchmark_the_source_lacks_is_refused_by_the_universe_not_by_the_backtest(tmp_path, sp500):
    """Found in review: QPIPE_BENCHMARK=SPX over a CSV without SPX failed in the backtest, after prices, features
    and every checkpoint; the universe, the first step, now names it (as the Qlib provider does)."""
    path = tmp_path / "prices.parquet"
    sp500[pd.to_datetime(sp500["date"]) < "2016-03-01"].to_parquet(path, index=False)
    with pytest.raises(PriceDataError, match=r"missing benchmark: source .*prices.parquet, instrument SPX: no rows "
                                             r"for the benchmark index \(QPIPE_BENCHMARK\)"):
        open_source("tabular", str(path), benchmark="SPX").reference()
    # The benchmark is no member of the market the file lists (found in review: a CSV's index ^HSI was trained on,
    # scored, counted in the daily IC, and bought once it had a volume); its rows are still read, its returns.
    index = sp500["symbol"].iloc[0]
    source = open_source("tabular", str(path), benchmark=index)
    members = set(source.reference()[0]["instrument"])
    assert index not in members and len(members) == pd.read_parquet(path)["symbol"].nunique() - 1
    assert index in set(source.prices("2016-02-01", "2016-02-05")["instrument"])
    with pytest.raises(ValueError, match="synthetic market has no index instrument; leave QPIPE_BENCHMARK empty"):
        open_source("synthetic", benchmark="SH000300")


CONCEPT_CASES = {
    "missing column": ("symbol,kind\nAAA,sector\n", "missing columns", "required ['concept'] not found"),
    "duplicate row": ("ticker,concept\nAAA,AI\nBBB,AI\nAAA,AI\n", "duplicate (instrument, concept) row", "data row 3"),
    "unknown kind": ("instrument,concept,kind\nAAA,AI,theme\n", "unknown kind", "kind is one of sector, concept"),
    "empty concept": ("instrument,concept\nAAA,\n", "empty instrument or concept", "data row 1"),
    "empty file": ("instrument,concept\n", "empty concepts file", "no memberships"),
}


@pytest.mark.parametrize("case", sorted(CONCEPT_CASES))
def test_a_bad_concepts_file_is_named_with_its_line_and_rule(tmp_path, case):
    from qpipe.data.concepts import read_concepts

    text, rule, detail = CONCEPT_CASES[case]
    path = tmp_path / "concepts.csv"
    path.write_text(text)
    with pytest.raises(PriceDataError) as err:
        read_concepts(path)
    assert str(err.value).startswith(f"{rule}: source {path}") and detail in str(err.value), str(err.value)


def test_a_concepts_file_takes_common_names_and_a_missing_kind_is_concept(tmp_path):
    from qpipe.data.concepts import read_concepts

    path = tmp_path / "concepts.csv"
    path.write_text("Ticker, Industry\nBBB,Banks\nAAA,Energy\n\nAAA,Banks\n")
    assert read_concepts(path).values.tolist() == [["AAA", "Banks", "concept"], ["AAA", "Energy", "concept"],
                                                    ["BBB", "Banks", "concept"]]
    path.write_text("symbol,concept,Kind\nNA,AI,\nNULL,Banks,Sector\n")  # tickers NA and NULL; kind's case; blank
    assert read_concepts(path).values.tolist() == [["NA", "AI", "concept"], ["NULL", "Banks", "sector"]]
    with pytest.raises(PriceDataError, match="concepts file not found: source .*nowhere.csv: QPIPE_CONCEPTS names no file"):
        read_concepts(tmp_path / "nowhere.csv")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(PriceDataError, match="unreadable concepts file: source .*cut.parquet"):
        read_concepts(tmp_path / "cut.parquet")


def vendor_always_writing(monkeypatch, path) -> None:
    """Each read of the rows of ``path`` (a CSV of GOOD's columns) is followed by a row more in the file: a vendor
    still writing it."""
    rows = TabularSource._rows

    def read_then_append(self, files, start, end):
        frame = rows(self, files, start, end)
        with path.open("a") as file:
            file.write(f"2024-01-04,S{path.stat().st_size},10,11,9,10,100\n")
        return frame

    monkeypatch.setattr(TabularSource, "_rows", read_then_append)


def test_files_written_while_they_are_read_are_read_again_and_never_give_a_made_up_suspended_day(tmp_path, monkeypatch):
    """Found in review: a vendor finishing the day's file between the read of its rows and the scan of its stocks'
    last dates made every stock still unwritten a suspended day, which passed the partial-day refusal."""
    path = tmp_path / "prices.csv"
    header = "date,symbol,open,high,low,close,volume\n"
    done = [f"2024-01-0{d},{s},10,11,9,10,100\n" for d in (2, 3) for s in ("AAA", "BBB", "CCC")]
    path.write_text(header + "".join(done[:4]))  # the vendor has written 2024-01-03's AAA only
    source, reads = TabularSource(str(path)), []
    rows = TabularSource._rows

    def vendor_finishes_meanwhile(self, files, start, end):
        reads.append(start)
        frame = rows(self, files, start, end)
        if len(reads) == 1:
            path.write_text(header + "".join(done))
        return frame

    monkeypatch.setattr(TabularSource, "_rows", vendor_finishes_meanwhile)
    day = source.prices("2024-01-03", "2024-01-03")
    assert len(reads) == 2 and day["instrument"].tolist() == ["AAA", "BBB", "CCC"] and day["close"].notna().all()

    vendor_always_writing(monkeypatch, path)
    with pytest.raises(PriceDataError, match="source changing.*its files changed while they were read, 3 times"):
        source.prices("2024-01-03", "2024-01-03")
