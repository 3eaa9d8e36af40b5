"""The main job: ``python -m qpipe.main`` runs the daily pipeline on the embedded market and prints the leaderboard.

Five Dagster runs, launched through a code server exactly as the UI launches them (so each one
shows in ``dg dev`` with its lineage and can be stopped there, or with Ctrl-C here):
1. prices from ``LOOKBACK`` sessions before the first training day to the latest session over, and the universe;
2. Alpha158, Alpha360 and labels from the first training day on;
3. one checkpoint per architecture on the session ``--test-days`` before the latest (quick training
   profile), the cheapest first, as many at once as the machine has training slots;
4. out-of-sample predictions, IC reports and TopK-dropout backtests for every session after it;
5. reports/leaderboard, which it prints: IC, ICIR, Rank IC, Rank ICIR, and the backtest's annualized
   excess return, information ratio and max drawdown with cost, per model (Qlib's benchmark table).
The console shows each step as it finishes and the running steps' progress; the details are in
each run's log in the UI.
"""

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from qpipe.settings import SettingsError, get_settings, parse_models, refuse_unknown_sets

if __name__ == "__main__":  # a bad QPIPE_* value: one line, not a traceback from the imports below that read it
    from qpipe.data.validation import PriceDataError

    try:
        get_settings()
        from qpipe.compute import compute_plan
        from qpipe.partitions import trading_days as _  # the source's calendar and the partitions built from it
        import qpipe.assets.models  # noqa: F401 (QPIPE_MODELS' variants, each with a Qlib setting)

        compute_plan()
    except (SettingsError, PriceDataError, ValueError) as error:
        sys.exit(f"qpipe: {error}")

import dagster as dg  # noqa: E402 (after the settings' check)

from qpipe.assets.models import (TrainConfig, backtest_key, checkpoint_key, ic_key, predictions_key,
                                 refuse_variant_without_a_preset)
from qpipe.calendar import EARLIEST, market_calendar, trading_days
from qpipe.compute import ComputePlan, compute_plan
from qpipe.features.store import LABEL_HORIZON, LOOKBACK
from qpipe.models.registry import ARCHITECTURES, TRAINING_COST, model_parts
from qpipe.training_profiles import QUICK_MODELS, QUICK_WINDOW, Profile, checkpoint_config, training_window

TEST_DAYS = 250  # out-of-sample sessions scored after the checkpoint
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the run log keeps everything
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
# One ASSET_MATERIALIZATION_PLANNED event per asset of a range run instead of one per partition (Dagster's
# own switch): a 250-day predictions run of four models writes 2,000 fewer sqlite events.
os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")


@dataclass(frozen=True)
class Stage:
    title: str
    job: str
    keys: list[str]
    tags: dict[str, str]
    run_config: dict


def _span(start, end) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": str(start), "dagster/asset_partition_range_end": str(end)}


def daily_window(profile: Profile) -> int:
    """The sessions of labels a checkpoint of the after-close schedule trains and validates on (QPIPE_TRAINING)."""
    window = {name: TrainConfig.model_fields[name].default for name in ("train_days", "valid_days")}
    window |= training_window(profile)
    return window["train_days"] + window["valid_days"]


def stages(last_day: date, models: tuple[str, ...], test_days: int, plan: ComputePlan,
           epochs: int | None = None, first_day: date | str = EARLIEST, profile: Profile = "qlib") -> list[Stage]:
    """The five runs for a leaderboard over the ``test_days`` sessions up to ``last_day``; ``epochs`` replaces the
    quick profile's ``n_epochs`` of every model (early stopping still applies). ``first_day``: the source's first;
    a history too short for the runs is refused (ValueError) before any of them."""
    days = trading_days(max(str(first_day), EARLIEST), last_day)
    checkpoint = len(days) - 1 - test_days
    first_train = checkpoint - LABEL_HORIZON - QUICK_WINDOW["valid_days"] - QUICK_WINDOW["train_days"] + 1
    if first_train < LOOKBACK:
        needed = len(days) - first_train + LOOKBACK
        raise ValueError(f"the main job needs {needed} sessions up to {last_day} ({test_days} scored after the "
                         f"checkpoint, the training windows and {LOOKBACK} of feature lookback); the source has "
                         f"{len(days)} from {days[0] if len(days) else first_day}: a smaller --test-days or a "
                         "later --end")
    # Features back far enough, where the history has them, for a checkpoint of ``profile``'s window on the last day
    # too, so the after-close schedule's next run (QPIPE_RETRAIN_EVERY, QPIPE_TRAINING) finds its history.
    first_train = max(LOOKBACK, min(first_train, len(days) - 1 - LABEL_HORIZON - daily_window(profile) + 1))
    prices_from, features_from = days[first_train - LOOKBACK], days[first_train]
    checkpoint_day, first_scored, end = days[checkpoint], days[checkpoint + 1], days[-1]
    cheapest_first = sorted(models, key=lambda name: TRAINING_COST[model_parts(name)[0]])
    training = {"ops": {checkpoint_key(name).to_python_identifier():
                        {"config": checkpoint_config("quick", name, epochs)} for name in models},
        "execution": {"config": {"multiprocess": {"max_concurrent": plan.parallel_steps}}}}
    return [
        Stage(f"prices and universe {prices_from}..{end}", "daily_pipeline", ["raw/prices", "raw/universe", "raw/concepts"],
              _span(prices_from, end), {**IN_PROCESS, **QUIET}),
        Stage(f"features and labels {features_from}..{end}", "daily_pipeline",
              [f"features/{name}" for name in feature_sets(models)], _span(features_from, end), {**IN_PROCESS, **QUIET}),
        Stage(f"checkpoints on {checkpoint_day}: {', '.join(cheapest_first)} (cheapest first, "
              f"{plan.parallel_steps} at once)", "daily_pipeline",
              [checkpoint_key(name).to_user_string() for name in models], {"dagster/partition": str(checkpoint_day)},
              {**training, **QUIET}),
        Stage(f"predictions, IC reports and backtests {first_scored}..{end}", "daily_pipeline",
              [key.to_user_string() for name in models
               for key in (predictions_key(name), ic_key(name), backtest_key(name))],
              _span(first_scored, end), {**IN_PROCESS, **QUIET}),
        Stage("leaderboard", "leaderboard_job", ["reports/leaderboard"], {}, {**IN_PROCESS, **QUIET}),
    ]


