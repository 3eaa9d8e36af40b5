"""Qlib 0.9.7's own Alpha158 and Alpha360 on the market ``python -m qpipe.bench features --qlib-python PY`` dumped.

The side-by-side half of the feature benchmark. It needs pyqlib, which is not a qpipe dependency, so it runs
in a scratch venv and imports nothing from qpipe:

    /tmp/qlibvenv/bin/python qpipe/bench/qlib_features.py PROVIDER

It times ``D.features`` over every instrument of the provider with the expressions of Qlib's own Alpha158DL
and Alpha360DL (what the Alpha158/Alpha360 handlers load before their processors), on all cores
(Qlib's default ``kernels``) and without caches, and prints one JSON line: seconds, rows and peak RSS.
"""

import json
import resource
import sys
import time

import qlib
from qlib.contrib.data.loader import Alpha158DL, Alpha360DL
from qlib.data import D


def main(provider: str) -> None:
    qlib.init(provider_uri=provider, region="cn", expression_cache=None, dataset_cache=None)
    calendar = D.calendar(freq="day")
    instruments = D.instruments("all")
    result = {}
    for name, loader in (("alpha158", Alpha158DL), ("alpha360", Alpha360DL)):
        fields, _ = loader.get_feature_config()
        began = time.perf_counter()
        frame = D.features(instruments, fields, start_time=calendar[0], end_time=calendar[-1], freq="day")
        result[name] = time.perf_counter() - began
        result[f"{name}_rows"] = len(frame)
        del frame
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
