"""CSV / Parquet price rows (one file, or a folder of files) -> the canonical price frame.

Columns are found by name, case-insensitively, through common aliases (``Date``, ``symbol``,
``ticker``, ``Adj Close`` ...) or an explicit ``columns={"your name": "close"}`` mapping.
DuckDB parses the files; every value is read as text first so that a bad value can be named
with its file, instrument and date instead of failing somewhere inside a parser.
"""

import csv
import gzip
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qpipe.data.ingest import read_in_blocks
from qpipe.data.validation import (
    CELLS_A_PRICE_ROW,
    UNIVERSE_COLUMNS,
    PriceDataError,
    empty_prices,
    first_few,
    listing_spans,
    no_concepts,
    validate_prices,
)
from qpipe.settings import LOAD_CELLS

ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("date", "datetime", "timestamp", "trade_date", "day", "time"),
    "instrument": ("instrument", "symbol", "ticker", "code", "name", "stock", "asset"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume", "vol"),
    "vwap": ("vwap",),
    "factor": ("factor", "adj_factor", "adjfactor"),
    "adj_close": ("adj_close", "adj close", "adjclose", "adjusted_close", "adjusted close"),
}
REQUIRED = ("date", "instrument", "open", "high", "low", "close", "volume")
NUMERIC = ("open", "high", "low", "close", "volume", "vwap", "factor", "adj_close")
SUFFIXES = (".csv", ".parquet", ".pq", ".csv.gz")


def _parquet_schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowException, OSError) as error:
        raise PriceDataError("unreadable Parquet file", str(file),
                             detail=f"{error} (an empty, truncated or non-Parquet file)") from None


def _zone(file: Path, parquet: bool, column: str) -> str | None:
    """The time zone of a Parquet timestamp column that has one: its dates are that zone's days, not UTC's."""
    kind = _parquet_schema(file).field(column).type if parquet else None
    return kind.tz if kind is not None and pa.types.is_timestamp(kind) and kind.tz else None


def _scan_or_explain(con: duckdb.DuckDBPyConnection, sql: str, source: str) -> duckdb.DuckDBPyConnection:
    """Run a scan; DuckDB's parser errors become one line naming the file, the line and what is wrong
    (its own text suggests reader options that a qpipe user cannot set)."""
    try:
        return con.execute(sql)
    except duckdb.Error as error:
        text = str(error)
        file = re.search(r"^\s*file = (.+)$", text, re.M)
        line = re.search(r"CSV Error on Line: (\d+)", text)
        original = re.search(r"^Original Line: (.*)$", text, re.M)
        columns = re.search(r"^Expected Number of Columns: (\d+) Found: (\d+)$", text, re.M)
        where = (f"line {line.group(1)}" if line else "") + (f" {original.group(1)!r}" if original else "")
        what = f"{columns.group(2)} values where the header has {columns.group(1)}" if columns else text.splitlines()[0]
        detail = f"{where}: {what}" if where else what
        raise PriceDataError("malformed file", file.group(1).strip() if file else source,
                             detail=f"{detail} (a file cut mid-row, or rows of another layout?)") from None


READS_OF_A_CHANGING_SOURCE = 3


@dataclass(frozen=True)
class Layout:
    """A source's calendar (its files' dates), its stocks, and the dates of each one's first and last rows."""

    days: np.ndarray  # datetime64[D], ascending
    instruments: np.ndarray  # object (str), sorted
    first: np.ndarray  # datetime64[D] per instrument
    last: np.ndarray


_LAYOUTS: dict[tuple, Layout] = {}  # TabularSource._layout's, of the source read last
_LAYOUT_LOCK = threading.Lock()


def _stamp(files: list[Path]) -> tuple:
    """What changes when a file does: its path, modification time and size."""
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


