"""One GPU per checkpoint step (qpipe.devices): claims are exclusive, wait when all are held, and die with their process."""

import signal
import subprocess
import sys
import time

import pytest

from qpipe.devices import claim_device, step_device


def test_claims_are_distinct_and_a_full_machine_waits_then_times_out(tmp_path):
    told = []
    with claim_device(tmp_path, 2) as first, claim_device(tmp_path, 2) as second:
        assert {first, second} == {0, 1}
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="all 2 GPUs stayed claimed"):
            with claim_device(tmp_path, 2, wait_seconds=0.5, poll=0.05, on_wait=told.append):
                pass
        assert time.monotonic() - began >= 0.5 and told == [f"all 2 GPUs are claimed by other steps; waiting for one ({tmp_path})"]
    with claim_device(tmp_path, 2) as again:  # both released
        assert again == 0


def test_a_claim_dies_with_its_process(tmp_path):
    """A step killed by SIGKILL (the OOM killer) must not keep its GPU: the kernel drops the lock."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from qpipe.devices import claim_device\n"
        f"with claim_device(Path({str(tmp_path)!r}), 1) as i:\n"
        "    print(i, flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        with pytest.raises(TimeoutError):
            with claim_device(tmp_path, 1, wait_seconds=0.2, poll=0.05):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with claim_device(tmp_path, 1, wait_seconds=5) as index:
        assert index == 0


def test_without_several_gpus_the_configured_device_is_used_as_is(tmp_path):
    for configured in ("cpu", "auto", "cuda:0"):
        with step_device(configured, tmp_path) as device:
            assert device == configured
    assert not (tmp_path / "devices").exists()
