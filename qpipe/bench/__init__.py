"""Benchmarks that print figures and ratios: ``python -m qpipe.bench <features|ingest|training>``."""

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@contextmanager
def timed(label: str, results: dict[str, float]) -> Iterator[None]:
    began = time.perf_counter()
    yield
    results[label] = time.perf_counter() - began
    print(f"  {label:<32} {results[label]:8.2f} s   (peak RSS {peak_rss_gb():.2f} GB)", flush=True)
