"""Benchmarks that print figures and ratios: ``python -m qpipe.bench <features|ingest|training>``."""

import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def synthetic_market(n_instruments: int, n_days: int, start: str = "2015-01-02"):
    """The benchmarks' embedded market: ``n_instruments`` over ``n_days`` NYSE trading days from ``start``.

    ``start`` becomes the market's origin (its first session), so the result is the same whatever today is.
    """
    import pandas as pd

    from qpipe.calendar import trading_days
    from qpipe.data.synthetic import SyntheticSpec, generate_market, index_size_for

    spec = SyntheticSpec(n_instruments=n_instruments, origin=start, index_size=index_size_for(n_instruments))
    end = trading_days(start, pd.Timestamp(start) + pd.Timedelta(days=2 * n_days + 14))[n_days - 1]
    return generate_market(spec, end=end)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@contextmanager
def anonymous_peak(every: float = 0.05) -> Iterator[Callable[[], float]]:
    """The peak, in GB, of this process's anonymous memory (RssAnon) sampled every ``every`` seconds in the block.

    Memory-mapped frames count in RSS while their pages are cached, but the kernel can write them out and drop
    them; anonymous memory it cannot (there is no swap here). This is the part a memory limit must hold.
    """
    peak, stop = [0.0], threading.Event()

    def sample() -> None:
        while True:
            with open("/proc/self/status") as status:
                kib = next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
            peak[0] = max(peak[0], kib / 1024**2)
            if stop.wait(every):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        sampler.join()


@contextmanager
def timed(label: str, results: dict[str, float]) -> Iterator[None]:
    began = time.perf_counter()
    yield
    results[label] = time.perf_counter() - began
    print(f"  {label:<32} {results[label]:8.2f} s   (peak RSS {peak_rss_gb():.2f} GB)", flush=True)
