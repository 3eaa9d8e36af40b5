"""The warehouse for workers that share no DuckDB file: a DuckLake (Parquet data, a SQL catalog).

A single DuckDB file can be written by one process on one machine. With ``QPIPE_LAKE`` every step opens an
in-memory DuckDB instead and attaches the lake: its tables are Parquet files under ``QPIPE_LAKE_DATA`` (a
folder every worker mounts; object storage would need DuckDB's httpfs, which is not shipped here), and its
catalog (schemas, snapshots, which files make each table) is a PostgreSQL database every worker reaches. A
transaction commits one snapshot, atomically for all processes and machines. Concurrent writers are reconciled
by DuckLake's optimistic concurrency: a commit that raced another is retried when their changes do not
overlap (two tables), and fails whole when they do (one table): the step is then run again by Dagster
(``Warehouse.get_connection`` raises ``RetryRequested`` for ``is_conflict``). The SQL of ``qpipe.data.warehouse`` runs
unchanged on it.

The DuckLake and PostgreSQL extensions come from PyPI (``duckdb-extension-ducklake``,
``duckdb-extension-postgres-scanner``), built for the pinned DuckDB: nothing is downloaded at run time.

    python -m qpipe.data.lake import .qpipe/warehouse.duckdb   # copy a DuckDB file's tables into QPIPE_LAKE
    python -m qpipe.data.lake maintain                         # DuckLake's CHECKPOINT: compact files (quiet hour)
"""

from pathlib import Path

import duckdb

NAME = "qpipe"  # the attached lake's catalog name; steps USE it, so SQL names tables as schema.table


def attach(con: duckdb.DuckDBPyConnection, catalog: str, data_path: str) -> None:
    """Attach the lake whose catalog is ``catalog`` (``postgres:<libpq connection string>``, or a local
    ``.ducklake`` file for one machine) with its Parquet files under ``data_path``, and make it the default."""
    _load(con, "ducklake")
    if catalog.startswith("postgres:"):
        _load(con, "postgres_scanner")
    else:
        Path(catalog).parent.mkdir(parents=True, exist_ok=True)
    Path(data_path).mkdir(parents=True, exist_ok=True)
    con.execute(f"ATTACH {_quote('ducklake:' + catalog)} AS {NAME} (DATA_PATH {_quote(data_path)})")
    con.execute(f"USE {NAME}")


def import_file(con: duckdb.DuckDBPyConnection, path: str) -> dict[str, int]:
    """Copy every table of the DuckDB file ``path`` into the attached lake, in one transaction; rows per table.

    A table the lake already has is refused by name (nothing is copied then): the lake is not overwritten.
    """
    con.execute(f"ATTACH {_quote(path)} AS source (READ_ONLY)")
    try:
        tables = [f"{schema}.{name}" for schema, name in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'source' ORDER BY ALL").fetchall()]
        present = {f"{schema}.{name}" for schema, name in con.execute(
            f"SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = '{NAME}'").fetchall()}
        if clash := sorted(present & set(tables)):
            raise ValueError(f"the lake already has {', '.join(clash)}: nothing was imported from {path}")
        copied = {}
        con.execute("BEGIN TRANSACTION")
        try:
            for table in tables:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {NAME}.{table.split('.')[0]}")
                con.execute(f"CREATE TABLE {NAME}.{table} AS SELECT * FROM source.{table}")
                copied[table] = con.execute(f"SELECT count(*) FROM {NAME}.{table}").fetchone()[0]
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return copied
    finally:
        con.execute("DETACH source")


def is_lake(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` reads and writes a lake (by the catalog's type: a warehouse file may be named qpipe.duckdb)."""
    return con.execute("SELECT type FROM duckdb_databases() WHERE database_name = current_database()").fetchone()[0] \
        == "ducklake"


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` is DuckLake refusing a commit that raced another writer's on the same table (the
    transaction was rolled back whole, so the same write can simply run again)."""
    return isinstance(error, duckdb.Error) and "Transaction conflict" in str(error)


def _load(con: duckdb.DuckDBPyConnection, extension: str) -> None:
    """LOAD an extension from its PyPI package (``duckdb_extension_<name>``), built for this DuckDB release."""
    import importlib

    package = f"duckdb-extension-{extension.replace('_', '-')}"
    try:
        module = importlib.import_module(f"duckdb_extension_{extension}")
    except ImportError:
        module = None
    found = sorted((Path(module.__file__).parent / "extensions").glob(f"v{duckdb.__version__}/*.duckdb_extension")
                   ) if module else []
    if not found:
        raise RuntimeError(f"QPIPE_LAKE needs {package} built for DuckDB {duckdb.__version__}, which this environment "
                           "lacks: install qpipe's lake extra (pip install -e '.[lake]': DuckDB 1.5.5 and its DuckLake "
                           "and PostgreSQL extensions; none is built for DuckDB 2.0 yet)")
    con.load_extension(str(found[0]))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def main() -> None:
    import argparse

    from qpipe.resources import build_resources
    from qpipe.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("import", help="copy a DuckDB file's tables into the lake").add_argument("file")
    commands.add_parser("maintain", help="DuckLake's CHECKPOINT: merge small files, drop expired ones")
    args = parser.parse_args()
    settings = get_settings()
    if not settings.lake:
        raise SystemExit("QPIPE_LAKE is not set: there is no lake to work on")
    with build_resources(settings)["warehouse"].get_connection() as con:
        if args.command == "import":
            for table, rows in import_file(con, args.file).items():
                print(f"{table}: {rows:,} rows")
        else:
            con.execute("CHECKPOINT")
            print(f"lake at {settings.lake_data}: checkpointed")


if __name__ == "__main__":
    main()
