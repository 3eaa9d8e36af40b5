#!/usr/bin/env bash
# Fetch, on this machine, the wheels the GPU check needs beyond what the device machine's image holds. Its python3
# is CPython 3.12 with torch, numpy, numba, pyarrow, safetensors, pyyaml, tqdm, toolz, python-dateutil, six and a
# pandas of unknown version, and it reaches no index. Carried: what `python -m qpipe.bench gpu` imports besides
# (pandas 2.3.3, as qpipe needs pandas<3; typing_extensions at the version pydantic 2.14 takes), and dagster-pipes
# for its data-parallel run under torchrun. They land in .whl/ at the repo root (ignored by git);
# deploy/device/gpu-check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  duckdb==2.0.1 pandas==2.3.3 pytz tzdata pydantic==2.14.4 pydantic_core==2.50.5 annotated_types \
  typing-inspection==0.4.5 typing_extensions==4.16.0 exchange-calendars==4.13.2 pyluach==2.3.0 \
  korean_lunar_calendar==0.4.0 dagster-pipes==1.13.27
du -sh .whl
