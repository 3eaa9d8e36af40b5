"""raw/prices (partitioned by trading day) and raw/universe + raw/concepts (source-wide): validated,
transactional loads from the configured price source."""

import dagster as dg
import pandas as pd
from pydantic import Field

from qpipe.assets.by_partition import per_partition, rows_by_partition, rows_version
from qpipe.calendar import SCHEDULE_DELAY, market_calendar
from qpipe.code_versions import ingest_version
from qpipe.data import warehouse as wh
from qpipe.data.anchoring import ANCHOR_SESSIONS, Anchored
from qpipe.data.ingest import EMPTIED, NoRows, ingest_prices
from qpipe.data.validation import PriceDataError, first_few
from qpipe.partitions import trading_days
from qpipe.resources import Compute, PriceSource, Warehouse

PRICES, UNIVERSE, CONCEPTS = dg.AssetKey(["raw", "prices"]), dg.AssetKey(["raw", "universe"]), dg.AssetKey(["raw", "concepts"])


def partition_dates(context: dg.AssetExecutionContext) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last trading day of the partitions this run materializes."""
    keys = context.partition_key_range
    return pd.Timestamp(keys.start), pd.Timestamp(keys.end)


def refuse_before_the_close(day, why: str) -> None:
    """A Failure for a partition whose session is not over (or is in the future): ``why`` it waits for the close
    (found in review: a backtest and an IC report of a session still trading, made of no prices, went in as done)."""
    early = market_calendar().not_over(pd.Timestamp(day).date())
    if early:
        raise dg.Failure(f"partition {early}: {why}; nothing was written")


def refuse_days_without(con, table: str, column: str, start: pd.Timestamp, end: pd.Timestamp, upstream: str) -> None:
    """A Failure naming the sessions of [start, end] without a row in ``table`` (by ``column``): ``upstream``, the
    asset that writes them, was not materialized for them."""
    missing = wh.days_without_rows(con, table, column, market_calendar().trading_days(start, end))
    if missing:
        raise dg.Failure(f"{upstream} has no rows of {len(missing)} of these sessions: {first_few(missing)}; "
                         f"materialize it for them first (dg launch --assets {upstream} --partition-range "
                         f"{missing[0]}...{missing[-1]}); nothing was written")


def recording(context: dg.AssetExecutionContext, n_assets: int = 1) -> str:
    """What the step does after its work: Dagster records one materialization per asset and partition
    (about 18 ms each in the sqlite event log), seconds for a range of a year or more."""
    events = len(context.partition_keys) * n_assets
    return f"; recording {events:,} partition materializations" if events > 50 else ""


class IngestConfig(dg.Config):
    replace: bool = Field(default=False, description="accept that stored rows the source no longer has are "
                                                     "removed (refused by default: a shrunken source is usually cut short)")


LOOK_AGAIN_SECONDS = 15 * 60  # how long the schedule's run waits before it looks again at a late source


class PricesConfig(IngestConfig):
    allow_missing: bool = Field(default=False, description="accept a session without rows for more than a few of the "
                                "instruments the session before had (refused by default: a day the source has not "
                                "finished; accept it where the stocks left, or the source leaves suspended ones out)")
    late_source_retries: int = Field(default=16, ge=0, description="how often the schedule's run looks again, every 15 "
                                     "minutes, at a source that has no rows (or too few) of its day yet: a vendor's "
                                     "late file (16: four hours); a run you launch fails at once")
    suspend_idle: bool = Field(default=False, description="store a row with prices and no volume (0 or missing) as a "
                               "suspended day, as Qlib's data collector does (kept as it is by default, as Qlib's "
                               "dump_bin keeps it: Alpha158's volume features then divide by a zero volume)")


@dg.asset(
    key=PRICES,
    description="Adjusted daily OHLCV, vwap and factor per (date, instrument); suspended days are NULL rows.",
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb",
    group_name="ingest",
    kinds={"duckdb"},
    metadata={"dagster/table_name": wh.PRICES},
    code_version=ingest_version(),
)
def raw_prices(context: dg.AssetExecutionContext, config: PricesConfig, warehouse: Warehouse,
               price_source: PriceSource, compute: Compute):
    start, end = partition_dates(context)
    calendar = market_calendar()
    refuse_before_the_close(end, "prices are ingested after the close, when the day's bars are final (the daily "
                                 f"schedule runs {SCHEDULE_DELAY.seconds // 60} min after it)")
    context.log.info(f"loading {price_source.describe()} for {start.date()}..{end.date()} on {calendar.name}")
    gaps, extra = warn_of_the_calendar(context, calendar, price_source, start, end)
    suspend_idle = config.suspend_idle or price_source.suspend_idle
    with warehouse.get_connection() as con:
        stored = wh.day_versions(con, wh.PRICES, start, end) if wh.has_table(con, wh.PRICES) else {}
        try:
            done = ingest_prices(con, price_source.source(), calendar, start, end, price_source.describe(),
                                 replace=config.replace, load_cells=compute.load_cells,
                                 allow_missing=config.allow_missing, suspend_idle=suspend_idle,
                                 benchmark=price_source.benchmark, log=context.log.info)
            digests = wh.day_versions(con, wh.PRICES, start, end)
            version = rows_version(context, PRICES, digests)
            suspended = dict(con.execute(f"SELECT date::VARCHAR, count(*) FROM {wh.PRICES} WHERE close IS NULL AND "
                                         "date BETWEEN ? AND ? GROUP BY 1", [start.date(), end.date()]).fetchall())
        except NoRows as error:
            look_again(context, config, error)
            raise dg.Failure(str(error)) from None
        except PriceDataError as error:
            if error.rule in ("partial day", "source changing"):  # a vendor still writing the day
                look_again(context, config, error)
            raise
    report_anchoring(context, done.anchored, done.unanchored, end)
    restated = sorted(day for day, digest in digests.items() if stored.get(day, digest) != digest)
    if restated:  # (found in review: a range run gives every day one new data version, the changed ones unnamed)
        context.log.warning(
            f"the source's rows of {len(restated)} stored session(s) differ from those stored before, and replaced "
            f"them: {first_few(restated)}; what was computed from them (features, labels, checkpoints, scores) is "
            "out of date there until it runs again over them")
    if done.idle:
        context.log.warning(
            f"{len(done.idle)} rows have prices and no volume (0 or missing): {first_few(done.idle)}. "
            + ("They are stored as suspended days (suspend_idle), as Qlib's data collector stores them" if
               suspend_idle else
               "They are stored as traded, as Qlib's dump_bin stores them, while Qlib's data collector empties them; "
               "Alpha158's volume features divide by the volume there (VMA5 of ~1e12 times the mean volume), and the "
               "backtest takes them as suspended: to store them suspended, set QPIPE_SUSPEND_IDLE=1 (every run: the "
               "schedule's, qpipe qrun's) or suspend_idle in raw/prices' config (this run), and ingest them again"))
    if done.emptied:
        context.log.warning(
            f"{len(done.emptied)} session(s) on which more than {EMPTIED[1]:.0%} of the stocks' rows are empty (or "
            f"absent between a stock's first and last rows, which is stored as a suspended day, as Qlib's dump_bin "
            f"writes it): {first_few(done.emptied)}; a day the vendor's file lost? They are stored as suspended days")
    if done.unstored:
        days = sorted({row.split(" ")[0] for row in done.unstored})
        context.log.warning(
            f"the source has {len(done.unstored)} rows on sessions stored before {start.date()} that the warehouse "
            f"lacks: {first_few(done.unstored)} (a stock back from days without rows: they are its suspended days, as "
            "Qlib's dump_bin writes them; or rows the vendor added late). A run writes its own sessions: to store "
            f"them, dg launch --assets 'group:ingest' --partition-range {days[0]}...{days[-1]}, then the same with "
            "'group:features'")
    context.log.info(f"wrote {done.rows} price rows ({done.suspended} suspended) for {done.instruments} instruments"
                     + recording(context))
    rows_by_partition(context, digests)
    per_partition(context, {day: {"suspended_rows": suspended.get(day, 0)} for day in context.partition_keys})
    return dg.MaterializeResult(data_version=version, metadata={
        "rows_written": done.rows,  # by the run, over its days
        "rows_without_volume": len(done.idle),
        "instruments": done.instruments,
        "first_date": str(done.first.date()),
        "last_date": str(done.last.date()),
        "source": price_source.describe(),
        "sessions_without_rows": gaps,  # of the exchange a source's own calendar matched (see the warning)
        "dates_not_sessions": extra,  # of that exchange (see the warning)
        "rebased_instruments": len(done.anchored.scale),  # scaled onto the stored basis (qpipe.data.anchoring)
        "read_blocks": done.blocks,  # of about QPIPE_LOAD_CELLS / 64 price rows each (qpipe.data.ingest)
    })


def warn_of_the_calendar(context: dg.AssetExecutionContext, calendar, price_source: PriceSource, start: pd.Timestamp,
                         end: pd.Timestamp) -> tuple[int, int]:
    """Warn of an exchange whose known sessions end soon, and of a CSV/Parquet source's dates (QPIPE_CALENDAR=auto)
    that depart from the exchange they match: (sessions it lacks, dates that are no sessions)."""
    horizon = calendar.horizon_warning()
    if horizon:
        context.log.warning(horizon)
    if price_source.kind != "tabular":  # a Qlib provider's day.txt is its calendar, as for Qlib
        return 0, 0
    source, exchange = price_source.describe(), calendar.matched
    gaps, extra = calendar.departures(start, end)
    if len(gaps):
        context.log.warning(
            f"{len(gaps)} sessions of {exchange} have no row for any instrument in {source}: {first_few(gaps)}. Under "
            f"QPIPE_CALENDAR=auto they are no partitions, and features and labels read across them as if the market "
            f"had been closed; QPIPE_CALENDAR={exchange} refuses such a source")
    if len(extra):
        context.log.warning(
            f"{len(extra)} dates of {source} are not sessions of {exchange}: {first_few(extra)} (a holiday row?). "
            f"Under QPIPE_CALENDAR=auto they are partitions, and every other stock has a suspended day there (a row "
            f"of empty prices, as Qlib's dump_bin writes it) that its features read; remove those rows, or set "
            f"QPIPE_CALENDAR={exchange}, which refuses them")
    return len(gaps), len(extra)


def look_again(context: dg.AssetExecutionContext, config: PricesConfig, error: Exception) -> None:
    """In the schedule's run, a day the source has not delivered (or finished) yet is looked at again later: the step
    runs again in LOOK_AGAIN_SECONDS, up to ``late_source_retries`` times (nothing was written)."""
    if "dagster/schedule_name" not in context.run.tags or context.retry_number >= config.late_source_retries:
        return
    minutes = LOOK_AGAIN_SECONDS / 60
    context.log.warning(f"{error} -- the source looks late: looking again in {minutes:g} min (attempt "
                        f"{context.retry_number + 2} of {config.late_source_retries + 1}; raw/prices' config "
                        "late_source_retries)")
    raise dg.RetryRequested(max_retries=config.late_source_retries, seconds_to_wait=LOOK_AGAIN_SECONDS) from error


def report_anchoring(context: dg.AssetExecutionContext, anchored: Anchored, unanchored: list[str],
                     end: pd.Timestamp) -> None:
    if anchored.scale:
        context.log.info(f"{len(anchored.scale)} instruments stored on the warehouse's adjustment basis, which the source "
                         "has re-based since (splits and dividends adjusted into its history): "
                         + first_few([f"{name} x{k:.6g}" for name, k in sorted(anchored.scale.items())]))
    if anchored.restated:
        days = sorted({str(pd.Timestamp(d).date()) for d in anchored.restated.values()})
        context.log.warning(
            f"the source's prices of {first_few(days)} differ from the stored ones for {len(anchored.restated)} "
            f"instruments ({first_few(sorted(anchored.restated))}), not by one ratio: the source restated them. The "
            f"new rows are on the stored basis of the last session it did not restate (the last one read, where it "
            f"restated them all). To store the source's version, ingest from {days[0]} "
            f"again with the features and labels that read those prices: dg launch --assets 'group:ingest' "
            f"--partition-range {days[0]}...{end.date()}, then the same with 'group:features'; and retrain the "
            f"checkpoints of {days[0]} on, whose windows hold that day (Dagster does not mark them stale across 720 "
            f"days of features)")
    if anchored.seams:
        first = min(anchored.seams.values())
        context.log.warning(
            f"the stored prices after {end.date()} of {len(anchored.seams)} instruments "
            f"({first_few(sorted(anchored.seams))}) are on another adjustment basis than those before these days (the "
            f"source re-based across the gap they fill): these days join those before; to join the later ones too, "
            f"ingest them again: dg launch --assets raw/prices --partition-range {pd.Timestamp(first).date()}...<the last "
            f"stored day>")
    if unanchored:
        context.log.warning(
            f"{len(unanchored)} instruments with stored prices share no session with the source before these days, nor "
            f"within {ANCHOR_SESSIONS} after them, so their rows are stored on the source's basis, which may not be "
            f"the warehouse's: {first_few(unanchored)}")


@dg.multi_asset(
    specs=[
        # After the prices (found in review: a step of its own, it read a late or unfinished vendor file beside the
        # first look of raw/prices, and the day's members stayed those of the day before when the retry found it all)
        dg.AssetSpec(UNIVERSE, description="Index membership spans (market, instrument, start_date, end_date).",
                     kinds={"duckdb"}, metadata={"dagster/table_name": wh.UNIVERSE}, deps=[PRICES],
                     code_version=ingest_version()),
        dg.AssetSpec(CONCEPTS, description="Sector and concept memberships (HIST's stock2concept): the source's, "
                                           "or those of the file QPIPE_CONCEPTS names.",
                     kinds={"duckdb"}, metadata={"dagster/table_name": wh.CONCEPTS}, code_version=ingest_version()),
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),  # so CLI partition ranges over group:ingest can include it
    pool="duckdb",
    group_name="ingest",
)
def raw_universe(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: Warehouse,
                 price_source: PriceSource, compute: Compute):
    source = price_source.source()
    universe, concepts = source.reference(load_cells=compute.load_cells)
    if price_source.concepts:
        from qpipe.data.concepts import read_concepts

        concepts = read_concepts(price_source.concepts)
        unknown = sorted(set(concepts["instrument"]) - set(universe["instrument"]))
        if unknown:
            context.log.warning(f"{len(unknown)} instruments of {price_source.concepts} are not in the source: "
                                f"{first_few(unknown)}")
    missing = source.missing_members()
    if missing:
        context.log.warning(f"{len(missing)} members of {price_source.market} have no data in the source and are left "
                            f"out: {first_few(missing)}")
    with warehouse.get_connection() as con:
        wh.write_universe(con, universe, concepts, replace=config.replace)
        versions = wh.reference_versions(con)
    context.log.info(f"{len(universe)} membership spans, {len(concepts)} concept memberships")
    yield dg.MaterializeResult(asset_key=UNIVERSE, data_version=dg.DataVersion(versions[wh.UNIVERSE]), metadata={
        "dagster/row_count": len(universe),
        "markets": ", ".join(sorted(universe["market"].unique())),
        "instruments": int(universe["instrument"].nunique()),
    })
    yield dg.MaterializeResult(asset_key=CONCEPTS, data_version=dg.DataVersion(versions[wh.CONCEPTS]), metadata={
        "dagster/row_count": len(concepts),
        "concepts": int(concepts["concept"].nunique()),
    })


def check_range(context: dg.AssetCheckExecutionContext) -> list:
    """The days a check covers, as SQL parameters: those of the run (a partition or a range), else all."""
    tags = context.run.tags
    start = tags.get("dagster/asset_partition_range_start", tags.get("dagster/partition", "1900-01-01"))
    end = tags.get("dagster/asset_partition_range_end", tags.get("dagster/partition", "2200-12-31"))
    return [pd.Timestamp(start).date(), pd.Timestamp(end).date()]


@dg.asset_check(asset=PRICES, blocking=True, pool="duckdb",
                description="Stored rows of the days: one per (date, instrument); open and close within [low, high].")
def prices_are_unique_and_consistent(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
    from qpipe.data.validation import OHLC_TOLERANCE

    with warehouse.get_connection() as con:
        rows, duplicates, inconsistent = con.execute(f"""
            SELECT count(*), count(*) - count(DISTINCT (date, instrument)),
                   count(*) FILTER (WHERE high < low OR greatest(open, close) > high * (1 + {OHLC_TOLERANCE})
                                    OR least(open, close) < low / (1 + {OHLC_TOLERANCE}))
            FROM {wh.PRICES} WHERE date BETWEEN ? AND ?""", check_range(context)).fetchall()[0]
    why = ("no stored row of these days" if rows == 0 else ", ".join(
        text for n, text in ((duplicates, f"{duplicates} duplicate (date, instrument) rows"),
                             (inconsistent, f"{inconsistent} rows whose open or close is outside [low, high]")) if n)
           or None)
    return dg.AssetCheckResult(passed=rows > 0 and duplicates == 0 and inconsistent == 0, description=why,
                               metadata={"rows": rows, "duplicate_rows": duplicates, "ohlc_inconsistent_rows": inconsistent})


@dg.asset_check(asset=PRICES, pool="duckdb", additional_deps=[UNIVERSE],
                description="Every instrument listed on a day (raw.universe, market all) has a row that day "
                            "(a suspended day is a row without prices); a warning, not a stop: sources have gaps.")
def prices_cover_the_listed_instruments(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
    with warehouse.get_connection() as con:
        if not wh.has_table(con, wh.UNIVERSE):
            return dg.AssetCheckResult(passed=True, description="raw/universe is not materialized yet: nothing to "
                                       "compare with", metadata={"listed_instrument_days": 0})
        listed, missing, example = con.execute(f"""
            WITH days AS (SELECT DISTINCT date FROM {wh.PRICES} WHERE date BETWEEN ? AND ?),
                 expected AS (SELECT d.date, u.instrument FROM days d JOIN {wh.UNIVERSE} u
                              ON u.market = 'all' AND d.date BETWEEN u.start_date AND u.end_date)
            SELECT count(*), count(*) FILTER (WHERE p.instrument IS NULL),
                   min(CASE WHEN p.instrument IS NULL THEN strftime(e.date, '%Y-%m-%d') || ' ' || e.instrument END)
            FROM expected e LEFT JOIN {wh.PRICES} p ON p.date = e.date AND p.instrument = e.instrument""",
                                                 check_range(context)).fetchall()[0]
    return dg.AssetCheckResult(passed=missing == 0, severity=dg.AssetCheckSeverity.WARN,
                               description=f"{missing} listed (instrument, day) pairs without a row, the first {example}"
                                           if missing else None,
                               metadata={"listed_instrument_days": listed, "without_a_row": missing,
                                         "first_missing": example or ""})


@dg.asset_check(asset=UNIVERSE, pool="duckdb", additional_deps=[PRICES],
                description="Each member's stored prices begin where its history in the source does (or where the "
                            "warehouse's do); a warning, not a stop: a symbol the source relabelled over its whole "
                            "history, or days never ingested, leave a member's features NaN for up to 60 sessions.")
def members_have_their_history(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
    """Found in review: a vendor relabelled COH as TPR over its whole history; after the universe's replace, TPR's
    prices began on the day of the rename while its span said member since 2016, and nothing said so."""
    with warehouse.get_connection() as con:
        if not wh.has_table(con, wh.PRICES):
            return dg.AssetCheckResult(passed=True, description="raw/prices is not materialized yet",
                                       metadata={"members_without_their_history": 0})
        late = con.execute(f"""
            WITH listed AS (SELECT instrument, min(start_date) AS since FROM {wh.UNIVERSE} GROUP BY 1),
                 stored AS (SELECT instrument, min(date) AS first FROM {wh.PRICES} GROUP BY 1),
                 warehouse AS (SELECT min(first) AS first FROM stored)
            SELECT l.instrument, greatest(l.since, w.first), s.first FROM listed l JOIN stored s USING (instrument),
                   warehouse w
            WHERE s.first > greatest(l.since, w.first) ORDER BY 2, 1""").fetchall()
    if not late:
        return dg.AssetCheckResult(passed=True, metadata={"members_without_their_history": 0})
    since, first = min(row[1] for row in late), max(row[2] for row in late)  # one range covers every member
    return dg.AssetCheckResult(
        passed=False, severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(late)} members have history in the source before their first stored price: "
                    f"{first_few([f'{name} since {a} (stored from {b})' for name, a, b in late])}. A symbol the source "
                    f"relabelled? Ingest its history: dg launch --assets raw/prices --partition-range {since}..."
                    f"{first} (with replace: true in its config where the source no longer has the rows stored under "
                    f"the old symbol), then the features and labels of those days",
        metadata={"members_without_their_history": len(late), "first": f"{late[0][0]} since {late[0][1]}"})


# A close below this ratio of the stock's last close (or above its inverse) is no market day's move, but a split the
# source does not adjust for: a 2:1 split halves the price.
SPLIT_LIKE = 0.55


@dg.asset_check(asset=PRICES, pool="duckdb",
                description=f"No close is below {SPLIT_LIKE} or above {1 / SPLIT_LIKE:.2f} times the stock's last close: "
                            "such a move is a split the source does not adjust for (give it a factor or adj close "
                            "column); a warning, not a stop: a stock can crash.")
def prices_have_no_split_like_moves(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
    start, end = check_range(context)
    with warehouse.get_connection() as con:
        # the moves of the days, and each stock's move into the first stored day after them (a backfill's seam)
        moves, jumps, example = con.execute(f"""
            WITH priced AS (
                SELECT date, instrument, close, lag(close) OVER (PARTITION BY instrument ORDER BY date) AS last,
                       lag(date) OVER (PARTITION BY instrument ORDER BY date) AS last_date
                FROM {wh.PRICES} WHERE close IS NOT NULL AND date BETWEEN ? - INTERVAL 31 DAY AND ? + INTERVAL 31 DAY)
            SELECT count(last), count(*) FILTER (WHERE close < last * {SPLIT_LIKE} OR close * {SPLIT_LIKE} > last),
                   min(CASE WHEN close < last * {SPLIT_LIKE} OR close * {SPLIT_LIKE} > last THEN strftime(date, '%Y-%m-%d')
                       || ' ' || instrument || ': ' || round(last, 4) || ' then ' || round(close, 4) END)
            FROM priced WHERE date BETWEEN ? AND ? OR (date > ? AND last_date <= ?)""",
                                               [start, end, start, end, end, end]).fetchall()[0]
    return dg.AssetCheckResult(passed=jumps == 0, severity=dg.AssetCheckSeverity.WARN,
                               description=f"{jumps} split-like moves, the first: {example}" if jumps else None,
                               metadata={"moves": moves, "split_like_moves": jumps, "first_split_like": example or ""})
