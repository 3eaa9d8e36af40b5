"""Concept memberships from a file of your own (``QPIPE_CONCEPTS``): HIST's stock-to-concept matrix for a market
whose source has none (a CSV/Parquet folder, a Qlib provider directory).

One row per (instrument, concept): columns ``instrument`` (or ``symbol``, ``ticker``, ``code``, ``stock``),
``concept`` (or ``sector``, ``industry``) and optionally ``kind`` (``sector`` or ``concept``; ``concept`` where
absent). Qlib's HIST reads two .npy files instead; the README shows how to turn them into such a file.
"""

from pathlib import Path

import pandas as pd

from qpipe.data.validation import CONCEPT_COLUMNS, PriceDataError

ALIASES = {
    "instrument": ("instrument", "symbol", "ticker", "code", "stock"),
    "concept": ("concept", "sector", "industry"),
    "kind": ("kind",),
}
KINDS = ("sector", "concept")


def read_concepts(path: str | Path) -> pd.DataFrame:
    """The memberships of a CSV or Parquet file as raw/concepts holds them; errors name the file, row and rule."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PriceDataError("concepts file not found", str(file), detail="QPIPE_CONCEPTS names no file")
    parquet = file.suffix.lower() in (".parquet", ".pq")
    try:  # a ticker NA or NULL stays a name
        raw = pd.read_parquet(file) if parquet else pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as error:  # pyarrow's and pandas' own errors name neither the file nor the setting
        raise PriceDataError("unreadable concepts file", str(file), detail=str(error).splitlines()[0]) from None
    header = {str(c).strip().lower(): c for c in raw.columns}
    found = {name: next((header[a] for a in aliases if a in header), None) for name, aliases in ALIASES.items()}
    missing = [name for name in ("instrument", "concept") if found[name] is None]
    if missing:
        raise PriceDataError("missing columns", str(file), detail=f"required {missing} not found among {list(raw.columns)}")
    frame = pd.DataFrame({name: raw[column].astype("string").str.strip() if column is not None else "concept"
                          for name, column in found.items()})
    frame["kind"] = frame["kind"].fillna("concept").str.lower().replace("", "concept")
    empty = frame["instrument"].fillna("").eq("") | frame["concept"].fillna("").eq("")
    _refuse(frame, empty, file, "empty instrument or concept", "every row names a stock and a concept")
    _refuse(frame, ~frame["kind"].isin(KINDS), file, "unknown kind", f"kind is one of {', '.join(KINDS)}")
    _refuse(frame, frame.duplicated(["instrument", "concept"]), file, "duplicate (instrument, concept) row",
            "a stock belongs to a concept once")
    if frame.empty:
        raise PriceDataError("empty concepts file", str(file), detail="no memberships were found")
    out = frame.astype(object)[CONCEPT_COLUMNS]
    return out.sort_values(["instrument", "kind", "concept"], ascending=[True, False, True], ignore_index=True)


def _refuse(frame: pd.DataFrame, bad: pd.Series, file: Path, rule: str, why: str) -> None:
    """The first bad row, by its number among the data rows (blank lines of a CSV are not counted)."""
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        row = frame.iloc[i]
        instrument = None if pd.isna(row["instrument"]) or row["instrument"] == "" else row["instrument"]
        concept = None if pd.isna(row["concept"]) else row["concept"]
        raise PriceDataError(rule, str(file), instrument=instrument, count=int(bad.sum()),
                             detail=f"data row {i + 1} (concept {concept!r}, kind {row['kind']!r}): {why}")
