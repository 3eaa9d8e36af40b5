"""Re-create ``qlib_dataset/``: what pyqlib 0.9.7's ``DatasetH.prepare`` returns for two benchmark workflows.

Never imported by tests (pyqlib is not a qpipe dependency). From the repository root, with pyqlib in a
scratch venv (see README.md):

    /tmp/qlibvenv/bin/python qpipe_tests/golden/make_dataset_golden.py

The provider directory is the one ``make_golden.py`` builds from ``fixture_prices.csv``. Each workflow
(Qlib's own YAML from ../shared/qlib_configs) gets its handler pointed at it, the market ``all`` and
segments inside the fixture; its processors are left as the YAML has them. Stored per workflow:
``<name>_learn.parquet`` (DK_L: what Qlib trains on) and ``<name>_infer.parquet`` (DK_I: what it predicts
from), both for the train segment, columns ``datetime, instrument``, the features and ``LABEL0``.
"""

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_golden import dump_bins, write_parquet  # noqa: E402

CONFIGS = HERE.parents[2] / "shared" / "qlib_configs"
WORKFLOWS = {"mlp_Alpha158": "workflow_config_mlp_Alpha158.yaml", "lstm_Alpha360": "workflow_config_lstm_Alpha360.yaml"}
SPAN = ("2020-01-02", "2020-08-06")
SEGMENTS = {"train": ("2020-03-02", "2020-05-29"), "valid": ("2020-06-01", "2020-06-30"),
            "test": ("2020-07-01", "2020-08-06")}


def flat(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.columns = out.columns.get_level_values(-1)
    return out.reset_index()


def main() -> None:
    import qlib
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.utils import init_instance_by_config

    prices = pd.read_csv(HERE / "fixture_prices.csv", parse_dates=["date"])
    folder = HERE / "qlib_dataset"
    folder.mkdir(exist_ok=True)
    meta = {"span": SPAN, "segments": SEGMENTS, "market": "all", "workflows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dump_bins(prices, Path(tmp))
        qlib.init(provider_uri=tmp, region="cn", kernels=1, expression_cache=None, dataset_cache=None)
        for name, file in WORKFLOWS.items():
            dataset = yaml.safe_load((CONFIGS / file).read_text())["task"]["dataset"]
            handler = dataset["kwargs"]["handler"]["kwargs"]
            handler.update(instruments="all", start_time=SPAN[0], end_time=SPAN[1],
                           fit_start_time=SEGMENTS["train"][0], fit_end_time=SEGMENTS["train"][1])
            dataset["kwargs"]["segments"] = {k: list(v) for k, v in SEGMENTS.items()}
            built = init_instance_by_config(dataset)
            for key, data_key in (("learn", DataHandlerLP.DK_L), ("infer", DataHandlerLP.DK_I)):
                frame = built.prepare("train", col_set=["feature", "label"], data_key=data_key)
                frame = flat(frame).rename(columns=lambda c: "LABEL0" if str(c).startswith("Ref(") else c)
                write_parquet(frame, folder / f"{name}_{key}.parquet")
            meta["workflows"][name] = {"yaml": file, "handler": {k: handler[k] for k in
                                       ("infer_processors", "learn_processors", "process_type") if k in handler}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
