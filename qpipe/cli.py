"""The ``qpipe`` command: ``qpipe qrun WORKFLOW.yaml`` runs a Qlib workflow as qpipe's assets, after a report of what
each of its keys means in qpipe (``--dry-run``: the report only); ``qpipe dump-bin SOURCE DIR`` writes a CSV/Parquet
source as the Qlib provider directory a workflow reads, as Qlib's ``dump_bin.py dump_all`` does."""

import argparse
import json
import os
import sys


def qrun(args: argparse.Namespace) -> int:
    from qpipe.models.config import ConfigError
    from qpipe.workflow.translate import rolling_gen, translate

    if args.rolling_type is not None and args.rolling_step is None:  # it was ignored in silence
        print("qpipe qrun: --rolling-type needs --rolling-step N (a checkpoint every N sessions)", file=sys.stderr)
        return 2
    if args.epochs is not None and args.epochs < 1:
        print(f"qpipe qrun: --epochs {args.epochs}: expected a positive number of epochs", file=sys.stderr)
        return 2
    try:
        rolling = rolling_gen(args.rolling_step, args.rolling_type or "ROLL_EX", "--rolling-step/--rolling-type") \
            if args.rolling_step is not None else None
        workflow = translate(args.workflow, rolling)
    except ConfigError as error:
        print(f"qpipe qrun: {error}", file=sys.stderr)
        return 2
    if args.epochs is not None:
        workflow = workflow.with_epochs(args.epochs)
    from qpipe.workflow.home import HomeTaken, claim, left_out, refuse_a_missing_provider, settle, workflow_home

    try:
        home = workflow_home(workflow.path, args.home)
    except ValueError as error:  # (QPIPE_HOME naming a file)
        print(f"qpipe qrun: {error}", file=sys.stderr)
        return 2
    if args.records:
        return records_again(workflow, home)
    shell = left_out(workflow)
    print(f"warehouse and checkpoints: {home}" + (
        f"\nnot inherited from the shell, as the workflow decides them: "
        f"{', '.join(f'{name}={value}' for name, value in sorted(shell.items()))}" if shell else ""))
    print(workflow.report(), flush=True)
    if args.dry_run:
        return 0
    if not os.environ.get("DAGSTER_HOME"):
        print("qpipe qrun: DAGSTER_HOME is not set: the runs need a Dagster instance to live in, e.g. export "
              "DAGSTER_HOME=$PWD (any folder; `dg dev` from it shows the runs)", file=sys.stderr)
        return 2
    print()
    try:
        refuse_a_missing_provider(workflow)
        claim(home, workflow.path)
    except (FileNotFoundError, HomeTaken) as error:
        print(f"qpipe qrun: {error}", file=sys.stderr)
        return 2
    settle(workflow, home)
    from qpipe.workflow.run import run  # (after settle: its imports read the settings)

    code = run(workflow, home)
    if code == 0:
        print(f"\nThe workflow's warehouse and checkpoints: {home}; these records again: qpipe qrun {workflow.path} "
              "--records" + (f" --home {home}" if args.home else ""))
    return code


def records_again(workflow, home) -> int:
    """``qpipe qrun FILE.yaml --records``: the records of the workflow's last run, from its home."""
    from qpipe.workflow.home import HomeTaken, claim
    from qpipe.workflow.records import print_records

    if not (home / "warehouse.duckdb").is_file():
        print(f"qpipe qrun: no run of {workflow.path} in {home} yet (its warehouse.duckdb); --home names another "
              "folder", file=sys.stderr)
        return 2
    if not (workflow.ranks_on_the_leaderboard or workflow.port_analysis is not None):
        print(f"qpipe qrun: {workflow.path} has no SigAnaRecord or PortAnaRecord: no records to print", file=sys.stderr)
        return 1
    try:
        claim(home, workflow.path, mark=False)
    except HomeTaken as error:
        print(f"qpipe qrun: {error}", file=sys.stderr)
        return 2
    if not print_records(workflow, home / "warehouse.duckdb"):
        print(f"qpipe qrun: {home} holds no records of {workflow.name}'s test segment {workflow.test[0]}.."
              f"{workflow.test[1]} (its run did not reach them)", file=sys.stderr)
        return 1
    return 0


