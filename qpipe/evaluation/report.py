"""IC reports: daily IC / Rank IC of stored predictions against the raw label, summaries, a chart."""

from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from qpipe.data import warehouse as wh  # noqa: E402
from qpipe.evaluation.backtest_store import excess, return_series  # noqa: E402
from qpipe.evaluation.ic import daily_ic, ic_summary  # noqa: E402
from qpipe.features.label import LABEL_NAME  # noqa: E402
from qpipe.features.store import LABEL_TABLE  # noqa: E402

DAILY_IC = "reports.daily_ic"
DAILY_IC_DDL = 'model VARCHAR NOT NULL, date DATE NOT NULL, known_on DATE NOT NULL, "IC" DOUBLE, "Rank IC" DOUBLE, n INTEGER'


def write_daily_ic(con: duckdb.DuckDBPyConnection, model: str, start, end) -> pd.DataFrame:
    """Daily IC of ``model`` for the days whose labels became known on [start, end]; replaces them."""
    rows = con.execute(f"""
        SELECT p.date, l.known_on, p.score, l.{LABEL_NAME} AS label FROM {wh.PREDICTIONS} p
        JOIN {LABEL_TABLE} l ON l.date = p.date AND l.instrument = p.instrument
        WHERE p.model = ? AND l.known_on BETWEEN ? AND ? ORDER BY p.date""",
        [model, pd.Timestamp(start).date(), pd.Timestamp(end).date()]).df()
    daily = daily_ic(rows["score"].to_numpy(), rows["label"].to_numpy(), rows["date"].to_numpy())
    daily = daily.reset_index().rename(columns={"datetime": "date"})
    daily["known_on"] = rows.groupby("date")["known_on"].first().to_numpy()
    daily["n"] = rows.groupby("date")["score"].size().to_numpy()
    daily.insert(0, "model", model)
    wh.ensure_table(con, DAILY_IC, DAILY_IC_DDL)
    with wh.transaction(con):
        con.execute(f"DELETE FROM {DAILY_IC} WHERE model = ? AND known_on BETWEEN ? AND ?",
                    [model, pd.Timestamp(start).date(), pd.Timestamp(end).date()])
        wh.insert(con, DAILY_IC, daily[["model", "date", "known_on", "IC", "Rank IC", "n"]])
    return daily


def read_daily_ic(con: duckdb.DuckDBPyConnection, model: str | None = None, known_by=None) -> pd.DataFrame:
    """Stored daily ICs (all models when ``model`` is None) known by ``known_by``, ordered by date."""
    where, args = ["TRUE"], []
    if model is not None:
        where.append("model = ?")
        args.append(model)
    if known_by is not None:
        where.append("known_on <= ?")
        args.append(pd.Timestamp(known_by).date())
    return con.execute(f'SELECT model, date, known_on, "IC", "Rank IC", n FROM {DAILY_IC} WHERE {" AND ".join(where)} '
                       "ORDER BY model, date", args).df()


def format_summary(s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in s.items())


def leaderboard(daily: pd.DataFrame) -> pd.DataFrame:
    """One row per model: IC, ICIR, Rank IC, Rank ICIR, days (with an IC: a day of equal scores has none); best Rank
    IC first."""
    rows = [{"model": model, **ic_summary(group), "days": int(group["IC"].notna().sum())}
            for model, group in daily.groupby("model")]
    return pd.DataFrame(rows).sort_values("Rank IC", ascending=False, ignore_index=True)


