"""qpipe: Qlib's deep-learning stock-return stack as Dagster software-defined assets."""

from qpipe.compute import wait_passively

wait_passively()  # before numba or torch loads OpenMP
