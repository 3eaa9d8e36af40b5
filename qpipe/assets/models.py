"""models/<model>_checkpoint, predictions/<model>_predictions, reports/<model>_ic, reports/<model>_backtest: built for
every registered architecture and every variant QPIPE_MODELS names (``lstm_alpha158``: an architecture on another
feature set, qpipe.models.registry.model_parts). Each key ends with the model's name, which is what a node of the asset
graph shows.

torch, the engine and matplotlib are imported inside the steps that use them: the code location
(and every step process that only ingests or computes features) loads without them. Cheap models
have a higher step priority, so a run that trains several trains the fastest first.
"""

import json
import resource
import time
import traceback
from contextlib import contextmanager
from copy import copy
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, create_model, field_validator
from pydantic.fields import FieldInfo

from qpipe.assets.by_partition import finite, per_partition, rows_by_partition, rows_version
from qpipe.assets.charts import inline
from qpipe.assets.prices import (UNIVERSE, check_range, partition_dates, recording, refuse_before_the_close,
                                 refuse_days_without)
from qpipe.code_versions import backtest_version, ic_version, network_version
from qpipe.data import warehouse as wh
from qpipe.devices import step_devices
from qpipe.evaluation.ic import ic_summary
from qpipe.features.store import FEATURE_SETS, LABEL_HORIZON, LABEL_TABLE
from qpipe.models.registry import ARCHITECTURES, DEFAULT_FEATURE_SET, TRAINING_COST, UnknownModelError, model_parts
from qpipe.partitions import trading_days
from qpipe.resources import CheckpointStore, Compute, Warehouse
from qpipe.settings import get_settings, parse_device

if TYPE_CHECKING:
    from qpipe.evaluation.backtest import BacktestConfig
    from qpipe.features.handler import Processing
    from qpipe.models.config import ModelConfig

LABEL = dg.AssetKey(["features", "label"])


def checkpoint_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["models", f"{name}_checkpoint"])


def predictions_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["predictions", f"{name}_predictions"])


def ic_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["reports", f"{name}_ic"])


def _checkpoint_step_tags(arch: str) -> dict[str, str]:
    """Dagster's step priority (an integer; higher runs first): the cheapest models train first; under the
    Celery executor, the step goes to the workers of the ``gpu`` queue (qpipe.deploy.celery_app)."""
    return {"dagster/priority": str(-sorted(TRAINING_COST, key=TRAINING_COST.__getitem__).index(arch)),
            "dagster-celery/queue": "gpu"}


class TrainConfig(dg.Config):
    """How a checkpoint is trained; hyper-parameters use Qlib's names."""

    feature_set: str = Field(default=DEFAULT_FEATURE_SET, description="alpha360, alpha158 or a set of QPIPE_FEATURE_SETS")
    train_days: int = Field(default=480, ge=20, description="trading days of labels to train on")
    valid_days: int = Field(default=120, ge=5, description="trading days of labels for early stopping")
    # (values Optional: Dagster's dict[str, Any] fails on a null member, and Qlib's YAMLs write seed: null and the like)
    params: dict[str, Any | None] = Field(default_factory=dict,
                                   description="Qlib hyper-parameter overrides, e.g. {n_epochs: 20, lr: 0.001}")
    qlib_yaml: str = Field(default="", description="a Qlib workflow YAML whose task.model and handler processors "
                           "are used (then params and the processor fields below)")
    infer_processors: list[dict[str, Any | None]] | None = Field(default=None, description=(
        "Qlib's infer_processors, e.g. [{class: RobustZScoreNorm, kwargs: {fields_group: feature, clip_outlier: "
        "true}}, {class: Fillna, kwargs: {fields_group: feature}}]; default: the Qlib YAML's, else the benchmark's"))
    learn_processors: list[dict[str, Any | None]] | None = Field(default=None, description=(
        "Qlib's learn_processors, e.g. [{class: DropnaLabel}, {class: CSRankNorm, kwargs: {fields_group: label}}]"))
    process_type: str = Field(default="", description="append (learn after infer, Qlib's default) or independent")
    market: str = Field(default="", description="universe to train on; default QPIPE_MARKET")
    device: str = Field(default="", description="auto, cpu or cuda[:i]; default QPIPE_DEVICE")
    shuffle_labels: bool = Field(default=False, description="placebo control: permute each day's labels before "
                                 "training; such a model must show no out-of-sample skill")

    def resolve(self, arch: str) -> "ModelConfig":
        from qpipe.models.config import config_from_qlib_yaml, model_config

        if self.qlib_yaml:
            base = config_from_qlib_yaml(self.qlib_yaml, overrides=self.params)
            if base.model != arch:
                raise dg.Failure(f"{self.qlib_yaml} configures {base.model!r}, not {arch!r}")
            return model_config(arch, base.feature_set, step_len=base.step_len, **{**base.params, **self.params})
        return model_config(arch, self.feature_set, **self.params)

    def processing(self, model: "ModelConfig") -> "Processing":
        """The processors: the fields of this config, else the Qlib YAML's handler, else the benchmark workflow's."""
        from qpipe.features.handler import handler_processing, processing
        from qpipe.models.config import read_qlib_yaml
        from qpipe.training.dataset import default_processing

        if self.qlib_yaml:
            handler = "task.dataset.kwargs.handler.kwargs"
            node: Any = read_qlib_yaml(Path(self.qlib_yaml))
            for key in handler.split("."):
                node = node.get(key) if isinstance(node, dict) else None
            base = handler_processing(model.feature_set, node or {}, f"{self.qlib_yaml}: {handler}")
        else:
            base = default_processing(model)
        given = {"infer_processors": self.infer_processors, "learn_processors": self.learn_processors,
                 "process_type": self.process_type or None}
        return processing("run config", **{**base.model_dump(), **{k: v for k, v in given.items() if v is not None}})


