"""Dagster resources: the DuckDB warehouse, the configured price source, checkpoints and the step's threads."""

import random
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, field_validator

from qpipe import compute
from qpipe.data import lake
from qpipe.data import warehouse as wh
from qpipe.data.sources import SOURCE_KINDS, Source, open_source
from qpipe.reaper import die_with_the_run
from qpipe.settings import BLOCK_CELLS, FRAME_CELLS, LOAD_CELLS, Settings, get_settings, parse_feature_device


WAIT_WARNING_SECONDS = 60.0  # a wait for the warehouse is news (a warning) when it lasts this long


class WarehouseBusy(RuntimeError):
    pass


class MissingTable(RuntimeError):
    """A step read a table its upstream assets have not written into this warehouse (DuckDB's CatalogException)."""


MISSING_TABLE = re.compile(r'Table with name "?([\w.]+)"? does not exist')
# what DuckDB says of a file cut short or overwritten (a copy taken while a run wrote it, a full disk)
DAMAGED = re.compile(r"Could not read enough bytes|not a valid DuckDB database|Corrupt database file|checksum",
                     re.IGNORECASE)


CORRUPT_BLOCK = re.compile(r"Corrupt database file: computed checksum .* in block at location")
STALE_WAL = re.compile(r"WAL checkpoint iteration does not match")  # a log beside a copy restored: not its own
HEADERS = 3 * 4096  # a DuckDB file's main header and two database headers, before its blocks
_OPEN: dict[str, int] = {}  # warehouse files this process has connections to, and how many
_OPEN_LOCK = threading.Lock()
_CHECKED: set[tuple[str, int, int]] = set()  # (file, size, mtime) found whole


class DamagedWarehouse(RuntimeError):
    """The warehouse file is truncated or corrupt: DuckDB cannot read it."""


