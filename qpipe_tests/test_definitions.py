"""The code location loads, and its graph is what users are told it is."""

import dagster as dg

from qpipe.definitions import defs


def test_definitions_load_with_the_documented_assets_jobs_and_schedule():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw/prices", "raw/universe", "raw/concepts",
            "features/alpha158", "features/alpha360", "features/label"} <= keys
    assert defs.resolve_job_def("daily_pipeline") is not None
    assert defs.get_schedule_def("after_close").default_status == dg.DefaultScheduleStatus.RUNNING


def test_code_location_loads_without_torch_or_matplotlib():
    """Every step process loads the code location; only training, scoring and charts need torch or matplotlib."""
    import subprocess
    import sys

    probe = "import sys, qpipe.definitions; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    assert "BetaWarning" not in loaded.stderr