@contextmanager
def failures_named():
    """A ValueError of the step (a config value, a window without data, a checkpoint that will not load: each
    names what is wrong) or a plugin's that does not import, as a Failure with its message first, not under Dagster's
    "caused by" chain; its stack trace goes in the failure's metadata."""
    try:
        yield
    except (ValueError, UnknownModelError) as error:
        raise dg.Failure(str(error), metadata={"traceback": dg.MetadataValue.text(traceback.format_exc())}) from None


def _with_default(field: FieldInfo, value) -> FieldInfo:
    """``field`` with ``value`` as its default, its rules and description kept."""
    changed = copy(field)
    changed.default, changed.default_factory = value, None
    return changed


def train_config(name: str, profile: str) -> type[TrainConfig]:
    """``TrainConfig`` with the defaults of the QPIPE_TRAINING profile for the model ``name`` (a variant's: its
    feature set too): what the launchpad shows, and what a launch or backfill from the UI without a config trains with
    (``qlib``: TrainConfig's own)."""
    from qpipe.training_profiles import checkpoint_config

    arch, feature_set = model_parts(name)
    defaults = checkpoint_config(profile, name) | ({"feature_set": feature_set} if feature_set else {})
    if not defaults:
        return TrainConfig
    # the field with only its default changed: its rules stay (found in review: train_days 10 went through, since a
    # Field(default, description) dropped ge=20)
    fields = {field: (TrainConfig.model_fields[field].annotation, _with_default(TrainConfig.model_fields[field], value))
              for field, value in defaults.items()}
    if feature_set:
        fields["feature_set"][1].description = (f"{feature_set}: this variant's (QPIPE_MODELS); on another set, "
                                                f"models/{arch}_checkpoint or another variant")
    return create_model(f"TrainConfig_{profile}_{name}", __base__=TrainConfig, **fields)


def refuse_variant_without_a_preset(name: str) -> None:
    """A variant of QPIPE_MODELS that Qlib has no setting of (hist_alpha158) fails the definitions' load, named, not
    its every scheduled run (found in review). The network's file is imported, and torch with it, only for a variant."""
    from qpipe.models.config import model_config
    from qpipe.settings import SettingsError

    arch, feature_set = model_parts(name)
    try:
        model_config(arch, feature_set)
    except ValueError as error:
        raise SettingsError(f"QPIPE_MODELS: {name}: {error}") from None


def _title(name: str) -> str:
    """LSTM, or LSTM on alpha158 for the variant lstm_alpha158."""
    arch, feature_set = model_parts(name)
    return arch.upper() + (f" on {feature_set}" if feature_set else "")


def _tags(name: str) -> dict[str, str]:
    """Selectable in the UI and by `dg launch --assets 'tag:qpipe/arch=lstm'` (both LSTMs) or `tag:qpipe/model=...`."""
    return {"qpipe/arch": model_parts(name)[0], "qpipe/model": name}


