"""Re-create the Qlib goldens in this folder. Never imported by tests (pyqlib is not a qpipe dependency).

Run it from the repository root with pyqlib installed in a scratch venv outside the repo:

    python3.11 -m venv /work/scratch/qlibvenv
    /work/scratch/qlibvenv/bin/pip install pyqlib==0.9.7
    /work/scratch/qlibvenv/bin/python qpipe_tests/golden/make_golden.py

It writes the deterministic fixture ``fixture_prices.csv``, dumps it as Qlib ``.bin`` data into a
temporary provider dir (calendars/day.txt, instruments/all.txt, features/<inst>/<field>.day.bin),
then asks Qlib's own ``D.features`` for Alpha158, Alpha360 and the label and runs Qlib's own
processor classes on a frame derived from the Alpha158 golden. See README.md for the file list.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # qpipe.calendar only needs pandas

from qpipe.calendar import trading_days  # noqa: E402

FIELDS = ("open", "high", "low", "close", "vwap", "volume")
LABEL_EXPR = "Ref($close, -2)/Ref($close, -1) - 1"
FIT_WINDOW = ("2020-03-02", "2020-05-29")
BENCHMARK_20 = ["KLEN", "KLOW", "ROC60", "STD5", "RSQR5", "RSQR10", "RSQR20", "RSQR60", "RESI5", "RESI10",
                "CORR5", "CORR10", "CORR20", "CORR60", "CORD5", "CORD10", "CORD60", "VSTD5", "WVMA5", "WVMA60"]


def _walk(rng: np.random.Generator, n: int, level: float, vol: float) -> dict[str, np.ndarray]:
    close = level * np.exp(np.cumsum(rng.normal(0, vol, n)))
    open_ = np.r_[level, close[:-1]] * np.exp(rng.normal(0, vol / 4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, vol / 2, n)))
    vwap = (high + low + close) / 3
    volume = np.round(rng.lognormal(12, 0.5, n))
    return {"open": open_, "high": high, "low": low, "close": close, "vwap": vwap, "volume": volume}


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """zstd with byte-stream-split floats: keeps every golden value exact and the folder under 2 MB."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    pq.write_table(table, path, compression="zstd", compression_level=19, use_dictionary=False,
                   use_byte_stream_split=floats)


def make_fixture() -> pd.DataFrame:
    """Six instruments over 151 NYSE days, each carrying some of the edge cases Qlib treats specially."""
    dates = trading_days("2020-01-02", "2020-08-06")
    n = len(dates)
    rng = np.random.default_rng(20200102)
    series = {
        "BIG": _walk(rng, n, 4123.5, 0.02),  # large price level, one-day suspension
        "FLAT": _walk(rng, n, 10.0, 0.015),  # 26-day flat stretch, tied highs and lows
        "GONE": _walk(rng, n, 55.0, 0.03),  # delisted after row 104
        "LATE": _walk(rng, n, 1.0, 0.025),  # listed at row 45 (qlib-style first close ~ 1)
        "NOVWAP": _walk(rng, n, 0.0123, 0.02),  # tiny price level, vwap missing everywhere, a zero close
        "ZVOL": _walk(rng, n, 23.0, 0.02),  # zero / NaN volume days, 5-day suspension, a zero open
    }
    s = series["BIG"]
    for f in FIELDS:
        s[f][30] = np.nan
    s = series["FLAT"]
    for f in ("open", "high", "low", "close", "vwap"):
        s[f][80:106] = 10.0
    s["volume"][80:95] = 250000.0  # flat volume too: Corr(close, Log(volume+1)) masked on both sides
    s["high"][[60, 62, 64]] = s["high"][55:66].max() * 1.05  # tied highs inside a 5/10-day window
    s["low"][[61, 63]] = s["low"][55:66].min() * 0.95  # tied lows
    s["volume"][50] = 0.0
    s = series["NOVWAP"]
    s["vwap"][:] = np.nan
    s["close"][120] = s["low"][120] = 0.0  # a zero price: x/0 = +-inf survives into the features and label
    s = series["ZVOL"]
    s["volume"][[20, 21, 90]] = np.nan  # prices present, volume unknown
    s["volume"][30:33] = 0.0
    s["open"][100] = 0.0  # kbar features divide by $open
    for f in FIELDS:
        s[f][70:75] = np.nan
    spans = {"GONE": slice(0, 105), "LATE": slice(45, n)}
    frames = []
    for inst, fields in series.items():
        rows = spans.get(inst, slice(0, n))
        frame = pd.DataFrame({"date": pd.to_datetime(dates[rows]), "instrument": inst})
        for f in FIELDS:
            frame[f] = fields[f][rows]
        frames.append(frame)
    out = pd.concat(frames).sort_values(["date", "instrument"], kind="stable").reset_index(drop=True)
    for f in FIELDS:  # 7 significant digits: both the bins and qpipe read float32(float64(text))
        out[f] = out[f].map(lambda v: float(f"{v:.7g}"))
    return out