def dump_bin(args: argparse.Namespace) -> int:
    import pandas as pd

    from qpipe.data.qlib_provider import write_qlib_provider
    from qpipe.data.tabular import TabularSource
    from qpipe.data.validation import PriceDataError

    try:
        columns = json.loads(args.columns) if args.columns else {}
        source = TabularSource(args.source, columns=columns, date_format=args.date_format, benchmark=args.benchmark)
        prices = source.prices()
        universe, _ = source.reference()
    except (PriceDataError, json.JSONDecodeError) as error:
        print(f"qpipe dump-bin: {error}", file=sys.stderr)
        return 2
    markets = [universe] + [universe.assign(market=name) for name in args.market]
    root = write_qlib_provider(prices, args.dir, pd.concat(markets, ignore_index=True))
    print(f"{root}: {prices['instrument'].nunique()} instruments, {prices['date'].nunique()} sessions "
          f"({prices['date'].min().date()}..{prices['date'].max().date()}); markets "
          f"{', '.join(['all', *args.market])} (instruments/*.txt" +
          (f"; the benchmark {args.benchmark} in features/ only" if args.benchmark else "") +
          "); for a workflow's qlib_init.provider_uri")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    qrun_help = "a Qlib workflow YAML, translated into qpipe's settings and runs, and run"
    run = commands.add_parser("qrun", help=qrun_help, description=(
        f"{qrun_help}: first a report of what each key means in qpipe, then the runs (in the Dagster instance at "
        "DAGSTER_HOME, shown by `dg dev`), then what Qlib's records print. The workflow's warehouse and checkpoints "
        "live in <QPIPE_HOME>/workflows/<YAML name> (QPIPE_HOME: ./.qpipe unless set), or --home."))
    run.add_argument("workflow", help="a Qlib workflow YAML (qrun's input)")
    run.add_argument("--dry-run", action="store_true", help="print the translation report only")
    run.add_argument("--home", default=None, metavar="DIR",
                     help="the workflow's warehouse and checkpoints (default <QPIPE_HOME>/workflows/<YAML name>)")
    run.add_argument("--records", action="store_true",
                     help="print the records of the workflow's last run from its home again, and run nothing")
    run.add_argument("--rolling-step", type=int, default=None, metavar="N",
                     help="Qlib's RollingGen(step=N): a checkpoint every N sessions of the test segment")
    run.add_argument("--rolling-type", default=None, metavar="RTYPE",
                     help="ROLL_EX (expanding train window, the default) or ROLL_SD (sliding)")
    run.add_argument("--epochs", type=int, default=None, metavar="N",
                     help="train N epochs instead of the YAML's n_epochs (a quick run on a CPU; early stopping "
                          "applies)")
    dump = commands.add_parser("dump-bin", help="a CSV/Parquet source written as a Qlib provider directory (Qlib's "
                               "dump_bin.py dump_all), for qpipe qrun")
    dump.add_argument("source", help="a CSV/Parquet file or folder, as QPIPE_SOURCE_PATH takes it")
    dump.add_argument("dir", help="the provider directory to write (calendars/, instruments/, features/)")
    dump.add_argument("--market", action="append", default=[], metavar="NAME",
                      help="also write instruments/NAME.txt with every instrument (a workflow's market: sp500)")
    dump.add_argument("--benchmark", default="", metavar="INSTRUMENT",
                      help="an index in the source (a workflow's benchmark: ^GSPC): its prices are written, and it is "
                           "left out of the markets, as QPIPE_BENCHMARK leaves it out of a CSV/Parquet source's")
    dump.add_argument("--columns", default="",
                      help="JSON, as QPIPE_SOURCE_COLUMNS: {\"<name in file>\": \"<qpipe name>\"}")
    dump.add_argument("--date-format", default="", help="strptime format of the dates, as QPIPE_SOURCE_DATE_FORMAT")
    args = parser.parse_args(argv)
    from qpipe.settings import SettingsError

    try:
        return {"qrun": qrun, "dump-bin": dump_bin}[args.command](args)
    except SettingsError as error:  # a bad QPIPE_* of the shell that the modules read: one line, not a traceback
        print(f"qpipe {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
