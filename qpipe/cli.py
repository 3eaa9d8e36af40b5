"""The ``qpipe`` command: ``qpipe qrun WORKFLOW.yaml`` runs a Qlib workflow as qpipe's assets, after a report of what
each of its keys means in qpipe (``--dry-run``: the report only)."""

import argparse
import sys


def qrun(args: argparse.Namespace) -> int:
    from qpipe.models.config import ConfigError
    from qpipe.workflow.translate import rolling_gen, translate

    if args.rolling_type is not None and args.rolling_step is None:  # it was ignored in silence
        print("qpipe qrun: --rolling-type needs --rolling-step N (a checkpoint every N sessions)", file=sys.stderr)
        return 2
    try:
        rolling = rolling_gen(args.rolling_step, args.rolling_type or "ROLL_EX", "--rolling-step/--rolling-type") \
            if args.rolling_step is not None else None
        workflow = translate(args.workflow, rolling)
    except ConfigError as error:
        print(f"qpipe qrun: {error}", file=sys.stderr)
        return 2
    print(workflow.report(), flush=True)
    if args.dry_run:
        return 0
    from qpipe.workflow.run import run

    print()
    try:
        return run(workflow)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"qpipe qrun: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("qrun", help="a Qlib workflow YAML, translated into qpipe's settings and runs, and run")
    run.add_argument("workflow", help="a Qlib workflow YAML (qrun's input)")
    run.add_argument("--dry-run", action="store_true", help="print the translation report only")
    run.add_argument("--rolling-step", type=int, default=None, metavar="N",
                     help="Qlib's RollingGen(step=N): a checkpoint every N sessions of the test segment")
    run.add_argument("--rolling-type", default=None, metavar="RTYPE",
                     help="ROLL_EX (expanding train window, the default) or ROLL_SD (sliding)")
    args = parser.parse_args(argv)
    return {"qrun": qrun}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