def dump_bins(prices: pd.DataFrame, root: Path) -> None:
    """Write Qlib's on-disk layout: calendar, instrument spans, one float32 .bin per field."""
    calendar = pd.DatetimeIndex(sorted(prices["date"].unique()))
    (root / "calendars").mkdir(parents=True)
    (root / "instruments").mkdir()
    (root / "calendars" / "day.txt").write_text("".join(f"{d:%Y-%m-%d}\n" for d in calendar))
    spans = []
    for inst, g in prices.groupby("instrument"):
        g = g.set_index("date").reindex(calendar[calendar.slice_indexer(g["date"].min(), g["date"].max())])
        spans.append(f"{inst}\t{g.index[0]:%Y-%m-%d}\t{g.index[-1]:%Y-%m-%d}\n")
        start = calendar.get_loc(g.index[0])
        folder = root / "features" / inst.lower()
        folder.mkdir(parents=True)
        for f in FIELDS:
            values = g[f].to_numpy(dtype=np.float64).astype(np.float32)
            np.hstack([np.float32(start), values]).astype("<f").tofile(folder / f"{f}.day.bin")
    (root / "instruments" / "all.txt").write_text("".join(spans))


def qlib_features(fields: list[str], names: list[str], start: str, end: str) -> pd.DataFrame:
    from qlib.data import D

    raw = D.features(D.instruments("all"), fields, start_time=start, end_time=end)
    raw.columns = names
    raw = raw.reset_index().rename(columns={"datetime": "date"})
    out = raw[["date", "instrument", *names]].sort_values(["date", "instrument"]).reset_index(drop=True)
    assert all(out[c].dtype == np.float32 for c in names), "Qlib returned a non-float32 column"
    return out


