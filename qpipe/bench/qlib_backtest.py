"""Qlib 0.9.7's own backtest on the market ``python -m qpipe.bench backtest --qlib-python PY`` dumped.

The side-by-side half of the backtest benchmark. It needs pyqlib, which is not a qpipe dependency, so it
runs in a scratch venv and imports nothing from qpipe:

    /tmp/qlibvenv/bin/python qpipe/bench/qlib_backtest.py DIR

DIR holds a provider directory (provider/) and the scores (scores.parquet). The strategy, executor and
exchange settings are the benchmark workflows' port_analysis_config (region cn: trade unit 100). It prints
one JSON line: the seconds of qlib.backtest.backtest and the annualized excess return with cost.
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import qlib
from qlib.backtest import backtest, executor
from qlib.contrib.evaluate import risk_analysis
from qlib.contrib.strategy import TopkDropoutStrategy


def main(folder: Path) -> None:
    qlib.init(provider_uri=str(folder / "provider"), region="cn", kernels=1, expression_cache=None, dataset_cache=None)
    scores = pd.read_parquet(folder / "scores.parquet")
    dates = sorted(scores["date"].unique())
    signal = scores.rename(columns={"date": "datetime"}).set_index(["datetime", "instrument"])[["score"]]
    began = time.perf_counter()
    metrics, _ = backtest(
        start_time=dates[1], end_time=dates[-1], strategy=TopkDropoutStrategy(signal=signal, topk=50, n_drop=5),
        executor=executor.SimulatorExecutor(time_per_step="day", generate_portfolio_metrics=True),
        account=1e8, benchmark="SH000300",
        exchange_kwargs={"freq": "day", "limit_threshold": 0.095, "deal_price": "close", "open_cost": 0.0005,
                         "close_cost": 0.0015, "min_cost": 5})
    seconds = time.perf_counter() - began
    report, _ = metrics["1day"]
    excess = report["return"] - report["bench"] - report["cost"]
    print(json.dumps({"seconds": seconds, "annualized_return": float(risk_analysis(excess)["risk"]["annualized_return"]),
                      "days": len(report)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
