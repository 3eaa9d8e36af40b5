"""Re-create the Qlib backtest goldens in qlib_backtest/. Never imported by tests (pyqlib is not a qpipe dependency).

Run it from the repository root with pyqlib 0.9.7 in a scratch venv outside the repo (as make_golden.py):

    /work/scratch/qlibvenv/bin/python qpipe_tests/golden/make_backtest_golden.py   # ~20 s

A deterministic market of 70 stocks and an index (SH000300) over 60 weekdays, with factors, suspensions and
limit moves, is dumped as a Qlib provider directory; Qlib's own backtest then trades a fixed prediction frame
with the benchmark workflows' port_analysis_config (TopkDropoutStrategy topk 50 / n_drop 5, account 1e8,
SH000300, limit 0.095, close price, costs 0.0005 / 0.0015, min cost 5, cn's trade unit of 100 shares).
Stored: the market and the predictions (inputs), Qlib's report_normal_1day and positions, its trade indicators
(indicators_normal_1day: ffr, pa, pos, deal_amount, value, count per session) and port_analysis_1day
(risk_analysis of the excess return without and with cost, indicator_analysis of the indicators). The same again
in small_account/ for an account of 1e5, whose buys round to no lot or are clipped to the cash left.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # qpipe's provider writer needs only numpy and pandas

from qpipe.data.qlib_provider import write_qlib_provider  # noqa: E402

OUT = HERE / "qlib_backtest"
FIELDS = ("open", "high", "low", "close", "vwap", "volume", "factor", "change")
PORT_ANALYSIS = {"topk": 50, "n_drop": 5, "account": 1e8, "benchmark": "SH000300", "limit_threshold": 0.095,
                 "deal_price": "close", "open_cost": 0.0005, "close_cost": 0.0015, "min_cost": 5, "trade_unit": 100}
CASES = {OUT: PORT_ANALYSIS, OUT / "small_account": {**PORT_ANALYSIS, "account": 1e5}}


def make_market() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prices, predictions): adjusted prices as Qlib stores them; change as Qlib's collector makes it (reference/
    qlib.md §1): the unadjusted close / the last one before it - 1, across suspensions."""
    rng = np.random.default_rng(20210104)
    dates = pd.bdate_range("2021-01-04", periods=60)
    names = [f"SH6{i:05d}" for i in range(70)]
    rows = []
    for k, name in enumerate([*names, "SH000300"]):
        factor = np.full(60, 1.0 if name == "SH000300" else rng.uniform(0.5, 3.0))
        factor[30:] *= 1.0 if k % 7 else 1.1  # a dividend adjustment half-way for some
        raw = rng.uniform(3, 60) * np.exp(np.cumsum(rng.normal(0, 0.02, 60)))
        if name != "SH000300":
            for day in rng.choice(np.arange(5, 60), size=2, replace=False):  # limit moves, up or down
                raw[day:] *= 1.1 if rng.random() < 0.5 else 0.9
        close = raw * factor
        high, low = close * np.exp(np.abs(rng.normal(0, 0.01, 60))), close * np.exp(-np.abs(rng.normal(0, 0.01, 60)))
        frame = pd.DataFrame({"date": dates, "instrument": name, "open": close, "high": high, "low": low,
                              "close": close, "vwap": close, "volume": rng.lognormal(12, 0.5, 60), "factor": factor})
        if name != "SH000300" and k % 9 == 0:  # suspensions: every field empty
            gap = rng.integers(3, 50)
            frame.loc[gap:gap + rng.integers(1, 4), ["open", "high", "low", "close", "vwap", "volume", "factor"]] = np.nan
        traded = frame["close"] / frame["factor"]  # Qlib's collector: the unadjusted close, forward-filled
        frame["change"] = traded / traded.ffill().shift(1) - 1
        rows.append(frame)
    prices = pd.concat(rows, ignore_index=True)
    scores = pd.DataFrame({"date": np.repeat(dates, len(names)), "instrument": np.tile(names, len(dates)),
                           "score": rng.normal(size=len(dates) * len(names))})
    scores = scores.sample(frac=0.97, random_state=1).sort_values(["date", "instrument"], ignore_index=True)  # gaps
    return prices, scores


def main() -> None:
    import qlib

    prices, scores = make_market()
    OUT.mkdir(exist_ok=True)
    # the bins hold float32: store what Qlib reads, so both sides trade the same numbers
    prices[list(FIELDS)] = prices[list(FIELDS)].astype(np.float32).astype(np.float64)
    prices.to_parquet(OUT / "prices.parquet", index=False)
    scores.to_parquet(OUT / "scores.parquet", index=False)
    with tempfile.TemporaryDirectory() as tmp:
        write_qlib_provider(prices, tmp, fields=FIELDS)
        qlib.init(provider_uri=tmp, region="cn", kernels=1, expression_cache=None, dataset_cache=None)
        for out, config in CASES.items():
            trade(sorted(prices["date"].unique()), scores, out, dict(config))


def trade(dates: list, scores: pd.DataFrame, out: Path, config: dict) -> None:
    import qlib.config
    from qlib.backtest import backtest, executor
    from qlib.contrib.evaluate import indicator_analysis, risk_analysis
    from qlib.contrib.strategy import TopkDropoutStrategy

    out.mkdir(exist_ok=True)
    signal = scores.rename(columns={"date": "datetime"}).set_index(["datetime", "instrument"])[["score"]]
    strategy = TopkDropoutStrategy(signal=signal, topk=config["topk"], n_drop=config["n_drop"])
    metrics, indicators = backtest(
        start_time=dates[1], end_time=dates[-2], strategy=strategy,  # Qlib reads the session after the end
        executor=executor.SimulatorExecutor(time_per_step="day", generate_portfolio_metrics=True),
        account=config["account"], benchmark=config["benchmark"],
        exchange_kwargs={"freq": "day", "limit_threshold": config["limit_threshold"],
                         "deal_price": config["deal_price"], "open_cost": config["open_cost"],
                         "close_cost": config["close_cost"], "min_cost": config["min_cost"]})
    report, positions = metrics["1day"]
    assert qlib.config.C.trade_unit == config["trade_unit"]
    report.index.name = "date"
    report.reset_index().to_parquet(out / "report_normal_1day.parquet", index=False)
    held = [(date, name, float(info["amount"]), float(info["price"]))
            for date, position in positions.items() for name, info in position.position.items()
            if isinstance(info, dict)]
    pd.DataFrame(held, columns=["date", "instrument", "amount", "price"]).to_parquet(out / "positions.parquet",
                                                                                   index=False)
    daily = indicators["1day"][0].astype(float)
    daily.index.name = "date"
    daily.reset_index().to_parquet(out / "indicators_normal_1day.parquet", index=False)
    excess = report["return"] - report["bench"]
    analysis = {"excess_return_without_cost": risk_analysis(excess)["risk"].to_dict(),
                "excess_return_with_cost": risk_analysis(excess - report["cost"])["risk"].to_dict(),
                "indicator_analysis": indicator_analysis(daily)["value"].to_dict()}
    (out / "port_analysis_1day.json").write_text(json.dumps({"config": config, "analysis": analysis}, indent=2))
    print(report.head(8).to_string())
    print(json.dumps(analysis, indent=2))


if __name__ == "__main__":
    sys.exit(main())
