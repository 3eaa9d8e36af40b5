"""Tear sheets: one self-contained HTML page per model and one for the leaderboard (charts embedded as data
URIs, styles inline: it opens offline, from a mail attachment as well as from the reports folder).

A model's page: headline figures; the TopK-dropout backtest (chart, Qlib's risk_analysis of the excess return
in both modes, and the benchmark's; its indicator_analysis); the signal (SigAnaRecord's figures, then
alphalens-style views: mean return by score quantile, each quantile's cumulative return with the top-minus-bottom
spread, IC decay over horizons, IC by month); the last holdings; the strategy's settings.
"""

import base64
import html
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from qpipe.data import warehouse as wh
from qpipe.evaluation import backtest_store, report
from qpipe.evaluation.risk import FIGURES, indicator_analysis, risk_analysis
from qpipe.evaluation.signal import SignalViews, signal_views

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 2rem auto;
       max-width: 1000px; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 2px solid #dde3ee; padding-bottom: .2rem; }
.sub { color: #5b6475; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1.2rem 0; }
.card { background: #f3f6fb; border-radius: 8px; padding: .6rem 1rem; min-width: 120px; }
.card b { display: block; font-size: 1.35rem; } .card span { color: #5b6475; font-size: .85rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #e4e8f0; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: #f3f6fb; }
img { max-width: 100%; display: block; margin: .6rem 0; }
.note { color: #5b6475; font-size: .85rem; }
"""
SUMMARY_MODES = {"sum": "sum (Qlib's default)", "product": "product"}


def _page(title: str, body: list[str]) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _image(png: Path, alt: str) -> str:
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(frame: pd.DataFrame, digits: int = 4, index: bool = True) -> str:
    return frame.to_html(index=index, border=0, na_rep="–", float_format=lambda v: f"{v:.{digits}f}")


def _cards(figures: dict[str, float]) -> str:
    cards = "".join(f'<div class="card"><b>{value:+.4f}</b><span>{html.escape(name)}</span></div>'
                    for name, value in figures.items() if np.isfinite(value))
    return f'<div class="cards">{cards}</div>'


def risk_table(daily: pd.DataFrame) -> pd.DataFrame:
    """Qlib's port_analysis (risk_analysis of the excess return without and with cost) in both modes, and the
    benchmark's own return: figure x column."""
    columns = {f"{name}, {mode}": risk_analysis(values, mode=mode)
               for mode in SUMMARY_MODES for name, values in backtest_store.return_series(daily).items()}
    return pd.DataFrame(columns).reindex(list(FIGURES))


def model_page(model: str, as_of: date, daily: pd.DataFrame, views: SignalViews, holdings: pd.DataFrame,
               strategy: dict, backtest_png: Path, signal_png: Path, ic_png: Path | None = None,
               indicators: pd.DataFrame | None = None) -> str:
    """The HTML of a model's tear sheet from its stored backtest days (and their trade indicators), signal views and
    last holdings."""
    risk = risk_table(daily) if len(daily) > 1 else None
    headline = {}
    if risk is not None:
        with_cost = risk["excess return with cost, sum"]
        headline |= {"annualized excess return (with cost)": with_cost["annualized_return"],
                     "information ratio (with cost)": with_cost["information_ratio"],
                     "max drawdown (with cost)": with_cost["max_drawdown"]}
    headline |= {k: views.summary[k] for k in ("Rank IC", "Rank ICIR") if k in views.summary}
    signal = pd.DataFrame([views.summary]) if views.summary else pd.DataFrame()
    body = [f"<h1>{html.escape(model.upper())} tear sheet</h1>",
            f'<p class="sub">as of {as_of} · {len(daily)} sessions backtested · {views.days} sessions with a known '
            "next-session return · qpipe</p>", _cards(headline),
            "<h2>Portfolio: TopK-dropout backtest</h2>",
            '<p class="note">The score of session T trades at T+1 (Qlib\'s PortAnaRecord). Curves are summed, as Qlib '
            "plots them.</p>", _image(backtest_png, f"{model} backtest")]
    if risk is not None:
        body += ["<h3>Risk analysis</h3>",
                 '<p class="note">Qlib\'s risk_analysis, N = 238 sessions a year; "sum" accumulates returns by addition '
                 '(Qlib\'s benchmark table), "product" compounds.</p>', _table(risk)]
        activity = pd.DataFrame({"mean": [daily["turnover"].mean(), daily["cost"].mean(), daily["holdings"].mean()]},
                                index=["turnover per session", "cost per session", "holdings"])
        body.append(_table(activity))
    if indicators is not None and indicators["count"].sum() > 0:
        analysis = pd.DataFrame({"value": indicator_analysis(indicators)})
        body += ["<h3>Indicator analysis</h3>",
                 '<p class="note">Qlib\'s indicator_analysis of the trade indicators, each session weighted by its '
                 f"{int(indicators['count'].sum()):,} orders placed (Qlib's count: those rounded to no lot too, which "
                 "deal nothing and are no trades): ffr, the share of an order's amount dealt (below 1 where "
                 "a buy was clipped to the cash left); pa, the price advantage over the base price, and pos, the share "
                 "of orders with one, are 0 on a daily exchange, which deals at the base price.</p>", _table(analysis)]
    body += ["<h2>Signal</h2>",
             '<p class="note">Daily IC and Rank IC against the next session\'s return, as Qlib\'s SigAnaRecord; the '
             "views below go beyond it (alphalens-style). A score of T is bought at T+1's close and held h sessions.</p>",
             _table(signal, index=False) if not signal.empty else "<p>No session has a known return yet.</p>",
             _image(signal_png, f"{model} signal"),
             *(["<h3>Cumulative IC and Rank IC (reports/" + html.escape(model) + "_ic)</h3>",
                _image(ic_png, f"{model} cumulative IC")] if ic_png is not None else []),
             "<h3>Mean return per session held, by score quantile (1 = lowest scores)</h3>",
             _table(views.quantile_returns * 1e4, digits=2).replace("<table", '<table title="basis points"', 1),
             '<p class="note">In basis points per session.</p>',
             "<h3>IC decay</h3>", _table(views.ic_decay),
             "<h3>IC by month</h3>", _table(views.monthly_ic)]
    if len(holdings):
        top = holdings.sort_values("value", ascending=False).head(10)[["instrument", "amount", "price", "value", "held_days"]]
        body += [f"<h2>Largest holdings at the close of {daily['date'].iloc[-1]:%Y-%m-%d}</h2>",
                 _table(top, digits=2, index=False)]
    settings = pd.DataFrame({"value": [str(v) for v in strategy.values()]}, index=list(strategy))
    body += ["<h2>Strategy</h2>", _table(settings)]
    return _page(f"qpipe · {model} tear sheet", body)


def write_model_tearsheet(con: duckdb.DuckDBPyConnection, model: str, as_of: date, strategy: dict,
                          backtest_png: Path, folder: Path) -> Path:
    """Read ``model``'s scores, closes and backtest up to ``as_of`` from the warehouse; write its tear sheet."""
    scores = con.execute(f"SELECT date, instrument, score FROM {wh.PREDICTIONS} WHERE model = ? AND date <= ?",
                         [model, as_of]).df()
    first = scores["date"].min() if len(scores) else as_of
    closes = con.execute(f"SELECT date, instrument, close FROM {wh.PRICES} WHERE date BETWEEN ? AND ?",
                         [first, as_of]).df().pivot(index="date", columns="instrument", values="close")
    views = signal_views(scores, closes)
    daily = backtest_store.read_daily(con, model)
    daily = daily[daily["date"] <= pd.Timestamp(as_of)]
    indicators = backtest_store.read_daily(con, model, backtest_store.INDICATORS_TABLE)
    indicators = indicators[indicators["date"] <= pd.Timestamp(as_of)]
    holdings = con.execute(f"SELECT * FROM {backtest_store.POSITIONS} WHERE model = ? AND date = ?",
                           [model, daily["date"].iloc[-1]]).df() if len(daily) else pd.DataFrame()
    signal_png = report.signal_chart(views, model, folder / f"{model}_signal.png")
    path = folder / f"{model}_tearsheet.html"
    ic_png = folder / f"{model}_ic.png"  # the IC report's chart, when it has run
    path.write_text(model_page(model, as_of, daily, views, holdings, strategy, backtest_png, signal_png,
                               ic_png if ic_png.exists() else None, indicators))
    return path


def leaderboard_page(board: pd.DataFrame, ic_png: Path, returns_png: Path | None, links: dict[str, str]) -> str:
    """The HTML of the leaderboard's tear sheet: Qlib's table with each model linked to its own page."""
    shown = board.copy()
    shown["model"] = [f'<a href="{html.escape(links[m])}">{html.escape(m)}</a>' if m in links else html.escape(m)
                      for m in shown["model"]]
    table = shown.to_html(index=False, border=0, na_rep="–", escape=False, float_format=lambda v: f"{v:.4f}")
    body = ["<h1>qpipe leaderboard</h1>",
            f'<p class="sub">{len(board)} model{"s" if len(board) != 1 else ""} · Qlib\'s benchmark table: IC figures '
            "as SigAnaRecord, the backtest's annualized excess return, information ratio and max drawdown with cost "
            "as PortAnaRecord</p>", table,
            "<h2>Cumulative Rank IC</h2>", _image(ic_png, "cumulative Rank IC")]
    if returns_png is not None:
        body += ["<h2>Cumulative excess return with cost</h2>", _image(returns_png, "cumulative excess return")]
    return _page("qpipe · leaderboard", body)


def write_leaderboard_tearsheet(board: pd.DataFrame, backtests: pd.DataFrame, ic_png: Path, folder: Path) -> Path:
    """The leaderboard's page beside the models' pages in ``folder``, linking those that exist."""
    returns_png = report.excess_returns_chart(backtests, folder / "leaderboard_returns.png") if len(backtests) else None
    links = {m: f"{m}_tearsheet.html" for m in board["model"] if (folder / f"{m}_tearsheet.html").exists()}
    path = folder / "leaderboard.html"
    path.write_text(leaderboard_page(board, ic_png, returns_png, links))
    return path