class Warehouse(DuckDBResource):
    """The qpipe DuckDB file (its folder is created on first use), or the DuckLake ``lake`` when one is set.

    DuckDB lets one process write a file. Runs of one Dagster instance take turns through the
    ``duckdb`` pool; a process outside it (a run of another instance on the same warehouse, a DuckDB
    shell) is waited for, with a line in the step's log naming its PID, for up to ``lock_wait_seconds``.
    A lake has no such lock: each step attaches it from an in-memory DuckDB of its own (qpipe.data.lake).
    """

    lock_wait_seconds: float = Field(default=3600.0, ge=0, description="how long to wait for another "
                                     "process that has the warehouse open before failing")
    lake: str = Field(default="", description="a DuckLake catalog (postgres:<connection string>, or a .ducklake "
                      "file) to use instead of the DuckDB file (QPIPE_LAKE)")
    lake_data: str = Field(default="", description="where the lake's Parquet files are (QPIPE_LAKE_DATA)")
    conflict_retries: int = Field(default=3, ge=0, description="how often a step whose lake commit lost a race "
                                  "with another writer of the same table runs again, 1 to 10 s later")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        die_with_the_run(context.instance, context.run_id)  # a step that writes dies with its run's worker

    @contextmanager
    def get_connection(self):
        con = self._attach_lake() if self.lake else self._connect()
        key = str(Path(self.database).resolve())
        with _OPEN_LOCK:
            _OPEN[key] = _OPEN.get(key, 0) + 1
        try:
            con.execute("SET enable_progress_bar = false")  # it would draw on the console of every long step
            yield con
        except duckdb.Error as error:
            if self.lake and lake.is_conflict(error):  # it wrote nothing: Dagster runs the step again
                raise dg.RetryRequested(max_retries=self.conflict_retries,
                                        seconds_to_wait=random.uniform(1, 10)) from error
            self._refuse_damaged(error)
            missing = MISSING_TABLE.search(str(error)) if isinstance(error, duckdb.CatalogException) else None
            if missing:
                where = f"the lake {self.lake}" if self.lake else f"the warehouse {self.database}"
                raise MissingTable(
                    f"{where} has no table {missing.group(1)}: materialize the assets upstream of this one into it "
                    "first (a new warehouse starts with raw/prices), or point " + (
                        "QPIPE_WAREHOUSE at the file that has them" if get_settings().warehouse_override else
                        "QPIPE_HOME at the one that has them (QPIPE_HOME, ./.qpipe by default, is taken from the folder "
                        "a run starts in)")) from error
            raise
        finally:  # closed on failure too: a failed step must release the file
            con.close()
            with _OPEN_LOCK:
                _OPEN[key] -= 1

    def _attach_lake(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB of this process with the lake attached: no file, so no lock to wait for."""
        con = duckdb.connect(":memory:", config={"custom_user_agent": "dagster", **self.connection_config})
        try:
            lake.attach(con, self.lake, self.lake_data)
        except BaseException:
            con.close()
            raise
        return con

    def _refuse_damaged(self, error: duckdb.Error) -> None:
        """(An error of another file a step reads, a source's Parquet, names that file, not the warehouse; a block
        whose checksum fails names no file, and only a DuckDB database has such blocks: the warehouse is the one.)"""
        named = Path(self.database).name in str(error) or CORRUPT_BLOCK.search(str(error))
        if self.lake or not named:
            return
        if STALE_WAL.search(str(error)):
            raise DamagedWarehouse(
                f"the warehouse {self.database} cannot be opened: its write-ahead log {self.database}.wal is not its "
                f"own ({str(error).splitlines()[0]}), the log of the file a restored copy replaced. Move the .wal away "
                "(it holds only that file's last unfinished writes) and run again; nothing was written") from None
        if DAMAGED.search(str(error)):
            self._damaged(f"DuckDB cannot read it ({str(error).splitlines()[0]})")

    def _damaged(self, why: str) -> None:
        raise DamagedWarehouse(
            f"the warehouse {self.database} is damaged: {why}. The file is truncated or corrupt (a copy taken while a "
            "run wrote it, a disk that filled up). Nothing was written and the file was left as it is: restore it "
            "from a copy, or move it away (or point QPIPE_HOME at a new folder) and materialize again from "
            "raw/prices") from None

    def _refuse_truncated(self, con: duckdb.DuckDBPyConnection) -> None:
        """A file cut short whose catalog survived opens, and DuckDB writes into it (its lost blocks fail only when a
        step reads them, and the file grows back, zero-filled): refused before any step writes, when the file ends
        before the last block in use (free blocks at its end may be cut off: DuckDB does so itself). Checked once per
        file version in a process, and not while this process has it open (blocks being written are not in it yet)."""
        path = Path(self.database)
        stat = path.stat()
        version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with _OPEN_LOCK:
            if _OPEN.get(version[0]) or version in _CHECKED:
                return
        [(blocks, block_size)] = con.execute("SELECT total_blocks, block_size FROM pragma_database_size() WHERE "
                                             "database_name = current_database()").fetchall()
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = "
                             "current_database()").fetchall()
        last = max([-1, *(block for schema, table in tables for (block,) in con.execute(
            "SELECT max(block_id) FROM pragma_storage_info(?) WHERE block_id BETWEEN 0 AND ?",
            [f'"{schema}"."{table}"', blocks - 1]).fetchall() if block is not None)])
        needed = HEADERS + (last + 1) * block_size
        if stat.st_size < needed:
            con.execute("PRAGMA disable_checkpoint_on_shutdown")  # the close would write a .wal's rows into it
            con.close()
            self._damaged(f"it is {stat.st_size:,} bytes, and its block {last} in use (of {block_size:,} bytes) "
                          f"ends at {needed:,}")
        _CHECKED.add(version)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        config = {"custom_user_agent": "dagster", **self.connection_config}
        began, told = time.monotonic(), 0
        while True:
            try:
                con = duckdb.connect(self.database, read_only=False, config=config)
                self._refuse_truncated(con)
                return con
            except duckdb.Error as error:
                self._refuse_damaged(error)
                if not isinstance(error, duckdb.IOException) or "Could not set lock" not in str(error):
                    raise
                holder = re.search(r"\(PID (\d+)\)", str(error))
                who = f"process {holder.group(1)}" if holder else "another process"
                waited = time.monotonic() - began
                if waited >= self.lock_wait_seconds:
                    raise WarehouseBusy(f"the warehouse {self.database} is still open in {who} after {waited:.0f} s "
                                        "(a run of another Dagster instance, or a DuckDB shell): nothing was written; "
                                        "run again when it is done") from None
                # a line at once (steps of a run take turns reading it), a warning if the wait goes on
                if told == 0 or (told == 1 and waited >= WAIT_WARNING_SECONDS):
                    log = dg.get_dagster_logger()
                    (log.warning if told else log.info)(
                        f"waiting for the warehouse {self.database}: {who} has it open (a step reading its data, "
                        "a run of another Dagster instance, or a DuckDB shell)"
                        + (f", for {waited:.0f} s now" if told else "") + "; DuckDB lets one process open it at a time")
                    told += 1
                time.sleep(0.5)


class PriceSource(dg.ConfigurableResource):
    """Where raw prices come from. Defaults come from QPIPE_SOURCE* settings."""

    kind: str = Field(description=f"one of {SOURCE_KINDS}")
    path: str = Field(default="", description="CSV/Parquet file or folder, or Qlib provider directory")
    columns: dict[str, str] = Field(default_factory=dict, description="source column -> qpipe column")
    date_format: str = Field(default="", description="strptime format of a CSV/Parquet source's dates, e.g. %m/%d/%Y "
                             "(QPIPE_SOURCE_DATE_FORMAT); default YYYY-MM-DD or YYYYMMDD")
    market: str = Field(default="all", description="Qlib instruments/<market>.txt used as the universe")
    ingest: Literal["market", "all"] = Field(default="market", description="Qlib instruments read: the market's "
                                             "members since `since` plus the benchmark, or all")
    benchmark: str = Field(default="", description="benchmark index instrument, e.g. SH000300")
    since: str | None = Field(default=None, description="first partition: members that left before are not read")
    concepts: str = Field(default="", description="a CSV/Parquet file of concept memberships (instrument, "
                          "concept[, kind]) for HIST, in place of the source's own (QPIPE_CONCEPTS)")
    suspend_idle: bool = Field(default=False, description="store rows with prices and no volume as suspended days, "
                               "in every run (QPIPE_SUSPEND_IDLE; raw/prices' suspend_idle for one run)")
    seed: int = Field(default=7, description="synthetic market seed")
    n_instruments: int = Field(default=300, description="synthetic market size")

    def source(self) -> Source:
        return open_source(self.kind, self.path, self.columns, self.market, self.seed, self.n_instruments,
                           ingest=self.ingest, benchmark=self.benchmark, since=self.since, date_format=self.date_format)

    def describe(self) -> str:
        return f"synthetic(seed={self.seed}, n={self.n_instruments})" if self.kind == "synthetic" else f"{self.kind}:{self.path}"


class Compute(dg.ConfigurableResource):
    """The threads a step gives torch, numba and OpenMP (qpipe.compute says why they are few and fixed),
    and how much of the universe a feature step, a checkpoint's data load or a prediction holds at once."""

    threads: int = Field(ge=1, description="threads per step (QPIPE_THREADS)")
    block_cells: int = Field(default=BLOCK_CELLS, ge=1_000, description="price cells (days x instruments) a "
                             "feature step computes at once; bounds its memory (QPIPE_BLOCK_CELLS)")
    load_cells: int = Field(default=LOAD_CELLS, ge=1_000, description="feature cells (rows x columns) a "
                            "checkpoint's data load, a prediction or a backtest processes at once (QPIPE_LOAD_CELLS)")
    frame_cells: int = Field(default=FRAME_CELLS, ge=0, description="feature cells of a checkpoint's training frames "
                             "held in memory; larger frames are memory-mapped from `scratch` (QPIPE_FRAME_CELLS)")
    scratch: str = Field(default="", description="a folder on disk for memory-mapped frames (QPIPE_HOME/scratch; "
                         "empty: the system's temporary folder)")
    feature_device: str = Field(default="auto", description="where feature operators run: auto (a GPU when one "
                                "is visible), cpu or cuda[:i] (QPIPE_FEATURE_DEVICE)")

    @field_validator("feature_device")
    @classmethod
    def _feature_device(cls, value: str) -> str:
        return parse_feature_device(value)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        compute.use_threads(self.threads)


def build_resources(settings: Settings | None = None) -> dict:
    s = settings or get_settings()
    threads = compute.compute_plan().threads
    return {
        "compute": Compute(threads=threads, block_cells=s.block_cells, load_cells=s.load_cells,
                           frame_cells=s.frame_cells, scratch=str(s.scratch),
                           feature_device=s.feature_device),
        "warehouse": Warehouse(database=str(s.warehouse), connection_config={**wh.CONNECTION_CONFIG, "threads": threads},
                               lake=s.lake, lake_data=s.lake_data),
        "checkpoints": CheckpointStore(root=str(s.checkpoints)),
        "price_source": PriceSource(kind=s.source, path=s.source_path, columns=s.source_columns,
                                    date_format=s.source_date_format, concepts=s.concepts_path,
                                    market=s.qlib_market, ingest=s.qlib_ingest, benchmark=s.benchmark,
                                    suspend_idle=s.suspend_idle,
                                    since=s.first_partition, seed=s.synthetic_seed,
                                    n_instruments=s.synthetic_instruments),
    }


class CheckpointStore(dg.ConfigurableResource):
    """``<root>/<arch>/<partition>.safetensors`` + ``.json`` sidecar, one pair per checkpoint partition."""

    root: str

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        die_with_the_run(context.instance, context.run_id)

    def path_for(self, arch: str, partition: str) -> Path:
        return Path(self.root) / arch / partition

    def partitions(self, arch: str) -> list[str]:
        """The partitions with a sidecar or weights here: weights without their sidecar fail the load by name
        rather than leave their days to an older checkpoint."""
        folder = Path(self.root) / arch
        return sorted({p.name.split(".")[0] for pattern in ("*.json", "*.safetensors") for p in folder.glob(pattern)})