def _checkpoint_asset(name: str) -> dg.AssetsDefinition:
    config_class = train_config(name, get_settings().training)

    @dg.asset(
        key=checkpoint_key(name),
        description=f"{_title(name)} trained on the window of labels known at the partition's close; "
                    "safetensors weights + JSON sidecar (config, windows, processor state, metrics).",
        partitions_def=trading_days,
        deps=[dg.AssetDep(["features", fs], partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-720))
              for fs in FEATURE_SETS] + [dg.AssetDep(LABEL), dg.AssetDep(UNIVERSE)],
        backfill_policy=dg.BackfillPolicy.multi_run(1),  # a backfill = Qlib's rolling retrain, one run per day
        pool="gpu",
        group_name="models",
        kinds={"pytorch", "safetensors"},
        tags=_tags(name),
        op_tags=_checkpoint_step_tags(model_parts(name)[0]),
        code_version=network_version(model_parts(name)[0]),
    )
    @failures_named()
    def _checkpoint(context: dg.AssetExecutionContext, config: config_class, warehouse: Warehouse,
                    checkpoints: CheckpointStore, compute: Compute) -> dg.MaterializeResult:
        import torch

        from qpipe.training import dataset, distributed, predicting
        from qpipe.training.checkpoint import save_checkpoint, stored_version
        from qpipe.training.engine import epoch_line, train
        from qpipe.training.reproducibility import resolve_device

        day = context.partition_key
        # (found in review: it trained on the data of the session before, and was dated this one)
        refuse_before_the_close(day, "a checkpoint is trained at its session's close, on the labels known then")
        settings = get_settings()
        # the device, the model and the processors, checked in the step (a value refused as Dagster built the config
        # came under its wrapper's stack, found in review), before any data is read
        device = parse_device(config.device) if config.device else settings.device
        arch, fixed = model_parts(name)
        model = config.resolve(arch)
        if fixed and model.feature_set != fixed:
            raise ValueError(f"models/{name}_checkpoint is {arch} on {fixed}, and its run config trains it on "
                             f"{model.feature_set}: on {model.feature_set}, " + (
                                 f"materialize models/{arch}_checkpoint" if model.feature_set == DEFAULT_FEATURE_SET
                                 else f"name the variant {arch}_{model.feature_set} in QPIPE_MODELS (or materialize "
                                      f"models/{arch}_checkpoint with feature_set: {model.feature_set})")
                             + "; nothing was written")
        if not fixed and f"{arch}_{model.feature_set}" in MODELS:  # (found in review: two rows, nothing said)
            context.log.warning(f"{name} trains on {model.feature_set} here, as the variant {arch}_{model.feature_set} "
                                "does: the leaderboard then has two rows of the same network and data")
        processing = config.processing(model)
        path = checkpoints.path_for(name, day)
        previous, _ = stored_version(path)
        trained_before = _recorded_provenance(path) if previous else {}
        with warehouse.get_connection() as con:  # read the window, then let go of the warehouse
            scored = predicting.days_scored_by(con, name, day) if previous else None
            data = dataset.load_training_data(con, model, day, config.train_days, config.valid_days,
                                              market=config.market or settings.market,
                                              shuffle_labels=config.shuffle_labels, processing=processing,
                                              load_cells=compute.load_cells, frame_cells=compute.frame_cells,
                                              scratch=compute.scratch)
        context.log.info(f"{name}: {int(data.train.is_sample.sum())} train / {int(data.valid.is_sample.sum())} "
                         f"valid samples, {data.describe_frames()}, windows {data.windows.to_json()}; processors: "
                         f"{processing.names()}"
                         + (" -- labels SHUFFLED within days (placebo control)" if config.shuffle_labels else ""))
        if data.concepts is not None and not data.train.concepts.any():
            context.log.warning(f"{name}: raw.concepts holds no concept membership of this window's stocks, so the "
                                "predefined-concept module reads all-zero rows; name a file of memberships with "
                                "QPIPE_CONCEPTS (the README shows how to make one from Qlib's HIST .npy files)")
        began = time.perf_counter()
        ranks = distributed.processes(model, device)
        with step_devices(device, settings.home, ranks, context.log.info) as devices:
            if ranks == 1 and (target := resolve_device(devices[0])).type == "cuda":  # its peak, not cuda:0's
                torch.cuda.reset_peak_memory_stats(target)
            if ranks > 1:  # data_parall: the ranks run under torchrun, their log lines come back through Pipes
                result = distributed.train_processes(model, data.train, data.valid, devices=devices,
                                                     threads=compute.threads, run=_pipes_runner(context))
            else:
                result = train(model, data.train, data.valid, device=devices[0],
                               on_epoch=lambda m: context.log.info(epoch_line(m)),
                               on_progress=lambda p: context.log.info(p.line()), log=context.log.info)
        weights, sidecar = save_checkpoint(path, result, model, columns=data.train.columns, windows=data.windows.to_json(),
                                           processor_state={"infer": data.infer.to_state(), "learn": data.learn.to_state(),
                                                            "process_type": data.process_type},
                                           provenance={"train_config": config.model_dump(),
                                                       "run_id": context.run.run_id,
                                                       "market": config.market or settings.market,  # as resolved
                                                       # a CPU run's weights depend on it (found in review)
                                                       "threads": compute.threads},
                                           concepts=data.concepts)
        saved = json.loads(sidecar.read_text())
        best = result.history[result.best_epoch - 1]
        context.log.info(f"best epoch {result.best_epoch}/{len(result.history)}: valid IC {best['valid_ic']:+.4f}, "
                         f"valid loss {best['valid_loss']:.4f}; {result.seconds_per_epoch:.1f}s per epoch on "
                         f"{result.device} ({compute.threads} thread{'s' if compute.threads > 1 else ''})")
        from qpipe.evaluation.report import training_curves_chart

        chart = training_curves_chart(result.history, result.best_epoch, f"{name} {day}",
                                      Path(checkpoints.root) / name / f"{day}.curves.png", result.placebo_valid_loss)
        sha, version = stored_version(path)
        if scored and sha != previous:
            in_a_job = "qpipe/main" in context.run.tags  # the main job or qpipe qrun, whose next run predicts again
            (context.log.info if in_a_job else context.log.warning)(
                f"the stored {name} scores of {scored[0]}..{scored[1]} were made by this checkpoint's previous weights "
                f"({previous[:12]}; now {sha[:12]}"
                + (f", trained with {trained_before['threads']} CPU threads then and {compute.threads} now: a CPU "
                   "run's weights depend on its thread count, QPIPE_THREADS"
                   if trained_before.get("threads") not in (None, compute.threads) and result.device == "cpu" else "")
                + "): "
                + ("this job's next runs predict the days they cover again" if in_a_job else
                   f"predict them again to have them from these (dg launch --assets predictions/{name}_predictions "
                   f"--partition-range {scored[0]}...{scored[1]})"))
        # the data version: the weights with the columns and processor state they read (the same again leave the
        # predictions up to date)
        return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
            "dagster/uri": str(weights),
            "weights_sha256": sha,
            **training_metadata(result, model.params, int(data.train.is_sample.sum())),
            "curves": dg.MetadataValue.path(str(chart)),
            "training curves": inline(chart, f"{name} {day} training curves"),
            "best_epoch": result.best_epoch,
            "valid_loss": round(float(best["valid_loss"]), 6),
            "valid_ic": round(float(best["valid_ic"]), 4),
            "placebo_valid_loss": round(float(result.placebo_valid_loss), 6),
            # how it was trained, as the sidecar holds it (found in review: the UI showed none of it)
            "feature_set": model.feature_set,
            "market": config.market or settings.market,
            **{f"{name}_window": "..".join(days) for name, days in data.windows.to_json().items()},
            "hyper_parameters": dg.MetadataValue.json(model.to_json()["params"] | {"step_len": model.step_len}),
            "train_samples": int(data.train.is_sample.sum()),
            "shuffled_labels": config.shuffle_labels,
            "parameters": result.n_params,
            "device": result.device,
            "processes": result.processes,
            "threads": compute.threads,
            "seed": saved["seed"],  # the one drawn where the config says seed: null (found in review)
            "qpipe_source": saved["versions"]["qpipe_source"] or "unrecorded (not a git checkout)",
            "versions": dg.MetadataValue.json(saved["versions"]),
            "seconds_per_epoch": round(result.seconds_per_epoch, 3),
            "seconds": round(time.perf_counter() - began, 1),
            "sidecar": dg.MetadataValue.path(str(sidecar)),
        })

    return _checkpoint