def feature_sets(models: tuple[str, ...]) -> list[str]:
    """The feature tables the main job materializes: Alpha158, Alpha360, the sets of the variants among ``models``
    (``lstm_momentum``), and the labels."""
    own = sorted({model_parts(name)[1] for name in models} - {None, "alpha158", "alpha360"})
    return ["alpha158", "alpha360", *own, "label"]


def planned(calendar, end: date | None, models: tuple[str, ...], test_days: int, plan: ComputePlan,
            epochs: int | None) -> tuple[list[Stage], date]:
    """The runs, and the last session: ``end`` (default: the source's last date, up to the last session over) within
    the source's dates and over."""
    from qpipe.resources import build_resources

    settings = get_settings()
    if settings.market not in settings.source_markets:  # else found by the checkpoints, after prices and features
        raise ValueError(f"QPIPE_MARKET = {settings.market!r}: not a market of the {settings.source} source, which has "
                         f"{', '.join(settings.source_markets)}")
    first, last = (str(d)[:10] for d in build_resources()["price_source"].source().span())
    early = calendar.not_over(end) if end is not None else ""
    if early:
        raise ValueError(f"--end {early}; the latest session over is {calendar.last_closed_session()}")
    if end is not None and str(end) < first:
        raise ValueError(f"--end {end} is before the source's first date, {first}")
    last_day = calendar.latest_session(end if end is not None else
                                       min(calendar.last_closed_session(), date.fromisoformat(last)))
    if str(last_day) > last:
        raise ValueError(f"--end {last_day} is after the source's last date, {last}: end there (--end {last}), "
                         "or point QPIPE_SOURCE_PATH at a source that holds the days after it")
    return stages(last_day, models, test_days, plan, epochs, first_day=first, profile=settings.training), last_day


def training_slots(instance: dg.DagsterInstance, plan: ComputePlan) -> int:
    """The ``gpu`` pool's slots: as set on the instance, else one per visible GPU (each checkpoint step then claims
    its own: qpipe.devices), or one per CPU step slot on a machine without GPUs."""
    storage = instance.event_log_storage
    if "gpu" not in storage.get_concurrency_keys():
        import torch

        gpus = torch.cuda.device_count()
        storage.set_concurrency_slots("gpu", gpus or plan.parallel_steps)
    return storage.get_concurrency_info("gpu").slot_count


def run_stage(server, stage: Stage, number: int, total: int) -> dg.DagsterRunStatus:
    from qpipe.console import RunView

    began = time.perf_counter()
    run_id = server.launch(stage.job, stage.keys, tags={**stage.tags, "qpipe/main": "yes"}, run_config=stage.run_config)
    print(f"[{number}/{total}] {stage.title}  (run {run_id[:8]})", flush=True)
    view = RunView(server.instance, run_id)
    try:
        status = view.follow()
    except KeyboardInterrupt:
        print(f"\nstopping run {run_id[:8]} (Ctrl-C again leaves it to the UI)...", flush=True)
        server.cancel(run_id)
        status = view.follow()
    outcome = {dg.DagsterRunStatus.SUCCESS: "succeeded", dg.DagsterRunStatus.CANCELED: "canceled"}.get(status, "failed")
    print(f"      {outcome} in {time.perf_counter() - began:.0f}s", flush=True)
    return status


