"""IC reports: daily IC / Rank IC of stored predictions against the raw label, summaries, a chart."""

from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from qpipe.data import warehouse as wh  # noqa: E402
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
    return con.execute(f'SELECT model, date, "IC", "Rank IC", n FROM {DAILY_IC} WHERE {" AND ".join(where)} '
                       "ORDER BY model, date", args).df()


def format_summary(s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in s.items())


def leaderboard(daily: pd.DataFrame) -> pd.DataFrame:
    """One row per model: IC, ICIR, Rank IC, Rank ICIR, days; best Rank IC first."""
    rows = [{"model": model, **ic_summary(group), "days": len(group)} for model, group in daily.groupby("model")]
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
    ax.set_title(f"{title}: cumulative daily IC")
    ax.set_ylabel("sum of daily IC")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves_chart(history: list[dict], best_epoch: int, title: str, path: Path) -> Path:
    """Train and valid loss, valid IC and learning rate per epoch; the kept epoch is marked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, ic_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker=".", label="train loss")
    loss_ax.plot(epochs, [h["valid_loss"] for h in history], marker=".", label="valid loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend(fontsize=8)
    ic_ax.plot(epochs, [h["valid_ic"] for h in history], marker=".", color="tab:green", label="valid IC")
    ic_ax.axhline(0, color="grey", linewidth=0.8)
    ic_ax.set_xlabel("epoch")
    lr_ax = ic_ax.twinx()
    lr_ax.plot(epochs, [h["lr"] for h in history], color="tab:grey", linestyle=":", label="lr")
    lr_ax.set_ylabel("lr", fontsize=8)
    for ax in (loss_ax, ic_ax):
        ax.axvline(best_epoch, color="tab:red", linewidth=0.8, linestyle="--")
    ic_ax.legend(loc="upper left", fontsize=8)
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
    gross = (daily["return"] - daily["bench"]).cumsum()
    net = (daily["return"] - daily["bench"] - daily["cost"]).cumsum()
    fig, (curve_ax, drawdown_ax, turnover_ax) = plt.subplots(3, 1, figsize=(9, 7), sharex=True,
                                                             gridspec_kw={"height_ratios": [3, 1.3, 1.3]})
    curve_ax.plot(dates, gross, label="excess return without cost")
    curve_ax.plot(dates, net, label="excess return with cost")
    curve_ax.plot(dates, daily["bench"].cumsum(), color="grey", linestyle="--", label="benchmark return")
    curve_ax.axhline(0, color="grey", linewidth=0.8)
    curve_ax.set_ylabel("cumulative (sum)")
    curve_ax.legend(loc="upper left", fontsize=8)
    drawdown_ax.fill_between(dates, net - net.cummax(), 0, color="tab:red", alpha=0.4)
    drawdown_ax.set_ylabel("drawdown")
    turnover_ax.bar(dates, daily["turnover"], color="tab:blue", width=1.0)
    turnover_ax.set_ylabel("turnover")
    curve_ax.set_title(f"{title}: TopK-dropout backtest")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
