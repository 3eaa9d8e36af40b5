"""The portfolio backtest's speed: qpipe vs Qlib's own backtest on the same market and scores, side by side.

    python -m qpipe.bench backtest [--instruments 300] [--days 750] [--qlib-python /tmp/qlibvenv/bin/python]

A synthetic market (random walks with factors, suspensions and limit moves, plus an index SH000300) and
random scores; qpipe's ``evaluation.backtest`` with the benchmark workflows' port_analysis_config (best of
three), and with ``--qlib-python`` Qlib 0.9.7's ``backtest`` on a provider directory of the same market
(qpipe/bench/qlib_backtest.py, in that interpreter). Prints seconds, the ratio and both annualized
excess returns with cost (they agree: tests/test_backtest.py checks the semantics against Qlib's goldens).
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from qpipe.data.qlib_provider import FIELDS, write_qlib_provider
from qpipe.evaluation.backtest import BacktestConfig, backtest, benchmark_returns

HERE = Path(__file__).resolve().parent


def make_market(instruments: int, days: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2018-01-02", periods=days + 2)  # the session before, and one after (Qlib reads it)
    names = [*(f"SH6{i:05d}" for i in range(instruments)), "SH000300"]
    returns = rng.normal(0, 0.02, (len(dates), len(names)))
    jumps = rng.random(returns.shape) < 0.004  # limit moves
    returns[jumps] = np.sign(rng.normal(size=jumps.sum())) * 0.1
    close = rng.uniform(3, 60, len(names)) * np.exp(np.cumsum(returns, axis=0))
    factor = np.broadcast_to(rng.uniform(0.5, 3, len(names)), close.shape).copy()
    close, factor = close * factor, factor
    suspended = rng.random(close.shape) < 0.01
    suspended[:, -1] = False
    close[suspended] = np.nan
    prices = pd.DataFrame({"date": np.repeat(dates, len(names)), "instrument": np.tile(names, len(dates)),
                           "close": close.ravel(), "factor": np.where(suspended, np.nan, factor).ravel()})
    for field in ("open", "high", "low", "vwap"):
        prices[field] = prices["close"]
    prices["volume"] = np.where(prices["close"].isna(), np.nan, 1e6)
    prices[list(FIELDS)] = prices[list(FIELDS)].astype(np.float32).astype(np.float64)  # what the bins hold
    prices["change"] = prices.groupby("instrument")["close"].transform(lambda c: c / c.shift(1) - 1)
    scores = pd.DataFrame({"date": np.repeat(dates[:-1], instruments), "instrument": np.tile(names[:-1], len(dates) - 1),
                           "score": rng.normal(size=(len(dates) - 1) * instruments)})
    return prices, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instruments", type=int, default=300)
    parser.add_argument("--days", type=int, default=750)
    parser.add_argument("--qlib-python", default=None, help="an interpreter with pyqlib 0.9.7, for Qlib's side")
    args = parser.parse_args()
    prices, scores = make_market(args.instruments, args.days)
    dates = sorted(prices["date"].unique())
    days = dates[1:-1]
    config = BacktestConfig(trade_unit=100)
    stocks = prices[prices["instrument"] != "SH000300"]
    seconds = []
    for _ in range(3):
        began = time.perf_counter()
        result = backtest(scores, stocks, days, config, bench=benchmark_returns(prices, days, "SH000300"))
        seconds.append(time.perf_counter() - began)
    ours = result.risk()["excess_return_with_cost"]["annualized_return"]
    print(f"{args.instruments} instruments x {len(days)} sessions, topk 50 / n_drop 5, {len(result.trades)} trades")
    print(f"qpipe: {min(seconds):.2f} s (best of 3), annualized excess return with cost {ours:+.4f}")
    if args.qlib_python:
        with tempfile.TemporaryDirectory() as folder:
            write_qlib_provider(prices, Path(folder) / "provider")
            scores.to_parquet(Path(folder) / "scores.parquet", index=False)
            out = subprocess.run([args.qlib_python, str(HERE / "qlib_backtest.py"), folder], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
        qlib_run = json.loads(out)
        print(f"Qlib 0.9.7: {qlib_run['seconds']:.2f} s, annualized excess return with cost "
              f"{qlib_run['annualized_return']:+.4f}")
        print(f"qpipe is {qlib_run['seconds'] / min(seconds):.0f}x faster")


if __name__ == "__main__":
    main()