def lost_checkpoints(instance: dg.DagsterInstance, name: str, checkpoints: CheckpointStore) -> list[str]:
    """The checkpoint partitions Dagster last materialized into this store whose files are gone (a checkpoint
    materialized into another QPIPE_HOME is not this store's)."""
    key, folder = checkpoint_key(name), checkpoints.path_for(name, "").resolve()
    gone = sorted(instance.get_materialized_partitions(key) - set(checkpoints.partitions(name)))
    if not gone:
        return []
    latest: dict[str, str] = {}
    for record in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=gone),
                                                  limit=10 * len(gone)).records:  # newest first
        event = record.asset_materialization
        uri = event.metadata.get("dagster/uri") if event else None
        if event and event.partition not in latest and uri is not None:
            latest[event.partition] = uri.value
    return [p for p in gone if p in latest and Path(latest[p]).resolve().parent == folder]


def _pipes_runner(context: dg.AssetExecutionContext):
    """Runs a command as a Dagster Pipes subprocess of this step (qpipe.training.distributed.Runner)."""
    def run(command: list[str], env: dict[str, str], extras: dict[str, Any]) -> None:
        dg.PipesSubprocessClient().run(context=context, command=command, env=env, extras=extras)

    return run


def training_metadata(result, params: dict, train_samples: int) -> dict:
    """What a checkpoint's materialization shows of its training: the epochs as a table, the early-stopping
    outcome, throughput and peak memory (the step's host RSS; on CUDA the device's peak allocation too)."""
    # figures rounded to what tells epochs apart, so the table fits the UI's metadata panel (found in review: 17
    # digits each, the seconds cut off)
    digits = {"train_loss": 6, "valid_loss": 6, "valid_ic": 4, "lr": 8, "seconds": 1}
    columns = ("epoch", *digits)
    epochs = dg.MetadataValue.table(
        records=[dg.TableRecord({"epoch": int(h["epoch"]), **{c: round(float(h[c]), n) for c, n in digits.items()}})
                 for h in result.history],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "int" if c == "epoch" else "float") for c in columns]))
    metadata = {
        "epochs": epochs,
        "stopped_at_epoch": len(result.history),
        "stopped_early": len(result.history) < int(params.get("n_epochs", len(result.history))),
        "patience": int(params.get("early_stop", 0) or 0),
        "samples_per_second": round(train_samples / max(result.seconds_per_epoch, 1e-9), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if str(result.device).startswith("cuda") and result.processes == 1:  # data-parallel ranks ran in other processes
        import torch

        metadata["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated(result.device) / 2**20, 1)
    return metadata


# A day's scores come from the newest checkpoint at or before it, which on a weekly, monthly or rolling cadence is
# not the day's own: its lineage is the checkpoints of the sessions up to it, as many as Dagster follows data versions
# across (fewer than 100 partitions), so that a retrained checkpoint marks the scores it made stale.
CHECKPOINTS_A_DAY_READS = dg.TimeWindowPartitionMapping(start_offset=-98, end_offset=0)


class PredictConfig(dg.Config):
    checkpoints: list[str] = Field(default_factory=list, description=(
        "the checkpoint partitions (YYYY-MM-DD) that may score these days (a Qlib workflow's own: those of an earlier "
        "workflow in the same store stay out); default: every checkpoint in the store"))

    @field_validator("checkpoints")
    @classmethod
    def _days(cls, days: list[str]) -> list[str]:
        return [date.fromisoformat(day).isoformat() for day in days]


def _predictions_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=predictions_key(name),
        description=f"{_title(name)} scores per (date, instrument) from the newest checkpoint at or before "
                    "each day; DuckDB predictions.scores.",
        partitions_def=trading_days,
        deps=[dg.AssetDep(checkpoint_key(name), partition_mapping=CHECKPOINTS_A_DAY_READS), dg.AssetDep(UNIVERSE)]
             + [dg.AssetDep(["features", fs]) for fs in FEATURE_SETS],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="duckdb",
        group_name="predictions",
        kinds={"duckdb", "pytorch"},
        tags=_tags(name),
        code_version=network_version(model_parts(name)[0]),
        metadata={"dagster/table_name": wh.PREDICTIONS},
    )
    @failures_named()
    def _predictions(context: dg.AssetExecutionContext, config: PredictConfig, warehouse: Warehouse,
                     checkpoints: CheckpointStore, compute: Compute) -> dg.MaterializeResult:
        from qpipe.training import predicting

        start, end = partition_dates(context)
        refuse_before_the_close(end, "a session is scored from its features, made once its prices are in after the "
                                     "close")
        with warehouse.get_connection() as con:
            before = _checkpoint_of(con, name, start, end)
            written, used = predicting.write_predictions(con, checkpoints, name, start, end,
                                                         market=get_settings().market, load_cells=compute.load_cells,
                                                         recorded=lost_checkpoints(context.instance, name, checkpoints),
                                                         only=config.checkpoints, warn=context.log.warning)
            checkpoint_of = _checkpoint_of(con, name, start, end)
            digests = wh.day_versions(con, wh.PREDICTIONS, start, end, model=name)
            version = rows_version(context, predictions_key(name), digests)  # the same scores again change nothing
        context.log.info(f"{written} scores for {start.date()}..{end.date()} from checkpoint{'s' if len(used) > 1 else ''} "
                         f"{', '.join(f'{p} (weights {sha[:12]})' for p, sha in used.items())}" + recording(context))
        switched = sorted(day for day, checkpoint in checkpoint_of.items() if before.get(day, checkpoint) != checkpoint)
        if switched:  # (found in review: the IC stored of such days was the old scores', with no word of it)
            # the main job and qpipe qrun score, report and trade the days again in their next runs
            (context.log.info if "qpipe/main" in context.run.tags else context.log.warning)(
                f"{len(switched)} day(s) of {name} scores ({switched[0]}..{switched[-1]}) were made by checkpoint "
                f"{before[switched[0]]} and are now by {checkpoint_of[switched[0]]}: their IC and backtest are the old "
                f"scores' until reports/{name}_ic and reports/{name}_backtest run again over them (dg launch --assets "
                f"reports/{name}_ic,reports/{name}_backtest --partition-range {switched[0]}...{switched[-1]})")
        rows_by_partition(context, digests)
        per_partition(context, {day: {"checkpoint": checkpoint} for day, checkpoint in checkpoint_of.items()})
        return dg.MaterializeResult(data_version=version, metadata={"rows_written": written,
                                              "checkpoints": ", ".join(used),
                                              "weights_sha256": ", ".join(f"{p} {sha}" for p, sha in used.items())})

    return _predictions


def _ic_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=ic_key(name),
        description=f"{_title(name)} daily IC and Rank IC against the raw label (Qlib SigAnaRecord), for the "
                    "labels that became known on the partition's days; IC, ICIR, Rank IC, Rank ICIR to date.",
        partitions_def=trading_days,
        deps=[dg.AssetDep(predictions_key(name), partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-LABEL_HORIZON, end_offset=-LABEL_HORIZON)), dg.AssetDep(LABEL)],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="duckdb",
        group_name="reports",
        kinds={"duckdb", "matplotlib"},
        tags=_tags(name),
        code_version=ic_version(),
    )
    def _ic(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        from qpipe.evaluation import report

        start, end = partition_dates(context)
        refuse_before_the_close(end, "the IC of a session is of the labels its close makes known")
        with warehouse.get_connection() as con:
            refuse_days_without(con, LABEL_TABLE, "known_on", start, end, "features/label")
            daily = report.write_daily_ic(con, name, start, end)
            history = report.read_daily_ic(con, name, end)
        chart = report.cumulative_ic_chart(history, name, get_settings().home / "reports" / f"{name}_ic.png")
        summary = ic_summary(history)
        context.log.info(f"{name}: IC of {len(daily)} session{'s' if len(daily) != 1 else ''} stored; to date "
                         f"{report.format_summary(summary)}"
                         + recording(context))
        # what the UI plots over partitions: each partition's own IC, of the labels known on it, and the figures to
        # that day (a range run's last figures on each of its days would be flat lines)
        known_on, figures = pd.to_datetime(history["known_on"]), {}
        for _, row in daily.iterrows():
            day = pd.Timestamp(row["known_on"])
            to_date = ic_summary(history[known_on <= day])
            figures[str(day.date())] = finite({"IC": row["IC"], "Rank IC": row["Rank IC"],
                                               **{f"{k} to date": v for k, v in to_date.items()}})
        # the chart on the last day's materialization only: the one the asset's page shows
        context.add_asset_metadata({"cumulative IC": inline(chart, f"{name} cumulative IC")},
                                   partition_key=context.partition_keys[-1])
        per_partition(context, figures)
        return dg.MaterializeResult(metadata={
            "days": len(history),
            "cumulative IC chart": dg.MetadataValue.path(str(chart)),
        })

    return _ic


def _scores_spread_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=predictions_key(name), name="scores_differ_within_each_day", pool="duckdb",
                    description="Each day's scores are not all equal: a model that gives every stock one score (it "
                                "collapsed: features of ~1e18, a learning rate too high) ranks nothing, and its IC is "
                                "undefined; a warning, not a stop.")
    def _check(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as con:
            days, flat, example = con.execute(f"""
                WITH d AS (SELECT date, min(score) = max(score) AND count(*) > 1 AS flat FROM {wh.PREDICTIONS}
                           WHERE model = ? AND date BETWEEN ? AND ? GROUP BY 1)
                SELECT count(*), count(*) FILTER (WHERE flat), min(CASE WHEN flat THEN strftime(date, '%Y-%m-%d') END)
                FROM d""", [name, *check_range(context)]).fetchall()[0]
        return dg.AssetCheckResult(passed=flat == 0, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"{flat} of {days} days have one score for every stock (the first: "
                                               f"{example}): the model collapsed" if flat else None,
                                   metadata={"days": days, "days_with_equal_scores": flat, "first": example or ""})

    return _check


def _predictions_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=predictions_key(name), name="one_finite_score_per_member", blocking=True, pool="duckdb",
                    description="Each day: one finite score for every member of the market with prices (and so "
                                "features), no other.")
    def _check(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as con:
            days, short_days, duplicates, non_finite, example = con.execute(f"""
                WITH members AS (
                    SELECT f.date, count(*) AS n FROM {wh.PRICES} f JOIN {wh.UNIVERSE} u
                      ON u.market = $3 AND u.instrument = f.instrument AND f.date BETWEEN u.start_date AND u.end_date
                    WHERE f.date BETWEEN $1 AND $2 GROUP BY 1),
                scores AS (
                    SELECT date, count(*) AS n, count(DISTINCT instrument) AS k,
                           count(*) FILTER (WHERE NOT isfinite(score) OR score IS NULL) AS bad
                    FROM {wh.PREDICTIONS} WHERE model = $4 AND date BETWEEN $1 AND $2 GROUP BY 1)
                SELECT count(*), count(*) FILTER (WHERE s.n IS DISTINCT FROM m.n),
                       coalesce(sum(s.n - s.k), 0), coalesce(sum(s.bad), 0),
                       min(CASE WHEN s.n IS DISTINCT FROM m.n THEN strftime(coalesce(m.date, s.date), '%Y-%m-%d') END)
                FROM members m FULL JOIN scores s ON s.date = m.date""",
                [*check_range(context), get_settings().market, name]).fetchall()[0]
        why = ("no day of scores or members" if days == 0 else
               f"{short_days} days whose scores are not one per member with prices, the first {example}"
               if short_days else f"{int(duplicates)} duplicate and {int(non_finite)} non-finite scores"
               if duplicates or non_finite else None)
        return dg.AssetCheckResult(passed=days > 0 and short_days == 0 and duplicates == 0 and non_finite == 0,
                                   description=why,
                                   metadata={"days": days, "days_with_other_counts": short_days,
                                             "duplicate_scores": int(duplicates), "non_finite_scores": int(non_finite),
                                             "first_day_off": example or ""})

    return _check


SIGNIFICANT_T = 2.0  # t-statistic of the daily valid ICs above which a model ranks the stocks better than chance


def _checkpoint_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=checkpoint_key(name), name="valid_score_finite_and_beats_a_placebo", blocking=True,
                    description="The checkpoints of the run's days: best valid loss and IC finite (else an error that "
                                "blocks their predictions); the valid loss no worse than a placebo that scores every "
                                f"stock 0, or the daily valid ICs significantly positive, t > {SIGNIFICANT_T:g} (else a warning: the "
                                "model learnt nothing that generalizes). A model that ranks the stocks but spreads its "
                                "scores wider than the labels loses to the placebo's loss and still learnt.")
    def _check(context: dg.AssetCheckExecutionContext, checkpoints: CheckpointStore) -> dg.AssetCheckResult:
        import json

        from qpipe.training.checkpoint import checkpoint_paths

        first, last = (str(day) for day in check_range(context))
        days = [day for day in checkpoints.partitions(name) if first <= day <= last]
        broken, worse = [], []
        for day in days:
            sidecar = json.loads(checkpoint_paths(checkpoints.path_for(name, day))[1].read_text())
            best = sidecar["history"][sidecar["best_epoch"] - 1]
            loss, ic, placebo = best["valid_loss"], best["valid_ic"], sidecar.get("placebo_valid_loss")
            ranks = (best.get("valid_ic_t") or 0) > SIGNIFICANT_T  # (sidecars before it: None, or absent)
            if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (loss, ic)):
                broken.append(day)
            elif placebo is not None and np.isfinite(placebo) and loss > placebo and not ranks:
                worse.append(day)
        severity = dg.AssetCheckSeverity.ERROR if broken or not days else dg.AssetCheckSeverity.WARN
        # a sentence, not only figures (found in review: a failed check showed four numbers and no reason)
        why = (f"no checkpoint of {first}..{last}" if not days else
               f"{', '.join(broken)}: the best valid loss or IC is not finite (NaN or inf): its predictions do not run"
               if broken else
               f"{', '.join(worse)}: valid loss {loss:.4f} is worse than the placebo's {placebo:.4f} (every stock "
               f"scored 0), and the valid IC's t {best.get('valid_ic_t') or 0:.2f} is not above {SIGNIFICANT_T:g}: "
               "nothing learnt that generalizes" if worse else None)
        return dg.AssetCheckResult(passed=bool(days) and not broken and not worse, severity=severity, description=why,
                                   metadata={
            "days": len(days), "non_finite_days": ", ".join(broken), "worse_than_placebo_days": ", ".join(worse),
            **({"valid_loss": float(loss), "placebo_valid_loss": float(placebo), "valid_ic_t": best.get("valid_ic_t")}
               if days and not broken and placebo is not None else {})})

    return _check


