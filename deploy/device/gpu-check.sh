#!/usr/bin/env bash
# The GPU check of issue 17, as one command for the device machine (run from the repo root, .whl carried):
#   bash deploy/device/gpu-check.sh [python -m qpipe.bench gpu's options]
# It installs the wheels deploy/device/wheels.sh fetched beside the image's torch, prints the machine, runs the
# check, then the test files with CUDA cases (on every visible GPU; the checkpoint steps train on it too). The logs
# go to $OUT (the device tool brings that folder back) or the current folder.
set -uo pipefail
out="${OUT:-.}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch, numpy, pandas, duckdb, dagster; print('python', __import__('sys').version.split()[0], \
'torch', torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__, 'duckdb', duckdb.__version__, \
'dagster', dagster.__version__, 'GPUs', torch.cuda.device_count())"
  time python3 -m qpipe.bench gpu "$@"; } 2>&1 | tee "$out/gpu-check.log"
check=$?
python3 -m pytest -p no:cacheprovider -q -n 4 qpipe_tests/test_ops_torch.py qpipe_tests/test_expressions.py \
  qpipe_tests/test_devices.py qpipe_tests/test_distributed.py qpipe_tests/test_model_assets.py \
  --deselect qpipe_tests/test_expressions.py::test_every_alpha158_expression_gives_its_column_bit_for_bit_on_real_prices \
  2>&1 | tee "$out/gpu-tests.log"  # (../shared does not travel: the test that reads its prices stays here)
exit $(( check || $? ))