def _with_suspended_days(frame: pd.DataFrame, layout: Layout, start, end) -> pd.DataFrame:
    """``frame`` (sorted by date and instrument) with a row of empty prices for each day of the source's calendar,
    within start..end, between a stock's first and last rows that it has no row of: Qlib's ``dump_bin`` writes such a
    day so (a NaN row: its features, windows that reach past it, are still scored), and so ``raw.prices`` holds it
    as a suspended day."""
    days = layout.days
    days = days[(days >= np.datetime64(pd.Timestamp(start).date() if start is not None else days[0]))
                & (days <= np.datetime64(pd.Timestamp(end).date() if end is not None else days[-1]))]
    first = np.searchsorted(days, layout.first, "left")
    last = np.searchsorted(days, layout.last, "right")
    stocks = np.flatnonzero(last > first)  # those listed in the window
    present = np.zeros((len(days), len(stocks)), dtype=bool)
    column = np.full(len(layout.instruments), -1)
    column[stocks] = np.arange(len(stocks))
    listed = pd.Categorical(frame["instrument"], categories=layout.instruments).codes  # -1: not in the layout
    code = np.where(listed >= 0, column[listed], -1)
    row = np.searchsorted(days, frame["date"].to_numpy().astype("datetime64[D]"))
    seen = code >= 0
    present[row[seen], code[seen]] = True
    index = np.arange(len(days))[:, None]
    t, j = np.nonzero((index >= first[stocks]) & (index < last[stocks]) & ~present)
    if len(t) == 0:
        return frame
    empty = pd.DataFrame({"date": days[t].astype("datetime64[ns]"), "instrument": layout.instruments[stocks[j]]})
    empty = empty.reindex(columns=frame.columns).astype(frame.dtypes.to_dict())
    both = pd.concat([frame, empty], ignore_index=True)
    # in (date, instrument) order, as the frame was: sorted by day, then by the layout's sorted names
    names = np.concatenate([code, j])
    when = np.concatenate([row, t])
    order = np.lexsort((np.where(names >= 0, names, len(stocks)), when))
    return both.iloc[order].reset_index(drop=True)


FEW_BAD_DATES = 0.01  # the share of a source's distinct date values that may fail to parse: typos, not a wrong format
# Date formats a date column may be in, named in the hint of an "unparseable date" error.
DATE_FORMATS = ("%m/%d/%Y", "%d/%m/%Y", "%Y/%m/%d", "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y", "%Y.%m.%d", "%d-%b-%Y",
                "%b %d, %Y")


def _strptime(value: str, date_format: str) -> bool:
    try:
        datetime.strptime(value.strip(), date_format)
        return True
    except ValueError:
        return False


