"""Qlib's expression language on qpipe's operator table (reference/qlib.md §2): ``Mean($close, 5)/$close``.

An expression is parsed as Qlib parses it: ``$field`` is a price field, ``Name(...)`` an operator of the table below,
``+ - * /`` and ``> < >= <= == !=`` Python's operators, numbers constants. It is evaluated on a Panel by the same
operators and with the same dtype flow as Alpha158's hand-written formulas (element-wise steps stay float32, rolling
results are float64, one float32 cast at the end; a comparison's mask is read as 0/1 by what reads it), on the CPU
kernels or a GPU's ``TorchOps``: the expression of each Alpha158 column gives that column to the last bit. A feature
reads only the past: an expression that reads a later session (``Ref($close, -1)``, a label's) is refused, and so is
one that reads no field, or an operator of numbers alone.
"""

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qpipe.features.panel import PRICE_FIELDS, Panel

FIELD = re.compile(r"\$([A-Za-z_]\w*)")
FIELD_PREFIX = "_"  # $close is parsed as the name _close: as long as $, so that a syntax error's column is the text's
UNDERSCORED = re.compile(r"(?<![\w$])_\w*")  # a name of the text that would pass for a field
FIELD_NAME = re.compile(r"(?<![\w$])_(?=\w)")  # a parsed field's prefix, written back as $

# Qlib's operator -> (qpipe's operator, its arguments in order: x an expression, n a window of sessions, q a number)
OPERATORS: dict[str, tuple[str, str]] = {
    "Ref": ("ref", "xn"), "Mean": ("mean", "xn"), "Sum": ("sum", "xn"), "Std": ("std", "xn"),
    "Max": ("max", "xn"), "Min": ("min", "xn"), "Rank": ("rank", "xn"), "IdxMax": ("idxmax", "xn"),
    "IdxMin": ("idxmin", "xn"), "Slope": ("slope", "xn"), "Resi": ("resi", "xn"), "Rsquare": ("rsquare", "xn"),
    "Quantile": ("quantile", "xnq"), "Corr": ("corr", "xxn"), "Delta": ("delta", "xn"),
    "Greater": ("greater", "xx"), "Less": ("less", "xx"), "Abs": ("abs", "x"), "Log": ("log", "x"), "Sign": ("sign", "x"),
}  # fmt: skip
COMPARISONS = {ast.Gt: "gt", ast.Lt: "lt", ast.GtE: "ge", ast.LtE: "le", ast.Eq: "eq", ast.NotEq: "ne"}
MIRRORED = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge", "eq": "eq", "ne": "ne"}  # 1 < $close is $close > 1
EITHER_CONSTANT = ("Greater", "Less")  # one of their two expressions may be a number (Greater($close - $open, 0))
ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


class ExpressionError(ValueError):
    pass


@dataclass(frozen=True)
class Expression:
    text: str
    tree: ast.expr
    lookback: int  # the sessions before a day its value reads (Qlib's get_extended_window_size, left side)

    def evaluate(self, panel: Panel, ops: Any) -> Any:
        """The expression's value on ``panel`` ([T, J]), before the final float32 cast (``ops.float32``)."""
        fields: dict[str, Any] = {}

        def value(node: ast.expr) -> Any:
            if isinstance(node, ast.Constant):
                return float(node.value)
            if isinstance(node, ast.Name):
                name = node.id.removeprefix(FIELD_PREFIX)
                if name not in fields:
                    fields[name] = ops.asarray(panel[name])
                return fields[name]
            if isinstance(node, ast.UnaryOp):
                return -_numeric(value(node.operand))
            if isinstance(node, ast.BinOp):
                left, right = _numeric(value(node.left)), _numeric(value(node.right))
                if isinstance(left, float) and isinstance(right, float):  # numbers alone: IEEE (1/0 = inf)
                    return float(ARITHMETIC[type(node.op)](np.float64(left), np.float64(right)))
                return ARITHMETIC[type(node.op)](left, right)
            if isinstance(node, ast.Compare):
                left, right = _numeric(value(node.left)), _numeric(value(node.comparators[0]))
                compare = COMPARISONS[type(node.ops[0])]
                if isinstance(left, float):  # the operator tables take an array first
                    left, right, compare = right, left, MIRRORED[compare]
                return getattr(ops, compare)(left, right)
            name, kinds = OPERATORS[node.func.id]
            args = [_numeric(value(arg)) if kind == "x" else _number(arg) for arg, kind in zip(node.args, kinds)]
            if name in ("greater", "less") and isinstance(args[0], float):  # (symmetric: the array first)
                args.reverse()
            if name == "delta":  # Qlib's Delta: x - Ref(x, N)
                return args[0] - ops.ref(args[0], args[1], first)
            return getattr(ops, name)(*args, first) if "n" in kinds else getattr(ops, name)(*args)

        first = ops.asarray(panel.first)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # IEEE, silently, as Qlib's engine
            return value(self.tree)


