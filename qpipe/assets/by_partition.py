"""What a run records of each partition it materializes: its own figures, and a data version that stays where the
rows stayed.

A range run (a backfill, the main job) records one materialization per partition, all from one output: the same
metadata and the same data version on each, unless the step says otherwise. So figures of a day (its row count, its
IC) are given per partition, and each day's stored rows get a digest of their own (``rows_digest``). A run whose days
all have the digests their last materializations recorded keeps the version those partitions hold: a day's own
digest never equals the digest a range run stamped on it, and every asset downstream would show as changed.

Each ``add_asset_metadata`` with a partition makes Dagster list the run's partitions again: about 2 ms a day at 750
days, seconds for a range of years, beside minutes of the work itself.
"""

import math
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

from qpipe.data.warehouse import NO_ROWS, range_version

DATA_VERSION_TAG = "dagster/data_version"
ROWS_DIGEST = "rows_digest"


def per_partition(context: dg.AssetExecutionContext, figures: Mapping[str, Mapping[str, Any]],
                  asset_key: dg.AssetKey | None = None) -> None:
    """Each partition of the run's metadata from ``figures`` (partition key -> its own)."""
    for partition in context.partition_keys:
        if partition in figures:
            context.add_asset_metadata(dict(figures[partition]), asset_key=asset_key, partition_key=partition)


def finite(figures: Mapping[str, float]) -> dict[str, float]:
    """The figures that are numbers (a NaN or infinite one is no point of the UI's plot), to 6 significant digits
    (found in review: 17 of them, 0.051092640087707114, in the metadata panel)."""
    return {name: float(f"{float(value):.6g}") for name, value in figures.items() if math.isfinite(value)}


def rows_by_partition(context: dg.AssetExecutionContext, digests: Mapping[str, str],
                      asset_key: dg.AssetKey | None = None) -> None:
    """Each partition's row count and ``rows_digest`` (``digests``: day -> "rows-digest"; a day without rows has 0)."""
    per_partition(context, {day: {"dagster/partition_row_count": int(version.split("-")[0]), ROWS_DIGEST: version}
                            for day, version in _every_day(context, digests).items()}, asset_key)


def rows_version(context: dg.AssetExecutionContext, key: dg.AssetKey, digests: Mapping[str, str]) -> dg.DataVersion:
    """The digest of the run's rows (of its days' ``digests``); but where every partition's last materialization
    recorded the digest its rows have now and all hold one version, that one."""
    days = _every_day(context, digests)
    stored = context.instance.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(days))
    if len(stored) == len(days):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=list(stored.values())), limit=len(stored)).records
        kept = {(r.asset_materialization.partition, _digest(r.asset_materialization.metadata)) for r in records}
        versions = {r.asset_materialization.tags.get(DATA_VERSION_TAG) for r in records}
        if kept == set(days.items()) and len(versions) == 1 and None not in versions:
            return dg.DataVersion(versions.pop())
    return dg.DataVersion(range_version(days.values()))


def _every_day(context: dg.AssetExecutionContext, digests: Mapping[str, str]) -> dict[str, str]:
    return {day: digests.get(day, NO_ROWS) for day in context.partition_keys}


def _digest(metadata: Mapping[str, Any]) -> str | None:
    entry = metadata.get(ROWS_DIGEST)
    return None if entry is None else entry.value
