"""How cost grows with the universe: wall time and peak RSS at 300 / 1,000 / 3,000 / 5,000 instruments.

    python -m qpipe.bench scaling [--instruments 300,1000,3000,5000] [--days 2500] [--block-cells N] [--load-cells N]
                                  [--frame-cells N]

For each size a synthetic market of that many instruments x ``--days`` trading days is stored in a
DuckDB file as the assets store it (prices and universe). Then, each in a fresh process so its peak RSS
is its own: the ingest of that market's whole history from one Parquet file as a vendor ships it (raw/prices' read
in blocks of ``--load-cells`` / 64 price rows, validated, anchored and stored in one transaction; then raw/universe's
spans of the file, their time printed below the table), the feature materialization (Alpha158 + Alpha360 +
label over every day but the last two, as the assets write them), a daily increment (the same three tables for the
next day, then the last day: the table shows the second, the first after the backfill is printed below it), one
LSTM Alpha360 checkpoint's data load (720 train + 240 valid days, Qlib's processors, ``--load-cells`` feature cells at a time; the size of the frames it
returns is printed beside it, and whether they were memory-mapped, as frames of more than ``--frame-cells`` cells
are, with the peak of the load's anonymous memory: what the kernel cannot page out), the predictions of every
featured day after the 300th from one MLP Alpha158 checkpoint trained on the 200 days before it (trained first, in
a process of its own: the table shows the predictions alone, scored in blocks of ``--load-cells`` feature cells and
streamed into the warehouse), and Qlib's TopK-dropout backtest (topk 50, n_drop 5) of those scores, its sessions
traded in blocks of ``--load-cells`` cells. The predictions and the backtest print their anonymous memory at its
peak too. It prints a table and, per phase, seconds per 1,000 instruments beside the smallest size's (linear growth
keeps it flat).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qpipe.settings import BLOCK_CELLS, FRAME_CELLS, LOAD_CELLS

PHASES = ("ingest", "features", "increment", "load", "predict", "backtest")
CHECKPOINT_DAY = 300  # the predictions' checkpoint is trained as of this trading day, on the 200 + 60 before it


def run_phase(phase: str, path: Path, instruments: int, days: int, block_cells: int, load_cells: int,
              frame_cells: int = FRAME_CELLS) -> dict:
    """One phase in this process; returns its seconds and this process's peak RSS."""
    import duckdb

    from qpipe.bench import anonymous_peak, peak_rss_gb, synthetic_market
    from qpipe.data import warehouse as wh
    from qpipe.features import store

    if phase == "market":
        market = synthetic_market(instruments, days)
        with duckdb.connect(str(path), config=wh.CONNECTION_CONFIG) as con:
            wh.write_prices(con, market.prices, market.prices["date"].min(), market.prices["date"].max(), "XNYS")
            wh.write_universe(con, market.universe, market.concepts)
        return {"rows": len(market.prices)}
    if phase == "ingest":
        return _ingest(path, load_cells)
    with duckdb.connect(str(path), config=wh.CONNECTION_CONFIG) as con:
        days_ = store.calendar(con)
        first, last = days_[0], days_[-1]
        began = time.perf_counter()
        if phase == "load":
            from qpipe.models.config import model_config
            from qpipe.training.dataset import load_training_data

            with anonymous_peak() as anonymous:
                data = load_training_data(con, model_config("lstm", "alpha360"), last, 720, 240, "all",
                                          load_cells=load_cells, frame_cells=frame_cells, scratch=path.parent / "scratch")
            return {"seconds": time.perf_counter() - began, "peak_rss_gb": peak_rss_gb(),
                    "rows": len(data.train.dates) + len(data.valid.dates), "anonymous_gb": anonymous(),
                    "frames_gb": data.frames_gb, "mapped": data.mapped}
        if phase in ("checkpoint", "predict", "backtest"):
            return _predictions(con, phase, path.parent / "checkpoints", days_[CHECKPOINT_DAY], load_cells)
        if phase == "features":  # every day but the last two, which the increments add
            rows = _write(con, first, days_[-3], block_cells)
        else:
            rows = _write(con, days_[-2], days_[-2], block_cells)
        seconds = time.perf_counter() - began
        if phase == "increment":  # the next day too: the first after a backfill can differ from the steady state
            began = time.perf_counter()
            _write(con, last, last, block_cells)
            return {"seconds": time.perf_counter() - began, "first_seconds": seconds, "peak_rss_gb": peak_rss_gb(),
                    "rows": rows}
        return {"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "rows": rows}


def _predictions(con, phase: str, root: Path, as_of, load_cells: int) -> dict:
    """"checkpoint": an MLP Alpha158 checkpoint as of ``as_of`` (one epoch); "predict": its scores for every featured
    day from ``as_of`` on, as the predictions asset writes them; "backtest": the backtest of those scores, as the
    backtest asset runs it."""
    from qpipe.bench import anonymous_peak, peak_rss_gb
    from qpipe.models.config import model_config
    from qpipe.resources import CheckpointStore
    from qpipe.training import dataset, predicting
    from qpipe.training.checkpoint import save_checkpoint
    from qpipe.training.engine import train

    store = CheckpointStore(root=str(root))
    if phase == "checkpoint":
        config = model_config("mlp", "alpha158", n_epochs=1, seed=0)
        data = dataset.load_training_data(con, config, as_of, 200, 60, "all", load_cells=load_cells)
        result = train(config, data.train, data.valid, device="cpu")
        save_checkpoint(store.path_for("mlp", str(as_of)), result, config, columns=data.train.columns,
                        windows=data.windows.to_json(), processor_state={
                            "infer": data.infer.to_state(), "learn": data.learn.to_state(),
                            "process_type": data.process_type})
        return {"rows": len(data.train.dates)}
    (last,) = con.execute("SELECT max(date) FROM features.alpha158").fetchone()
    began = time.perf_counter()
    with anonymous_peak() as anonymous:
        if phase == "backtest":
            from qpipe.evaluation.backtest import BacktestConfig
            from qpipe.evaluation.backtest_store import run_backtest

            result, _ = run_backtest(con, "mlp", as_of.item(), last, "all", BacktestConfig(), load_cells=load_cells)
            rows = len(result.trades)
        else:
            rows, _ = predicting.write_predictions(con, store, "mlp", as_of, last, "all", load_cells=load_cells)
    return {"seconds": time.perf_counter() - began, "peak_rss_gb": peak_rss_gb(), "rows": rows,
            "anonymous_gb": anonymous()}


def _ingest(path: Path, load_cells: int) -> dict:
    """The stored market as a vendor's Parquet file (not timed), then raw/prices' load of its whole history into a
    warehouse of its own and raw/universe's spans of it, as the assets run them."""
    import duckdb

    from qpipe.bench import anonymous_peak, peak_rss_gb
    from qpipe.calendar import exchange_calendar
    from qpipe.data import warehouse as wh
    from qpipe.data.ingest import ingest_prices
    from qpipe.data.tabular import TabularSource

    file = path.parent / "vendor.parquet"
    with duckdb.connect(str(path), read_only=True) as con:
        first, last = con.execute(f"SELECT min(date), max(date) FROM {wh.PRICES}").fetchone()
        con.execute(f"COPY (SELECT date, instrument AS symbol, open, high, low, close, vwap, volume, factor "
                    f"FROM {wh.PRICES} ORDER BY date, instrument) TO '{file}' (FORMAT parquet)")
    source = TabularSource(str(file))
    with anonymous_peak() as anonymous, duckdb.connect(str(path.parent / "ingested.duckdb"),
                                                        config=wh.CONNECTION_CONFIG) as con:
        began = time.perf_counter()
        done = ingest_prices(con, source, exchange_calendar("XNYS"), first, last, "vendor.parquet",
                             load_cells=load_cells)
        ingested = time.perf_counter()
        spans, _ = source.reference(load_cells=load_cells)
        return {"seconds": ingested - began, "universe_seconds": time.perf_counter() - ingested, "rows": done.rows,
                "blocks": done.blocks, "instruments": len(spans), "peak_rss_gb": peak_rss_gb(),
                "anonymous_gb": anonymous()}


def _write(con, start, end, block_cells: int) -> int:
    """The three feature tables' rows for [start, end], as the assets write them; returns rows written."""
    from qpipe.features import store

    return sum(store.write_features(con, list(store.FEATURE_SETS.values()), start, end, block_cells=block_cells)
               .values()) + store.write_labels(con, start, end, block_cells=block_cells)


def in_fresh_process(phase: str, path: Path, instruments: int, days: int, block_cells: int, load_cells: int,
                     frame_cells: int) -> dict:
    """The phase's figures, or NaN and the error's last line (e.g. killed for memory) when it failed."""
    out = subprocess.run([sys.executable, "-m", "qpipe.bench.scaling", "--phase", phase, "--warehouse", str(path),
                          "--instruments", str(instruments), "--days", str(days), "--block-cells", str(block_cells),
                          "--load-cells", str(load_cells), "--frame-cells", str(frame_cells)],
                         capture_output=True, text=True)
    if out.returncode:
        reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        print(f"  {phase} at {instruments:,} instruments failed: {reason}", flush=True)
        return {"seconds": float("nan"), "peak_rss_gb": float("nan"), "rows": 0}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", default="300,1000,3000,5000")
    parser.add_argument("--days", type=int, default=2500)
    parser.add_argument("--block-cells", type=int, default=BLOCK_CELLS, help="QPIPE_BLOCK_CELLS")
    parser.add_argument("--load-cells", type=int, default=LOAD_CELLS, help="QPIPE_LOAD_CELLS")
    parser.add_argument("--frame-cells", type=int, default=FRAME_CELLS, help="QPIPE_FRAME_CELLS")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # one phase, in this process
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, Path(args.warehouse), int(args.instruments), args.days,
                                   args.block_cells, args.load_cells, args.frame_cells)))
        return

    phases = args.phases.split(",")
    sizes = [int(n) for n in args.instruments.split(",")]
    cells = (args.block_cells, args.load_cells, args.frame_cells)
    print(f"{args.days} trading days, blocks of {args.block_cells:,} price cells (features) and {args.load_cells:,} "
          f"feature cells (load; frames of more than {args.frame_cells:,} cells memory-mapped); seconds and peak RSS "
          "per phase, each in its own process")
    print(f"{'instruments':>11} {'price rows':>11} " + " ".join(f"{p + ' s':>12} {'GB':>6}" for p in phases))
    table: dict[int, dict[str, dict]] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "warehouse.duckdb"
            rows = in_fresh_process("market", path, n, args.days, *cells)["rows"]
            needed = [*(["features"] if {"load", "predict", "backtest"} & set(phases) and "features" not in phases
                        else []), *phases]  # the load and the predictions read them
            if "backtest" in needed and "predict" not in needed:  # it trades the stored scores
                needed.insert(needed.index("backtest"), "predict")
            if "predict" in needed:
                needed.insert(needed.index("predict"), "checkpoint")
            table[n] = {phase: in_fresh_process(phase, path, n, args.days, *cells) for phase in needed}
        print(f"{n:>11,} {rows:>11,} " + " ".join(
            f"{table[n][p]['seconds']:>12.2f} {table[n][p]['peak_rss_gb']:>6.2f}" for p in phases), flush=True)
        if "ingest" in phases:
            ingest = table[n]["ingest"]
            print(f"{'':>24}(the ingest's {ingest.get('blocks', 0)} blocks of rows; raw/universe's spans of the file: "
                  f"{ingest.get('universe_seconds', float('nan')):.2f} s; anonymous memory at its peak "
                  f"{ingest.get('anonymous_gb', float('nan')):.2f} GB)", flush=True)
        if "increment" in phases:
            first = table[n]["increment"].get("first_seconds", float("nan"))
            print(f"{'':>24}(the first increment after the backfill: {first:.2f} s)", flush=True)
        if "load" in phases:
            load = table[n]["load"]
            print(f"{'':>24}(the frames the load returns: {load.get('frames_gb', float('nan')):.2f} GB"
                  f"{', memory-mapped' if load.get('mapped') else ', in memory'}; the load's anonymous memory peaked "
                  f"at {load.get('anonymous_gb', float('nan')):.2f} GB)", flush=True)
        if "predict" in phases:
            predict = table[n]["predict"]
            print(f"{'':>24}({predict['rows']:,} scores; the predictions' anonymous memory peaked at "
                  f"{predict.get('anonymous_gb', float('nan')):.2f} GB)", flush=True)
        if "backtest" in phases:
            backtest = table[n]["backtest"]
            print(f"{'':>24}({backtest['rows']:,} trades; the backtest's anonymous memory peaked at "
                  f"{backtest.get('anonymous_gb', float('nan')):.2f} GB)", flush=True)
    base = sizes[0]
    print(f"\nseconds per 1,000 instruments (flat = linear growth; vs {base:,} instruments):")
    for phase in phases:
        per = {n: table[n][phase]["seconds"] / n * 1000 for n in sizes}
        print(f"  {phase:<10} " + "  ".join(f"{n:,}: {per[n]:.2f} ({per[n] / per[base]:.2f}x)" for n in sizes))


if __name__ == "__main__":
    main()