def _recorded_provenance(path: Path) -> dict[str, Any]:
    """How the checkpoint stored at ``path`` was trained, as its sidecar records it ({} where it cannot be read)."""
    from qpipe.training.checkpoint import checkpoint_paths

    try:
        return json.loads(checkpoint_paths(path)[1].read_text()).get("provenance") or {}
    except (OSError, ValueError):
        return {}


def _checkpoint_of(con, name: str, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, str]:
    """The checkpoint partition of each day's stored ``name`` scores in [start, end]."""
    if not wh.has_table(con, wh.PREDICTIONS):
        return {}
    return dict(con.execute(f"SELECT date::VARCHAR, any_value(checkpoint_partition::VARCHAR) FROM {wh.PREDICTIONS} "
                            "WHERE model = ? AND date BETWEEN ? AND ? GROUP BY 1", [name, start.date(), end.date()])
                .fetchall())


def backtest_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["reports", f"{name}_backtest"])


REGION_SETTINGS = ("limit_threshold", "trade_unit")  # the market's exchange decides them at run time


def _port_analysis_fields() -> dict[str, tuple]:
    """BacktestConfig's settings as the launchpad types them, so that a misspelt name or a value of the wrong type is
    refused while it is typed (found in review: a dict let both through to the run). Their rules (a cost >= 0) are
    BacktestConfig's, checked at run start in one line; the region's two take a number, ``none`` or ``region``;
    deal_price Qlib's ``$close`` too."""
    from qpipe.evaluation.backtest import BacktestConfig, DealPrice

    def typed(name: str, field: FieldInfo) -> tuple:
        if name in REGION_SETTINGS:
            return Any, Field("region", description=f"{field.description}; region: the Qlib region's of the market's "
                                                    "exchange (XSHG/XSHE: cn's lots of 100 and 9.5% limit; any other: "
                                                    "us's whole shares and no limit)")
        if name == "deal_price":  # (found in review: its description named $close, which the launchpad refused)
            prices = get_args(DealPrice)
            return Literal[(*prices, *(f"${p}" for p in prices))], Field(field.default, description=field.description)
        return field.annotation, Field(field.default, description=field.description)

    return {name: typed(name, field) for name, field in BacktestConfig.model_fields.items()}