def processor_input(alpha158: pd.DataFrame, label: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Qlib-shaped frame (datetime, instrument) x (group, name) with a few injected edge cells."""
    df = alpha158.merge(label, on=["date", "instrument"]).rename(columns={"date": "datetime"})
    df = df.set_index(["datetime", "instrument"]).sort_index()
    df.columns = pd.MultiIndex.from_tuples([("label" if c == "LABEL0" else "feature", c) for c in df.columns])
    dates = df.index.get_level_values("datetime").unique()
    all_inf_day, mixed_inf_day, tie_day = dates[100], dates[101], dates[102]
    in_fit = (df.index.get_level_values("datetime") >= FIT_WINDOW[0]) & (
        df.index.get_level_values("datetime") <= FIT_WINDOW[1])
    df.loc[all_inf_day, ("feature", "KLEN")] = np.inf
    df.loc[(mixed_inf_day, "BIG"), ("feature", "KLEN")] = np.inf
    df.loc[(mixed_inf_day, "FLAT"), ("feature", "KLEN")] = -np.inf
    df.loc[(mixed_inf_day, "ZVOL"), ("feature", "STD5")] = -np.inf
    df.loc[in_fit, ("feature", "KLOW")] = np.float32(0.25)
    tie = df.loc[(tie_day, "BIG"), ("label", "LABEL0")]
    df.loc[(tie_day, "GONE"), ("label", "LABEL0")] = tie
    injected = {
        "KLEN=+inf on every instrument": str(all_inf_day.date()),
        "KLEN=+inf (BIG), -inf (FLAT), STD5=-inf (ZVOL)": str(mixed_inf_day.date()),
        "KLOW=0.25 on every row inside the fit window": list(FIT_WINDOW),
        "LABEL0 of GONE set equal to LABEL0 of BIG (rank tie)": str(tie_day.date()),
    }
    assert all(df[c].dtype == np.float32 for c in df.columns)
    return df, injected


def flat(df: pd.DataFrame, group: str | None = None) -> pd.DataFrame:
    """(datetime, instrument, columns of ``group`` or of every group) with plain column names."""
    out = df.copy() if group is None else df[[group]].copy()
    out.columns = out.columns.get_level_values(-1)
    return out.reset_index()


def processor_goldens(alpha158: pd.DataFrame, label: pd.DataFrame) -> None:
    from qlib.data.dataset import processor as P

    full, injected = processor_input(alpha158, label)
    fit = {"fit_start_time": pd.Timestamp(FIT_WINDOW[0]), "fit_end_time": pd.Timestamp(FIT_WINDOW[1])}
    base = P.FilterCol(fields_group="feature", col_list=BENCHMARK_20)(full.copy())
    folder = HERE / "qlib_processors"
    folder.mkdir(exist_ok=True)
    write_parquet(flat(base), folder / "input.parquet")
    cases = {
        "RobustZScoreNorm": ("RobustZScoreNorm", {"fields_group": "feature", "clip_outlier": True, **fit}),
        "RobustZScoreNorm_noclip": ("RobustZScoreNorm", {"fields_group": "feature", "clip_outlier": False, **fit}),
        "ZScoreNorm": ("ZScoreNorm", {"fields_group": "feature", **fit}),
        "Fillna": ("Fillna", {"fields_group": "feature", "fill_value": 0}),
        "ProcessInf": ("ProcessInf", {}),
        "CSZFillna": ("CSZFillna", {"fields_group": "feature"}),
        "CSRankNorm": ("CSRankNorm", {"fields_group": "label"}),
        "CSZScoreNorm": ("CSZScoreNorm", {"fields_group": "label"}),
        "CSZScoreNorm_robust": ("CSZScoreNorm", {"fields_group": "feature", "method": "robust"}),
        "DropnaLabel": ("DropnaLabel", {}),
    }
    fitted = {}
    for case, (cls, kwargs) in cases.items():
        proc = getattr(P, cls)(**kwargs)
        df = base.copy()
        proc.fit(df)
        out = proc(df)
        group = kwargs.get("fields_group")  # only the processed group is stored; the other one is asserted unchanged
        for other in {"feature", "label"} - {group} if group else ():
            pd.testing.assert_frame_equal(out[[other]], base[[other]])
        stored = out.index.to_frame(index=False) if cls == "DropnaLabel" else flat(out, group)
        write_parquet(stored, folder / f"{case}.parquet")
        if hasattr(proc, "mean_train"):
            fitted[case] = {"mean_train": proc.mean_train.tolist(), "std_train": proc.std_train.tolist()}
    # benchmark chain, process_type="append": infer processors, then learn processors on their output (IT_FIT_SEQ)
    chain = [P.RobustZScoreNorm(fields_group="feature", clip_outlier=True, **fit), P.Fillna(fields_group="feature"),
             P.DropnaLabel(), P.CSRankNorm(fields_group="label")]
    df = base.copy()
    for proc in chain:
        proc.fit(df)
        df = proc(df)
    write_parquet(flat(df), folder / "chain.parquet")
    cases["chain"] = ("ProcessorChain", {"processors": [
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True, **fit}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        {"class": "DropnaLabel", "kwargs": {}},
        {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}]})
    meta = {
        "input": "alpha158 golden + label golden, FilterCol(col_list=filtercol_list) applied, cells injected",
        "filtercol_list": BENCHMARK_20,
        "filtercol_output_columns": list(base.columns.get_level_values(-1)),
        "injected": injected,
        "fit_window": list(FIT_WINDOW),
        "cases": {k: {"class": c, "kwargs": {a: (str(v.date()) if isinstance(v, pd.Timestamp) else v)
                                             for a, v in kw.items()}} for k, (c, kw) in cases.items()},
        "fitted": fitted,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


def main() -> None:
    import qlib
    from qlib.contrib.data.loader import Alpha158DL, Alpha360DL

    prices = make_fixture()
    prices.assign(date=prices["date"].dt.strftime("%Y-%m-%d")).to_csv(HERE / "fixture_prices.csv", index=False)
    prices = pd.read_csv(HERE / "fixture_prices.csv", parse_dates=["date"])  # bins see exactly the CSV text
    start, end = f"{prices['date'].min():%Y-%m-%d}", f"{prices['date'].max():%Y-%m-%d}"
    with tempfile.TemporaryDirectory() as tmp:
        dump_bins(prices, Path(tmp))
        qlib.init(provider_uri=tmp, region="cn", kernels=1, expression_cache=None, dataset_cache=None)
        conf158 = {"kbar": {}, "price": {"windows": [0], "feature": ["OPEN", "HIGH", "LOW", "VWAP"]}, "rolling": {}}
        f158, n158 = Alpha158DL.get_feature_config(conf158)
        assert len(n158) == 158 and len(set(n158)) == 158
        f360, n360 = Alpha360DL.get_feature_config()
        assert len(n360) == 360
        alpha158 = qlib_features(f158, n158, start, end)
        alpha360 = qlib_features(f360, n360, start, end)
        label = qlib_features([LABEL_EXPR], ["LABEL0"], start, end)
    write_parquet(alpha158, HERE / "qlib_alpha158.parquet")
    write_parquet(alpha360, HERE / "qlib_alpha360.parquet")
    write_parquet(label, HERE / "qlib_label.parquet")
    processor_goldens(alpha158, label)


if __name__ == "__main__":
    main()