def identifier(name: str) -> str:
    """A column name as a quoted SQL identifier: whatever a file's header or a setting holds, it stays a name."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TabularSource:
    """A file or folder of CSV/Parquet rows.

    ``prices_adjusted=False`` (default) means open/high/low/close/vwap are traded prices and
    are multiplied by the factor (``factor`` column, else ``adj_close / close``, else 1), volume
    divided by it, as Qlib adjusts. Set it True for rows that are already adjusted.
    """

    path: str
    columns: dict[str, str] = field(default_factory=dict)
    prices_adjusted: bool = False
    date_format: str = ""  # strptime format of the date column (QPIPE_SOURCE_DATE_FORMAT); default ISO or YYYYMMDD
    benchmark: str = ""  # an index instrument the backtest compares with (QPIPE_BENCHMARK): it must have rows

    def files(self) -> list[Path]:
        root = Path(self.path)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise PriceDataError("source not found", str(root), detail="no such file or folder")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
        if not files:
            raise PriceDataError("empty source", str(root), detail=f"no {', '.join(SUFFIXES)} files inside")
        return files

    def prices(self, start=None, end=None) -> pd.DataFrame:
        """The rows dated start..end (all by default), and the days a stock lacks between its first and last rows as
        rows of empty prices (``_with_suspended_days``). The filter is pushed into DuckDB's scan, so only those rows
        are parsed and checked (a CSV is still read through; Parquet row groups are skipped by their statistics);
        rows whose date does not parse are kept, to be reported. Files that change while they are read (a vendor
        writing them) are read again: rows and first and last dates of one version of them."""
        for _ in range(READS_OF_A_CHANGING_SOURCE):
            files = self.files()
            stamp = _stamp(files)
            frame = self._rows(files, start, end)
            if frame.empty:
                return frame
            whole = frame if start is None and end is None else None
            layout = self._layout(stamp, whole)
            if _stamp(self.files()) == stamp:
                return _with_suspended_days(frame, layout, start, end)
        raise PriceDataError("source changing", self.path, detail=(
            f"its files changed while they were read, {READS_OF_A_CHANGING_SOURCE} times (a vendor writing them?): "
            "run again once they are written"))

    def _rows(self, files: list[Path], start, end) -> pd.DataFrame:
        """The files' rows dated start..end, validated."""
        scans = []
        for (parquet, header), ids in self._groups(files).items():
            mapping = self._mapping(files[ids[0]], list(header))
            scans.append(self._select(files, ids, parquet, list(header), mapping,
                                      self._date_filter(files[ids[0]], parquet, mapping, start, end),
                                      next((c for c in ("factor", "adj_close") if c in mapping.values()), "none")))
        con = duckdb.connect()
        try:
            _scan_or_explain(con, "CREATE TEMP TABLE rows AS " + " UNION ALL BY NAME ".join(scans), self.path)
            self._check_values(con, files)
            frame = con.execute(self._canonical_sql(con)).df()
        finally:
            con.close()
        if frame.empty and (start, end) != (None, None):
            return empty_prices()  # the source has no rows on those days: the caller says so
        frame["date"] = frame["date"].astype("datetime64[ns]")
        frame["_file"] = pd.Categorical.from_codes(frame.pop("_file_id"), [str(f) for f in files])
        return validate_prices(frame, self.path)

    def _layout(self, stamp: tuple, whole: pd.DataFrame | None = None) -> Layout:
        """The source's calendar, its stocks and the dates of their first and last rows: from ``whole``, its rows, where
        they were all read, else from a scan of its dates and symbols, once per version of its files (``stamp``: a
        long range's ingest reads its rows block by block)."""
        key = (self.path, tuple(sorted(self.columns.items())), self.date_format, stamp)
        with _LAYOUT_LOCK:
            if key in _LAYOUTS:
                return _LAYOUTS[key]
        if whole is not None:
            spans = whole.groupby("instrument")["date"].agg(["min", "max"])
            layout = Layout(np.unique(whole["date"].to_numpy().astype("datetime64[D]")), spans.index.to_numpy(object),
                            spans["min"].to_numpy().astype("datetime64[D]"),
                            spans["max"].to_numpy().astype("datetime64[D]"))
        else:
            spans = self._scan(("date", "instrument"), f"""
                SELECT trim(instrument) AS instrument, min({self._parsed('date')}) AS first,
                       max({self._parsed('date')}) AS last
                FROM scan WHERE instrument IS NOT NULL AND trim(instrument) <> '' GROUP BY 1 HAVING first IS NOT NULL
                ORDER BY 1""")
            layout = Layout(self._days(), np.asarray(spans["instrument"]).astype(object),
                            *(np.asarray(spans[end]).astype("datetime64[D]") for end in ("first", "last")))
        with _LAYOUT_LOCK:
            _LAYOUTS.clear()  # one source at a time is read; changed files make a new key
            _LAYOUTS[key] = layout
        return layout

    def reference(self, load_cells: int = LOAD_CELLS) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The ``all`` market (each symbol's first to last date) from the whole table, validated as the ingest
        validates a day's prices (a bad row anywhere fails the universe), in blocks of dates of about ``load_cells``
        / ``CELLS_A_PRICE_ROW`` rows: memory holds one block, not the table. No concepts."""
        days = self._days()
        blocks = read_in_blocks(days, load_cells // CELLS_A_PRICE_ROW, lambda i, j: self.prices(days[i], days[j - 1]))
        spans = pd.concat([listing_spans(rows) for _, rows in blocks], ignore_index=True)
        spans = spans.groupby(["market", "instrument"], as_index=False).agg(start_date=("start_date", "min"),
                                                                            end_date=("end_date", "max"))
        if self.benchmark and self.benchmark not in set(spans["instrument"]):  # else found by the backtest
            raise PriceDataError("missing benchmark", self.path, instrument=self.benchmark,
                                 detail="no rows for the benchmark index (QPIPE_BENCHMARK)")
        # The index is no member of the market its file lists (found in review: ^HSI was trained on, scored, counted
        # in the daily IC, and bought once it had a volume); its rows stay in raw.prices, the benchmark's returns.
        spans = spans[spans["instrument"] != self.benchmark]
        return spans[UNIVERSE_COLUMNS], no_concepts()

    def missing_members(self) -> list[str]:
        return []

    def span(self) -> tuple[np.datetime64, np.datetime64]:
        days = self._days()
        return days[0], days[-1]

    def _days(self) -> np.ndarray:
        """``dates()``, at least one."""
        days = self.dates()
        if len(days) == 0:
            raise PriceDataError("empty source", self.path, detail="no dated rows")
        return days

    def dates(self) -> np.ndarray:
        """The distinct dates in the files (the source's calendar), read from the date column alone. Where more than
        ``FEW_BAD_DATES`` of its distinct values do not parse, the format is wrong and the dates that happen to parse
        would make a calendar of wrong days: refused (a few bad rows are named by the ingest of their days)."""
        rows = self._scan(("date",), f"SELECT DISTINCT date AS raw, {self._parsed('date')} AS d FROM scan "
                                     "WHERE date IS NOT NULL ORDER BY d")
        parsed = ~np.ma.getmaskarray(rows["d"])
        bad = rows["raw"][~parsed]
        if len(bad) > FEW_BAD_DATES * len(parsed):
            raise PriceDataError("unparseable date", self.path, detail=f"{self._not_a_date(str(bad[0]))}; {len(bad)} of "
                                                                      f"its {len(parsed)} distinct dates do not parse")
        return np.unique(np.asarray(rows["d"][parsed]).astype("datetime64[D]"))

    def _parsed(self, column: str) -> str:
        """SQL of ``column`` (text) as a DATE, NULL where it is not one in the source's date format."""
        if self.date_format:
            quoted = self.date_format.replace("'", "''")  # a format is text in the SQL, never SQL
            # (ISO too: a Parquet date or timestamp column reaches here as its ISO text)
            return f"COALESCE(CAST(TRY_STRPTIME({column}, '{quoted}') AS DATE), TRY_CAST({column} AS DATE))"
        return f"COALESCE(TRY_CAST({column} AS DATE), CAST(TRY_STRPTIME({column}, '%Y%m%d') AS DATE))"

    def _not_a_date(self, value: str) -> str:
        if self.date_format:
            return f"date value {value!r} is not a date in the format {self.date_format!r} (QPIPE_SOURCE_DATE_FORMAT)"
        fits = [f for f in DATE_FORMATS if _strptime(value, f)]
        hint = (f"; its dates may be {' or '.join(repr(f) for f in fits)}: set QPIPE_SOURCE_DATE_FORMAT to the one "
                "they are" if fits else "")
        return f"date value {value!r} is not a date (YYYY-MM-DD or YYYYMMDD{hint})"

    def _scan(self, wanted: tuple[str, ...], query: str) -> dict:
        files = self.files()
        scans = []
        for (parquet, header), ids in self._groups(files).items():
            # only the columns it reads must be there: the calendar, read when the definitions load, needs the dates
            # alone, so a file missing its volume fails the ingest of its days, not the whole code location
            mapping = {src: dst for src, dst in self._mapping(files[ids[0]], list(header), wanted).items()
                       if dst in wanted}
            scans.append(self._select(files, ids, parquet, list(header), mapping))
        with duckdb.connect() as con:
            return _scan_or_explain(con, f"WITH scan AS ({' UNION ALL BY NAME '.join(scans)}) {query}", self.path).fetchnumpy()

    def _groups(self, files: list[Path]) -> dict[tuple[bool, tuple[str, ...]], list[int]]:
        """Files sharing a format and a header, read by one multi-file scan."""
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(files):
            groups.setdefault((self._is_parquet(f), tuple(self._header(f))), []).append(i)
        headers = {col.strip().lower() for _, header in groups for col in header}
        unmatched = [name for name in self.columns if name.strip().lower() not in headers]
        if unmatched:
            raise PriceDataError("unknown column mapping", self.path, detail=(
                f"QPIPE_SOURCE_COLUMNS maps {unmatched[0]!r}, which no file of the source has (its columns: "
                f"{first_few(sorted(headers), 20)})"))
        return groups

    @staticmethod
    def _is_parquet(file: Path) -> bool:
        return file.name.lower().endswith((".parquet", ".pq"))

    def _header(self, file: Path) -> list[str]:
        if self._is_parquet(file):
            return _parquet_schema(file).names
        opener = gzip.open if file.name.lower().endswith(".gz") else open
        with opener(file, "rt", newline="", encoding="utf-8-sig") as fh:  # Excel's "CSV UTF-8" begins with a BOM
            return next(csv.reader(fh), [])

    def _mapping(self, file: Path, header: list[str], wanted: tuple[str, ...] = REQUIRED) -> dict[str, str]:
        """Source column name -> canonical name for one file; errors name the file and what is missing of the
        required columns among ``wanted``."""
        unknown = {k: v for k, v in self.columns.items() if v not in ALIASES}
        if unknown:
            name, value = next(iter(unknown.items()))
            raise PriceDataError("unknown column mapping", str(file),
                                 detail=f"QPIPE_SOURCE_COLUMNS maps {name!r} to {value!r}, which is not a qpipe column "
                                        f"(one of {', '.join(ALIASES)})")
        named = {k.strip().lower(): v for k, v in self.columns.items()}  # "Close" names a file's "close" too
        explicit = {col: named[col.strip().lower()] for col in header if col.strip().lower() in named}
        twice = [v for v in ALIASES if list(explicit.values()).count(v) > 1]  # of this file: vendors name them apart
        if twice:
            raise PriceDataError("column mapped twice", str(file), detail=(
                f"QPIPE_SOURCE_COLUMNS maps {' and '.join(repr(k) for k, v in explicit.items() if v == twice[0])} "
                f"to {twice[0]!r}: one of them would be dropped in silence; map only the one it is"))
        taken = set(explicit.values())
        mapping = dict(explicit)
        for canonical, names in ALIASES.items():
            found = [col for col in header if col not in mapping and col.strip().lower() in names]
            if found and canonical not in taken:  # by the aliases' order: a "symbol" before a company's "name"
                mapping[min(found, key=lambda col: names.index(col.strip().lower()))] = canonical
        missing = [c for c in REQUIRED if c in wanted and c not in mapping.values()]
        if missing:
            raise PriceDataError(
                "missing columns", str(file),
                detail=f"required {missing} not found among {header}; map them with "
                       f"QPIPE_SOURCE_COLUMNS='{{\"<name in file>\": \"<qpipe name>\"}}' (the price_source resource's "
                       f"columns)")
        return mapping

    def _date_filter(self, file: Path, parquet: bool, mapping: dict[str, str], start, end) -> str:
        """SQL keeping the rows dated start..end, and those whose date does not parse (to be reported)."""
        if start is None and end is None:
            return ""
        source = next(src for src, dst in mapping.items() if dst == "date")
        column = identifier(source)
        lo = pd.Timestamp(start if start is not None else "1800-01-01").date()
        after = (pd.Timestamp(end if end is not None else "2200-12-31") + pd.Timedelta(days=1)).date()
        kind = _parquet_schema(file).field(source).type if parquet else None
        zone = _zone(file, parquet, source)
        if zone:
            local = f"timezone('{zone}', {column})"
            return f"{local} >= TIMESTAMP '{lo}' AND {local} < TIMESTAMP '{after}'"
        if kind is not None and (pa.types.is_date(kind) or pa.types.is_timestamp(kind)):
            return f"{column} >= DATE '{lo}' AND {column} < DATE '{after}'"  # on the column: row groups are skipped
        parsed = self._parsed(f"CAST({column} AS VARCHAR)")
        return f"(({parsed} >= DATE '{lo}' AND {parsed} < DATE '{after}') OR {parsed} IS NULL)"

    @staticmethod
    def _select(files: list[Path], ids: list[int], parquet: bool, header: list[str], mapping: dict[str, str],
                where: str = "", factor_from: str = "") -> str:
        """One multi-file scan; ``_file_id`` remembers which file each row came from, ``_factor_from`` which of
        its columns gives the factor (``factor``, ``adj_close`` or ``none``)."""
        paths = [str(files[i]).replace("'", "''") for i in ids]
        reader = "read_parquet" if parquet else "read_csv"
        options = "filename='_qpipe_path'"  # names of our own that no file's header uses (Name, filename, id ...)
        if not parquet:  # the header is known: no per-file type sniffing, every value read as text
            types = ", ".join("'" + h.replace("'", "''") + "': 'VARCHAR'" for h in header)
            options += f", header=true, auto_detect=false, delim=',', quote='\"', columns={{{types}}}"
        def text(src: str, dst: str) -> str:
            zone = _zone(files[ids[0]], parquet, src) if dst == "date" else None
            value = f"CAST(timezone('{zone}', s.{identifier(src)}) AS DATE)" if zone else f"s.{identifier(src)}"
            return f"CAST({value} AS VARCHAR) AS {identifier(dst)}"

        cols = ", ".join(text(src, dst) for src, dst in mapping.items())
        if factor_from:
            cols += f", '{factor_from}' AS _factor_from"
        listing = ", ".join(f"'{p}'" for p in paths)
        ids_by_name = ", ".join(f"('{p}', {i})" for p, i in zip(paths, ids))
        return (f"SELECT {cols}, f._qpipe_id AS _file_id FROM {reader}([{listing}], {options}) AS s "
                f"JOIN (VALUES {ids_by_name}) AS f(_qpipe_file, _qpipe_id) ON s._qpipe_path = f._qpipe_file"
                + (f" WHERE {where}" if where else ""))

    def _check_values(self, con: duckdb.DuckDBPyConnection, files: list[Path]) -> None:
        present = {d[0] for d in con.execute("SELECT * FROM rows LIMIT 0").description}
        bad_date = con.execute(
            f"SELECT _file_id, instrument, date FROM rows WHERE date IS NULL OR {self._parsed('date')} IS NULL LIMIT 1"
        ).fetchone()
        if bad_date:
            raise PriceDataError("unparseable date", str(files[bad_date[0]]), instrument=bad_date[1],
                                 detail=self._not_a_date(str(bad_date[2])))
        missing_symbol = con.execute(
            "SELECT _file_id, date FROM rows WHERE instrument IS NULL OR trim(instrument) = '' LIMIT 1").fetchone()
        if missing_symbol:
            raise PriceDataError("missing instrument", str(files[missing_symbol[0]]), date=missing_symbol[1],
                                 detail="a row has no symbol")
        for col in NUMERIC:
            if col not in present:
                continue
            bad = con.execute(
                f"SELECT _file_id, instrument, date, {col}, count(*) OVER () FROM rows "
                f"WHERE {col} IS NOT NULL AND trim({col}) <> '' AND TRY_CAST({col} AS DOUBLE) IS NULL LIMIT 1"
            ).fetchone()
            if bad:
                raise PriceDataError(f"non-numeric {col}", str(files[bad[0]]), instrument=bad[1], date=bad[2],
                                     detail=f"{col} value {bad[3]!r} is not a number", count=bad[4])

    def _canonical_sql(self, con: duckdb.DuckDBPyConnection) -> str:
        present = {d[0] for d in con.execute("SELECT * FROM rows LIMIT 0").description}

        def num(col: str) -> str:
            return f"TRY_CAST(NULLIF(trim({col}), '') AS DOUBLE)" if col in present else "CAST(NULL AS DOUBLE)"

        # The first of these the row's file has; an empty cell stays empty (a row with prices is then refused by
        # name), never 1: one unadjusted row among adjusted ones would be a fake jump and fall.
        factor = (f"CASE _factor_from WHEN 'factor' THEN {num('factor')} "
                  f"WHEN 'adj_close' THEN {num('adj_close')} / {num('close')} ELSE 1.0 END")
        scale = "1.0" if self.prices_adjusted else "factor"
        return f"""
            WITH typed AS (
              SELECT {self._parsed('date')} AS date, trim(instrument) AS instrument,
                     {num('open')} AS open, {num('high')} AS high, {num('low')} AS low, {num('close')} AS close,
                     {num('vwap')} AS vwap, {num('volume')} AS volume, {factor} AS factor, _file_id
              FROM rows)
            SELECT date, instrument, open * {scale} AS open, high * {scale} AS high, low * {scale} AS low,
                   close * {scale} AS close, vwap * {scale} AS vwap, volume / {scale} AS volume, factor, _file_id,
                   {", ".join(f"{c} AS raw_{c}" for c in ("open", "high", "low", "close", "vwap", "volume"))}
            FROM typed ORDER BY date, instrument"""  # raw_*: the file's values, for error messages