class _Strict(dg.Config):
    # (found in review: PortAnalysis(n_dorp=3) dropped the name in silence, and topk="10" went through as 10, both
    # refused in the launchpad)
    model_config = ConfigDict(extra="forbid", strict=True)


PortAnalysis = create_model("PortAnalysis", __base__=_Strict, **_port_analysis_fields())


class PortfolioConfig(dg.Config):
    """Qlib's port_analysis_config for the backtest, flat, with Qlib's names (qpipe.evaluation.backtest)."""

    port_analysis: PortAnalysis = Field(default_factory=PortAnalysis, description=(  # type: ignore[valid-type]
        "strategy and exchange settings with Qlib's names; default: Qlib's benchmark workflows, with the region "
        "defaults of the market's exchange (limit_threshold and trade_unit: region). The benchmark is QPIPE_BENCHMARK "
        "(an index instrument of the source), else the equal-weighted market; the signal is this model's stored "
        "predictions"))

    def resolve(self) -> "BacktestConfig":
        from qpipe.calendar import market_calendar
        from qpipe.evaluation.backtest import backtest_config, region_defaults

        calendar = market_calendar()  # an exchange's, or a source's own dates on the exchange they match
        chosen = {k: v for k, v in self.port_analysis.model_dump().items() if v != "region"}
        try:  # one line naming the key, the value and what is expected, before anything is read or written
            return backtest_config({**region_defaults(calendar.matched or calendar.name), **chosen}, "port_analysis")
        except ValueError as error:
            raise dg.Failure(str(error)) from None


