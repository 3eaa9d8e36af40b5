#!/usr/bin/env bash
# Fetch, on this machine, the wheels the GPU check needs beyond what the device machine's image holds. Its python3
# is CPython 3.12 with torch, numpy, numba, pyarrow, safetensors, pyyaml, tqdm, toolz, python-dateutil, six, click,
# jinja2, rich, requests, tabulate, filelock, fsspec, psutil, matplotlib, pytest, pytest-xdist and a pandas of unknown
# version, and it reaches no index. Carried, at the versions CI runs:
#   - what `python -m qpipe.bench gpu` imports besides (pandas 2.3.3, as qpipe needs pandas<3), and dagster-pipes
#     for its data-parallel run under torchrun;
#   - Dagster and what it needs beyond the image (grpcio and protobuf too: the image's versions are unknown), for
#     the tests gpu-check.sh runs on the GPU after the check.
# They land in .whl/ at the repo root (ignored by git; about 56 MB of the 64 MiB a device call carries);
# deploy/device/gpu-check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  duckdb==2.0.1 pandas==2.3.3 pytz tzdata pydantic==2.14.4 pydantic_core==2.50.5 annotated_types \
  typing-inspection==0.4.5 typing_extensions==4.16.0 exchange-calendars==4.13.2 pyluach==2.3.0 \
  korean_lunar_calendar==0.4.0 dagster-pipes==1.13.27 dagster-duckdb==0.29.27 \
  dagster==1.13.27 dagster-shared==1.13.27 alembic==1.20.1 antlr4-python3-runtime==4.13.2 coloredlogs==14.0 \
  humanfriendly==10.0 docstring-parser==0.18.0 grpcio==1.85.3 grpcio-health-checking==1.81.1 protobuf==6.33.6 \
  python-dotenv==1.2.4 sqlalchemy==2.1.9 greenlet==3.5.6 structlog==26.1.0 toposort==1.10 \
  universal-pathlib==0.3.11 pathlib-abc==0.5.2 watchdog==6.0.0 tomlkit==0.15.3 mako==1.4.3 platformdirs==4.14.9
du -sh .whl
