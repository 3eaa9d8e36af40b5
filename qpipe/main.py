"""The main job on the embedded default market: ``python -m qpipe.main``.

Runs ``daily_pipeline`` (then ``leaderboard_job``) on the synthetic market as five Dagster runs, recorded in the instance
at $DAGSTER_HOME so they show in ``dagster dev``:
1. prices from ``LOOKBACK`` trading days before ``--start`` (so the first day's features see the
   same history as a full-history computation), and the universe;
2. Alpha158, Alpha360 and labels for [start, end];
3. one checkpoint per architecture on ``--checkpoint-day``, with a quick training profile;
4. out-of-sample predictions and IC reports for the days after it;
5. reports/leaderboard, which it prints: IC, ICIR, Rank IC, Rank ICIR per model.
"""

import argparse
import time

import dagster as dg
import duckdb

from qpipe.calendar import trading_days
from qpipe.assets.leaderboard import LEADERBOARD_TABLE
from qpipe.features.store import LOOKBACK
from qpipe.models.registry import ARCHITECTURES
from qpipe.settings import get_settings, parse_models

FIRST_DAY, CHECKPOINT_DAY, LAST_DAY = "2023-01-03", "2023-12-29", "2024-12-31"
# A few epochs on a 240 + 60 day window: minutes on two CPU cores, enough to find the planted signal.
# The MLP takes batches of 512 instead of Qlib's 4096: on 37,600 training rows that gives it enough steps.
QUICK_PROFILE = {"train_days": 240, "valid_days": 60}
# The Transformer and Localformer (feed-forward width 2048, as in Qlib) need about 8 s per batch of 2048
# on two CPU cores, 3 minutes per epoch of this profile: ask for them with --models on a GPU machine.
QUICK_PARAMS = {"mlp": {"n_epochs": 30, "batch_size": 512}, "lstm": {"n_epochs": 4}, "gru": {"n_epochs": 4},
                "alstm": {"n_epochs": 4}}


def _run(job: dg.JobDefinition, name: str, keys: list[str], **kwargs) -> None:
    began = time.perf_counter()
    result = job.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False,
                                    asset_selection=[dg.AssetKey.from_user_string(k) for k in keys], **kwargs)
    print(f"{name}: {'succeeded' if result.success else 'FAILED'} in {time.perf_counter() - began:.0f}s "
          f"(run {result.run_id})", flush=True)
    if not result.success:
        raise SystemExit(1)


def _range(start: str, end: str) -> dict:
    return {"tags": {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", default=FIRST_DAY)
    parser.add_argument("--checkpoint-day", default=CHECKPOINT_DAY)
    parser.add_argument("--end", default=LAST_DAY)
    parser.add_argument("--models", default=",".join(QUICK_PARAMS),
                        help=f"architectures to train, comma-separated (of {', '.join(ARCHITECTURES)})")
    args = parser.parse_args()
    try:
        models = parse_models(args.models)
    except ValueError as error:
        parser.error(str(error).replace("QPIPE_MODELS", "--models"))

    from qpipe.definitions import defs

    job = defs.resolve_job_def("daily_pipeline")
    prices_from = str(trading_days("2000-01-03", args.start)[-LOOKBACK - 1])
    first_scored = str(trading_days(args.checkpoint_day, args.end)[1])
    _run(job, f"prices {prices_from}..{args.end}", ["raw/prices", "raw/universe", "raw/concepts"],
         **_range(prices_from, args.end))
    _run(job, f"features and labels {args.start}..{args.end}",
         ["features/alpha158", "features/alpha360", "features/label"], **_range(args.start, args.end))
    _run(job, f"checkpoints of {', '.join(models)} on {args.checkpoint_day}",
         [f"models/{arch}/checkpoint" for arch in models], partition_key=args.checkpoint_day,
         run_config={"ops": {f"models__{arch}__checkpoint": {"config": {**QUICK_PROFILE, "params": QUICK_PARAMS.get(arch, {})}}
                             for arch in models}})
    _run(job, f"predictions and IC reports {first_scored}..{args.end}",
         [key for arch in models for key in (f"predictions/{arch}", f"reports/{arch}/ic")],
         **_range(first_scored, args.end))

    _run(defs.resolve_job_def("leaderboard_job"), "leaderboard", ["reports/leaderboard"])
    with duckdb.connect(str(get_settings().warehouse), read_only=True) as con:
        board = con.execute(f"SELECT * FROM {LEADERBOARD_TABLE}").df()
    print(f"\nOut-of-sample, {first_scored}..{args.end} (daily IC against the raw label, as Qlib's SigAnaRecord):")
    print(board.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