def print_leaderboard(test_days: int) -> None:
    from qpipe.assets.leaderboard import LEADERBOARD_TABLE
    from qpipe.resources import build_resources

    with build_resources()["warehouse"].get_connection() as con:
        board = con.execute(f"SELECT * FROM {LEADERBOARD_TABLE}").df()
    print(f"\nOut-of-sample leaderboard, {test_days} sessions (daily IC against the raw label, as Qlib's SigAnaRecord; "
          "the TopK-dropout backtest's annualized excess return, information ratio and max drawdown with cost, "
          "as its PortAnaRecord):")
    print(board.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    reports = (get_settings().home / "reports").resolve()
    print(f"\nTear sheets (HTML, open offline): {reports / 'leaderboard.html'}, linking one per model beside it")


def _stop(signum, frame) -> None:
    """SIGTERM as Ctrl-C: the running run is canceled and the code server goes (it went on to the run's end)."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--end", default=None,
                        help="last session (default: the source's latest, up to the last one over)")
    parser.add_argument("--test-days", type=int, default=TEST_DAYS, help="sessions scored after the checkpoint")
    parser.add_argument("--models", default=",".join(QUICK_MODELS),
                        help=f"architectures to train, comma-separated (of {', '.join(ARCHITECTURES)}), and "
                             "variants on another feature set than Alpha360: lstm_alpha158")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every model (default: the quick profile's, MLP 30, the others 4); early stopping "
                             "still applies")
    args = parser.parse_args()
    try:
        models = parse_models(args.models)
        refuse_unknown_sets(models, get_settings().feature_sets, "--models")
        for name in models:  # a variant Qlib has no setting of (hist_alpha158): now, not after prices and features
            if model_parts(name)[1]:
                refuse_variant_without_a_preset(name)
    except ValueError as error:
        parser.error(str(error).replace("QPIPE_MODELS", "--models"))
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: expected a positive number of epochs")
    if args.test_days < 1:
        parser.error(f"--test-days {args.test_days}: expected a positive number of sessions")
    try:
        end = None if args.end is None else date.fromisoformat(args.end)
    except ValueError:
        parser.error(f"--end {args.end!r}: expected a date, YYYY-MM-DD")
    if not os.environ.get("DAGSTER_HOME"):
        sys.exit("DAGSTER_HOME is not set: the runs need an instance to live in (the README uses export DAGSTER_HOME=$PWD)")
    signal.signal(signal.SIGTERM, _stop)  # timeout, kill and systemd stop the run as Ctrl-C does

    from qpipe.launcher import code_server
    from qpipe.reaper import reap

    began = time.perf_counter()
    settings, plan = get_settings(), compute_plan()
    calendar = market_calendar()
    try:
        plan_stages, last_day = planned(calendar, end, models, args.test_days, plan, args.epochs)
    except ValueError as error:  # before any run: nothing written
        sys.exit(f"qpipe: {error}")
    instance = dg.DagsterInstance.get()
    for line in reap(instance).lines():
        print(f"  {line}")
    tables = f"lake at {settings.lake_data}" if settings.lake else f"warehouse {settings.warehouse}"
    print(f"qpipe main job on the {settings.source} market, {calendar.name} sessions to {last_day}; {tables}\n"
          f"  runs are kept in the Dagster instance at {os.environ['DAGSTER_HOME']} (see them with: dg dev)\n"
          f"  {plan.describe()}; {training_slots(instance, plan)} training slot(s) (pool gpu); Ctrl-C stops the run",
          flush=True)
    unlisted = [name for name in models if name not in ARCHITECTURES and name not in settings.models]
    if unlisted:  # a variant has assets where QPIPE_MODELS names it: in the code server's
        os.environ["QPIPE_MODELS"] = ",".join((*settings.models, *unlisted))
        print(f"  {', '.join(unlisted)}: shown in the UI (dg dev) and trained by the schedule where QPIPE_MODELS "
              f"names {'it' if len(unlisted) == 1 else 'them'} (e.g. QPIPE_MODELS=all,{','.join(unlisted)})", flush=True)
    log_file = Path(os.environ["DAGSTER_HOME"]) / "logs" / "qpipe-main.log"
    with code_server(instance, log_file) as server:
        for number, stage in enumerate(plan_stages, 1):
            status = run_stage(server, stage, number, len(plan_stages))
            if status != dg.DagsterRunStatus.SUCCESS:
                sys.exit(130 if status == dg.DagsterRunStatus.CANCELED else
                         f"the run's log is in the UI; the processes' console output in {log_file}")
    print_leaderboard(args.test_days)
    print(f"\nmain job done in {time.perf_counter() - began:.0f}s")


if __name__ == "__main__":
    main()