def _numeric(value: Any) -> Any:
    """A comparison's mask as 0/1 float64 where an operator reads it, as pandas' rolling reads a bool series (numpy's
    and torch's own arithmetic on bools refuses, stays bool, or shifts NaN into a bool)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or str(dtype) not in ("bool", "torch.bool"):
        return value
    return value.astype(np.float64) if isinstance(value, np.ndarray) else value.double()


def parse(text: str) -> Expression:
    """``text`` as an Expression, or an ExpressionError naming what is wrong and where."""
    stray = UNDERSCORED.search(text)
    if stray:
        raise ExpressionError(f"{text!r}: {stray.group()!r} is neither a field ($close) nor an operator call")
    source = FIELD.sub(lambda m: FIELD_PREFIX + m.group(1), text.strip())
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"{text!r}: not an expression ({error.msg} at column {error.offset})") from None
    lookback = _lookback(tree, text)
    if not _reads_a_field(tree):
        raise ExpressionError(f"{text!r}: reads no field: a feature is computed from the prices ($close, ...)")
    return Expression(text, tree, lookback)


def _reads_a_field(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Name) and child.id.startswith(FIELD_PREFIX) for child in ast.walk(node))


def _lookback(node: ast.expr, text: str) -> int:
    """The sessions before a day that ``node`` reads; refuses what Qlib's engine would not take or qpipe has not."""
    def refuse(why: str) -> ExpressionError:
        return ExpressionError(f"{text!r}: {why}")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise refuse(f"{node.value!r} is not a number")
        return 0
    if isinstance(node, ast.Name):
        if not node.id.startswith(FIELD_PREFIX):
            raise refuse(f"{node.id!r} is neither a field ($close) nor an operator call")
        field = node.id.removeprefix(FIELD_PREFIX)
        if field not in PRICE_FIELDS:
            raise refuse(f"${field} is not a field of the prices; fields: {', '.join('$' + f for f in PRICE_FIELDS)}")
        return 0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _lookback(node.operand, text)
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        return max(_lookback(node.left, text), _lookback(node.right, text))
    if isinstance(node, ast.Compare):
        if len(node.ops) > 1 or type(node.ops[0]) not in COMPARISONS:
            raise refuse("a comparison is one of > < >= <= == != between two expressions")
        return max(_lookback(node.left, text), _lookback(node.comparators[0], text))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return _call_lookback(node, text, refuse)
    written = FIELD_NAME.sub("$", ast.unparse(node))
    raise refuse(f"{written!r} is not an expression qpipe evaluates: "
                 f"$fields, numbers, + - * /, comparisons and the operators {', '.join(OPERATORS)}")


def _call_lookback(node: ast.Call, text: str, refuse: Callable[[str], ExpressionError]) -> int:
    name = node.func.id
    if name not in OPERATORS:
        raise refuse(f"{name} is not an operator qpipe evaluates; operators: {', '.join(OPERATORS)}")
    kinds = OPERATORS[name][1]
    if len(node.args) != len(kinds):
        raise refuse(f"{name} takes {len(kinds)} arguments ({', '.join(_ARGUMENT[k] for k in kinds)}), "
                     f"not {len(node.args)}")
    reads, window = 0, 0
    expressions = [arg for arg, kind in zip(node.args, kinds) if kind == "x"]
    reading = [_reads_a_field(arg) for arg in expressions]
    if not (any(reading) if name in EITHER_CONSTANT else all(reading)):
        raise refuse(f"{name}'s expression argument{'s' if len(expressions) > 1 else ''} must read a field "
                     f"($close, ...), not only numbers")
    for arg, kind in zip(node.args, kinds):
        if kind == "x":
            reads = max(reads, _lookback(arg, text))
            continue
        literal = _number(arg)
        if kind == "q" and (isinstance(literal, bool) or not isinstance(literal, int | float) or not 0 <= literal <= 1):
            raise refuse(f"{name}'s quantile must be a number in [0, 1], not {ast.unparse(arg)!r}")
        if kind == "n":
            if isinstance(literal, bool) or not isinstance(literal, int):
                raise refuse(f"{name}'s window must be a whole number of sessions, not {ast.unparse(arg)!r}")
            if literal < 0:
                raise refuse(f"{name}({literal}) reads a later session: a label's expression, not a feature's")
            if literal == 0:
                raise refuse(f"{name}'s window of 0 (Qlib's expanding window) is not supported")
            window = literal if name in ("Ref", "Delta") else literal - 1  # Qlib: Ref(N) adds N rows, Rolling(N) N-1
    return reads + window


def _number(node: ast.expr) -> Any:
    """The number a constant argument is (``-2`` is a minus applied to 2 in Python's tree), else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        return -value if isinstance(value, int | float) and not isinstance(value, bool) else None
    return node.value if isinstance(node, ast.Constant) else None


_ARGUMENT = {"x": "an expression", "n": "a window", "q": "a quantile"}
