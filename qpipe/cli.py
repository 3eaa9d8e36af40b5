"""The ``qpipe`` command: ``qpipe qrun WORKFLOW.yaml`` runs a Qlib workflow as qpipe's assets, after a report of what
each of its keys means in qpipe (``--dry-run``: the report only)."""

import argparse
import sys


def qrun(args: argparse.Namespace) -> int:
    from qpipe.models.config import ConfigError
    from qpipe.workflow.translate import translate

    try:
        workflow = translate(args.workflow)
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
    args = parser.parse_args(argv)
    return {"qrun": qrun}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