def backtest_figures(daily) -> dict[str, float]:
    """What the UI plots over a backtest's partitions: risk_analysis of the excess return with and without cost
    (mode sum, as Qlib's table; the annualized return compounded too) and the benchmark's, to date."""
    from qpipe.evaluation.backtest_store import return_series
    from qpipe.evaluation.risk import risk_analysis

    if len(daily) < 2:
        return {}
    figures = {}
    for series, returns in return_series(daily).items():
        label = series.removeprefix("excess return ").removesuffix(" return")
        summed, compounded = risk_analysis(returns), risk_analysis(returns, mode="product")
        figures |= {f"{name} ({label})": summed[name] for name in ("annualized_return", "information_ratio", "max_drawdown")}
        figures[f"annualized_return ({label}, product)"] = compounded["annualized_return"]
    return finite(figures)


def _backtest_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=backtest_key(name),
        description=f"{_title(name)} scores traded as Qlib's PortAnaRecord (TopkDropoutStrategy, daily exchange): "
                    "the score of day T trades at T+1; DuckDB reports.backtest_daily / _positions / _trades / "
                    "_strategy; "
                    "annualized excess return, IR and max drawdown with and without cost to date, the benchmark's; a "
                    "self-contained HTML tear sheet (backtest, risk, alphalens-style signal views).",
        partitions_def=trading_days,
        deps=[dg.AssetDep(predictions_key(name), partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-1, end_offset=-1)), dg.AssetDep(["raw", "prices"])],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="duckdb",
        group_name="reports",
        kinds={"duckdb", "matplotlib"},
        tags=_tags(name),
        code_version=backtest_version(),
        metadata={"dagster/table_name": "reports.backtest_daily"},
    )
    def _backtest(context: dg.AssetExecutionContext, config: PortfolioConfig, warehouse: Warehouse,
                  compute: Compute) -> dg.MaterializeResult:
        from qpipe.evaluation import backtest_store, report, tearsheet
        from qpipe.evaluation.risk import indicator_analysis

        start, end = partition_dates(context)
        refuse_before_the_close(end, "a session is traded at its close, on the prices that come in after it")
        settings = get_settings()
        portfolio = config.resolve()
        folder = settings.home / "reports"
        with warehouse.get_connection() as con:
            refuse_days_without(con, wh.PRICES, "date", start, end, "raw/prices")
            try:
                result, later = backtest_store.run_backtest(con, name, start.date(), end.date(), settings.market,
                                                            portfolio, benchmark=settings.benchmark,
                                                            load_cells=compute.load_cells)
            except backtest_store.BacktestGap as gap:
                raise dg.Failure(str(gap)) from None
            daily = backtest_store.read_daily(con, name)
            indicators = backtest_store.read_daily(con, name, backtest_store.INDICATORS_TABLE)
            chart = report.backtest_chart(daily, name, folder / f"{name}_backtest.png")
            sheet = tearsheet.write_model_tearsheet(con, name, later[-1] if later else end.date(),
                                                    portfolio.model_dump(), chart, folder)
        # what the UI plots over partitions: on each day, risk_analysis to that day, Qlib's indicator_analysis of the
        # trades to it, and the day's own figures
        def to_date(day: pd.Timestamp) -> dict[str, float]:
            return backtest_figures(daily[daily["date"] <= day]) | finite(indicator_analysis(
                indicators[indicators["date"] <= day]))

        days = {str(day.date()): to_date(day) | finite(
            {"return": row["return"], "turnover": row["turnover"], "holdings": row["holdings"]})
            for day, row in result.report.iterrows()}
        per_partition(context, days)
        figures = to_date(pd.Timestamp(later[-1] if later else end))
        signal = folder / f"{name}_signal.png"  # the tear sheet's alphalens-style views (found in review: only in
        context.add_asset_metadata({"backtest": inline(chart, f"{name} backtest"),  # the HTML, no use remotely)
                                    **({"signal": inline(signal, f"{name} quantile returns and IC decay")}
                                       if signal.exists() else {})},
                                   partition_key=context.partition_keys[-1])  # on the page's materialization
        if result.deals_at_close:
            context.log.warning(f"{portfolio.deal_price} is missing on {result.deals_at_close} of the quotes that have "
                                "a close (a source without it: Yahoo's has no vwap): those deal at the close, as "
                                "Qlib's exchange deals them (it warns 'setting deal_price to close price')")
        context.log.info(f"{name}: {len(result.report)} sessions traded, {len(result.trades)} orders"
                         + "; to date: " + ", ".join(f"{k} {v:+.4f}" for k, v in figures.items()) + recording(context))
        if later:  # traded again from this range's new state: Dagster records them as materialized by this run
            context.log.info(f"{name}: the {len(later)} stored days after {end.date()} ({later[0]}..{later[-1]}) "
                             "follow from these: traded again too")
            for day in map(str, later):
                context.log_event(dg.AssetMaterialization(asset_key=backtest_key(name), partition=day, metadata={
                    **days[day], "traded again": f"after the run of {start.date()}..{end.date()}"}))
        return dg.MaterializeResult(metadata={
            "days": len(daily), "orders": len(result.trades), "deals_at_close": result.deals_at_close,
            "later_days_traded_again": len(later),
            "strategy": dg.MetadataValue.json(portfolio.model_dump()),
            "backtest chart": dg.MetadataValue.path(str(chart)),
            "tear sheet": dg.MetadataValue.path(str(sheet)),
        })

    return _backtest


def build_model_defs(name: str) -> list[dg.AssetsDefinition]:
    if model_parts(name)[1]:
        refuse_variant_without_a_preset(name)
    return [_checkpoint_asset(name), _predictions_asset(name), _ic_asset(name), _backtest_asset(name)]


MODELS = ARCHITECTURES + get_settings().variants  # every model with assets: the architectures, QPIPE_MODELS' variants
model_assets = [asset for name in MODELS for asset in build_model_defs(name)]
model_checks = [check for name in MODELS
                for check in (_checkpoint_check(name), _predictions_check(name), _scores_spread_check(name))]
