"""Qlib's expression language on qpipe's operators: each Alpha158 expression, parsed as Qlib writes it, gives that
column to the last bit (on the edge-case fixture and on real prices), and what Qlib's engine would not take, or a
feature must not read, is refused by name."""

import numpy as np
import pytest
import torch

from qpipe.features import ops
from qpipe.features.alpha158 import ALPHA158_EXPRESSIONS, ALPHA158_NAMES, alpha158_columns
from qpipe.features.expressions import ExpressionError, parse
from qpipe.features.panel import panel_from_frame
from qpipe.features.store import LOOKBACK
from qpipe_tests.test_alpha_features import _fixture_frame

DEVICES = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def _assert_expressions_give_alpha158(panel, ops=ops) -> None:
    for name, column in alpha158_columns(panel, ops):
        value = ops.float32(parse(ALPHA158_EXPRESSIONS[name]).evaluate(panel, ops))
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, column, err_msg=f"{name} = {ALPHA158_EXPRESSIONS[name]}")


def test_every_alpha158_expression_gives_its_column_bit_for_bit_on_the_edge_cases():
    assert list(ALPHA158_EXPRESSIONS) == ALPHA158_NAMES
    _assert_expressions_give_alpha158(panel_from_frame(_fixture_frame()))


def test_every_alpha158_expression_gives_its_column_bit_for_bit_on_real_prices(sp500):
    days = np.sort(sp500["date"].unique())[-300:]
    real = sp500[sp500["date"].isin(days) & sp500["symbol"].isin(sp500["symbol"].unique()[:60])]
    vwap = (real["high"] + real["low"] + real["close"]) / 3  # (the source has none)
    _assert_expressions_give_alpha158(panel_from_frame(real.rename(columns={"symbol": "instrument"}).assign(vwap=vwap)))


@pytest.mark.parametrize("device", DEVICES)
def test_the_expressions_run_on_the_gpus_operator_table_too(device):
    """``TorchOps`` on every visible GPU (deploy/device/gpu-check.sh runs this file there), and on the CPU: the same
    columns as its own Alpha158."""
    from qpipe.features.ops_torch import TorchOps

    _assert_expressions_give_alpha158(panel_from_frame(_fixture_frame()), TorchOps(device))


def test_the_lookback_is_qlibs_extended_window_and_within_the_stores():
    assert parse("$close").lookback == 0 and parse("Ref($close, 5)/$close").lookback == 5
    assert parse("Mean($close, 20)").lookback == 19 and parse("Mean(Ref($close, 1), 20)").lookback == 20
    assert parse("Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), 60)").lookback == 60
    assert max(parse(e).lookback for e in ALPHA158_EXPRESSIONS.values()) <= LOOKBACK


def test_comparisons_delta_and_constants_follow_numpy_as_qlibs_engine():
    panel = panel_from_frame(_fixture_frame())
    close, volume, first = panel["close"], panel["volume"], panel.first
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(parse("$close >= $open").evaluate(panel, ops), close >= panel["open"])
        np.testing.assert_array_equal(parse("Delta($volume, 3)").evaluate(panel, ops), volume - ops.ref(volume, 3, first))
        np.testing.assert_array_equal(parse("-$close * 2").evaluate(panel, ops), -close * 2)
    # a number on either side of a comparison, or as one of Greater's two, alike on the CPU and torch (found in
    # review: torch refused 1 < $close); numbers alone divide as IEEE does (found in review: 1/0 raised)
    from qpipe.features.ops_torch import TorchOps

    torch_ops = TorchOps("cpu")
    for text, expected in (("1 < $close", close > 1), ("Greater(1, $close)", np.maximum(close, 1)),
                           ("$close * (1/0)", close * np.inf), ("$close + 0/0", close + np.nan)):
        for operators in (ops, torch_ops):
            with np.errstate(invalid="ignore"):
                got = operators.float32(parse(text).evaluate(panel, operators))
            np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=text)


@pytest.mark.parametrize("text", ["($close>$open) - 0.5", "($close>$open) - ($close<$open)", "-($close>$open)",
                                  "Abs($close>$open)", "Ref($close>$open, 1)", "Greater($close>$open, 0)",
                                  "Mean(($close>$open)*($close>Ref($close,1)), 5)", "Std($close>=$open, 5)"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_comparisons_mask_is_read_as_0_or_1_alike_on_the_cpu_and_the_gpus_table(text, device):
    """Found in review: arithmetic on a mask worked on the CPU and failed on torch (bool - 0.5), or differed (Ref of a
    mask shifted NaN into a bool: True); the mask is 0/1 float64 where an operator reads it, as pandas' rolling."""
    from qpipe.features.ops_torch import TorchOps

    panel = panel_from_frame(_fixture_frame())
    torch_ops = TorchOps(device)
    cpu, gpu = (o.float32(parse(text).evaluate(panel, o)) for o in (ops, torch_ops))
    np.testing.assert_array_equal(cpu, gpu)
    if text.startswith("Ref"):
        assert np.isnan(cpu[0]).all() and set(np.unique(cpu[1:][~np.isnan(cpu[1:])])) <= {0.0, 1.0}


@pytest.mark.parametrize("text, message", [
    ("Ref($close, -2)/Ref($close, -1) - 1", r"Ref\(-2\) reads a later session: a label's expression"),
    ("Mean($close, 0)", "Mean's window of 0 .* is not supported"),
    ("Mean($close, 2.5)", "Mean's window must be a whole number of sessions, not '2.5'"),
    ("EMA($close, 5)", "EMA is not an operator qpipe evaluates; operators: Ref, Mean"),
    ("Mean($close)", r"Mean takes 2 arguments \(an expression, a window\), not 1"),
    ("$factor * $close", r"\$factor is not a field of the prices; fields: \$open, \$high"),
    ("($close - $open", "not an expression"),
    ("close / $open", "'close' is neither a field"),
    ("$close ** 2", r"'\$close \*\* 2' is not an expression qpipe evaluates"),
    ("$close + * 2", r"not an expression \(invalid syntax at column 10\)"),  # the text's column (found in review)
    ("_close / $open", "'_close' is neither a field"),
    ("1/0", "reads no field"),  # found in review: a ZeroDivisionError at run time
    ("Mean(3, 5)", "Mean's expression argument must read a field"),  # found in review: an AttributeError at run time
    ("Corr($close, 2, 5)", "Corr's expression arguments must read a field"),
    ("Greater(1, 2)", "Greater.s expression arguments must read a field"),
    ("Quantile($close, 5, 1.5)", r"Quantile's quantile must be a number in \[0, 1\], not '1.5'"),  # found in review
    ("$low < $close < $high", "a comparison is one of"),
    ("Quantile($close, 5, 'q')", "Quantile's quantile must be a number"),
])
def test_what_qpipe_does_not_evaluate_is_refused_naming_the_expression_and_why(text, message):
    with pytest.raises(ExpressionError, match=message) as refused:
        parse(text)
    assert str(refused.value).startswith(repr(text))