def cumulative_ic_chart(daily: pd.DataFrame, title: str, path: Path, measures: tuple[str, ...] = ("Rank IC", "IC")) -> Path:
    """Cumulative daily IC and/or Rank IC per model: a steadily rising line is a model that works."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for model, group in daily.groupby("model"):
        dates = pd.to_datetime(group["date"])
        for measure in measures:
            ax.plot(dates, group[measure].fillna(0).cumsum(), linestyle="-" if measure == "Rank IC" else "--",
                    label=f"{model} {measure}")
    ax.axhline(0, color="grey", linewidth=0.8)
    named = " and ".join(measures)  # (found by a user: the leaderboard's Rank IC chart said "daily IC")
    ax.set_title(f"{title}: cumulative daily {named}")
    ax.set_ylabel(f"sum of daily {named}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves_chart(history: list[dict], best_epoch: int, title: str, path: Path,
                          placebo_loss: float | None = None) -> Path:
    """Train and valid loss (beside the placebo's, which scores every stock 0: the checkpoint's check compares them),
    valid IC and learning rate per epoch; the kept epoch is marked. Found in review: half-epoch ticks, the legend over
    the first point, the lr line without a legend, no placebo."""
    from matplotlib.ticker import MaxNLocator

    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, ic_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker=".", label="train loss")
    loss_ax.plot(epochs, [h["valid_loss"] for h in history], marker=".", label="valid loss")
    if placebo_loss is not None and np.isfinite(placebo_loss):
        loss_ax.axhline(placebo_loss, color="grey", linewidth=0.8, linestyle="-.", label="placebo's valid loss")
    ic_ax.plot(epochs, [h["valid_ic"] for h in history], marker=".", color="tab:green", label="valid IC")
    ic_ax.axhline(0, color="grey", linewidth=0.8)
    lr_ax = ic_ax.twinx()
    lr_ax.plot(epochs, [h["lr"] for h in history], color="tab:grey", linestyle=":", label="learning rate")
    lr_ax.set_ylabel("learning rate", fontsize=8)
    for ax in (loss_ax, ic_ax):
        ax.axvline(best_epoch, color="tab:red", linewidth=0.8, linestyle="--", label="kept epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend(fontsize=8, loc="best")
    lines = ic_ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ic_ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="best")
    fig.suptitle(f"{title}: kept epoch {best_epoch} of {len(history)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def backtest_chart(daily: pd.DataFrame, title: str, path: Path) -> Path:
    """Cumulative (summed, as Qlib plots it) excess return without and with cost and the benchmark's return,
    the drawdown of the excess return with cost, and the daily turnover."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dates = pd.to_datetime(daily["date"])
    fig, (curve_ax, drawdown_ax, turnover_ax) = plt.subplots(3, 1, figsize=(9, 7), sharex=True,
                                                             gridspec_kw={"height_ratios": [3, 1.3, 1.3]})
    for name, returns in return_series(daily).items():
        style = {"color": "grey", "linestyle": "--"} if name == "benchmark return" else {}
        curve_ax.plot(dates, returns.cumsum(), label=name, **style)
    net = excess(daily).cumsum()
    curve_ax.axhline(0, color="grey", linewidth=0.8)
    curve_ax.set_ylabel("cumulative (sum)")
    curve_ax.legend(loc="upper left", fontsize=8)
    drawdown_ax.fill_between(dates, net - net.cummax(), 0, color="tab:red", alpha=0.4)
    drawdown_ax.set_ylabel("drawdown")
    turnover_ax.bar(dates, daily["turnover"], color="tab:blue", width=1.0)
    turnover_ax.set_ylabel("turnover")
    locator = mdates.AutoDateLocator()
    turnover_ax.xaxis.set_major_locator(locator)
    turnover_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    curve_ax.set_title(f"{title}: TopK-dropout backtest")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def signal_chart(views, title: str, path: Path) -> Path:
    """Alphalens-style views of a signal (qpipe.evaluation.signal.SignalViews): mean return by score quantile per
    horizon, each quantile's cumulative return and the top-minus-bottom spread (Qlib's group return plot), IC decay
    over horizons, Rank IC by month."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ((quantile_ax, spread_ax), (decay_ax, month_ax)) = plt.subplots(2, 2, figsize=(10, 6.5))
    (views.quantile_returns * 1e4).plot.bar(ax=quantile_ax, rot=0, width=0.8)
    quantile_ax.set_title("mean return per session held, by score quantile", fontsize=10)
    quantile_ax.set_ylabel("bps")
    quantile_ax.legend(title="horizon", fontsize=7, title_fontsize=7)
    groups = views.groups.fillna(0).cumsum()  # Qlib's group return: each quantile's, summed; and their spread
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(groups.columns), 2)))
    for color, quantile in zip(colors, groups.columns):
        spread_ax.plot(pd.to_datetime(groups.index), groups[quantile], color=color, linewidth=1, label=f"Q{quantile}")
    spread = views.spread.fillna(0).cumsum()
    spread_ax.plot(pd.to_datetime(spread.index), spread, color="tab:purple", linewidth=2, label="top - bottom")
    spread_ax.set_title("1-session return by score quantile, cumulative (sum)", fontsize=10)
    spread_ax.legend(fontsize=6, ncol=3)
    spread_ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    views.ic_decay.plot.bar(ax=decay_ax, rot=0, width=0.7, color=["tab:blue", "tab:orange"])
    decay_ax.set_title("IC decay: mean IC by horizon (sessions)", fontsize=10)
    decay_ax.legend(fontsize=7)
    monthly = views.monthly_ic["Rank IC"] if len(views.monthly_ic) else pd.Series(dtype=float)
    month_ax.bar(monthly.index.astype(str), monthly, color=["tab:green" if v >= 0 else "tab:red" for v in monthly])
    month_ax.set_title("Rank IC by month", fontsize=10)
    month_ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    for ax in (quantile_ax, spread_ax, decay_ax, month_ax):
        ax.axhline(0, color="grey", linewidth=0.8)
    fig.suptitle(f"{title}: signal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def excess_returns_chart(daily: pd.DataFrame, path: Path) -> Path:
    """Every model's cumulative (summed) excess return with cost, from reports.backtest_daily rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for model, group in daily.groupby("model"):
        ax.plot(pd.to_datetime(group["date"]), excess(group).cumsum(), label=model)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_title("all models: cumulative excess return with cost")
    ax.set_ylabel("cumulative (sum)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
