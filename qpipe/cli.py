"""The ``qpipe`` command: ``qpipe qrun WORKFLOW.yaml --dry-run`` says what a Qlib workflow means in qpipe."""

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
    print(workflow.report())
    if not args.dry_run:
        print("\nqpipe qrun: running a translated workflow is not built yet; materialize the runs above "
              "(dg launch, or the UI) with the settings shown", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("qrun", help="a Qlib workflow YAML, translated into qpipe's settings and runs")
    run.add_argument("workflow", help="a Qlib workflow YAML (qrun's input)")
    run.add_argument("--dry-run", action="store_true", help="print the translation report only")
    args = parser.parse_args(argv)
    return {"qrun": qrun}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
