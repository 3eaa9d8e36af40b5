"""What a run records of each partition it materializes: its own figures, and a data version that stays where the
rows stayed.

A range run (a backfill, the main job) records one materialization per partition, all from one output: the same
metadata and the same data version on each, unless the step says otherwise. So figures of a day (its row count, its
IC) are given per partition, and a run that leaves the rows of its days as they were keeps the version their
partitions already have: a day's own digest never equals the digest a range run stamped on it, and every asset
downstream would show as changed.
"""

import math
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

DATA_VERSION_TAG = "dagster/data_version"


def per_partition(context: dg.AssetExecutionContext, figures: Mapping[str, Mapping[str, Any]],
                  asset_key: dg.AssetKey | None = None) -> None:
    """Each partition of the run's metadata from ``figures`` (partition key -> its own)."""
    for partition in context.partition_keys:
        if partition in figures:
            context.add_asset_metadata(dict(figures[partition]), asset_key=asset_key, partition_key=partition)


def finite(figures: Mapping[str, float]) -> dict[str, float]:
    """The figures that are numbers (a NaN or infinite one is no point of the UI's plot)."""
    return {name: float(value) for name, value in figures.items() if math.isfinite(value)}


def rows_version(context: dg.AssetExecutionContext, key: dg.AssetKey, before: str, after: str) -> dg.DataVersion:
    """``after``, the digest of the run's rows; but where they are those it found (``before``) and its partitions
    all hold one version already, that one."""
    if before == after:
        stored = context.instance.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(context.partition_keys))
        if len(stored) == len(context.partition_keys):
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, storage_ids=list(stored.values())), limit=len(stored)).records
            versions = {record.asset_materialization.tags.get(DATA_VERSION_TAG) for record in records}
            if len(versions) == 1 and None not in versions:
                return dg.DataVersion(versions.pop())
    return dg.DataVersion(after)
