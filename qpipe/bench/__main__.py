import runpy
import sys

BENCHES = ("features", "scaling", "gpu", "ingest", "increment", "training", "quickstart", "costs", "events", "backtest")

if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
    sys.exit(f"usage: python -m qpipe.bench {{{'|'.join(BENCHES)}}} [options]  (each has --help)")
name = sys.argv.pop(1)
sys.argv[0] = f"qpipe.bench.{name}"
runpy.run_module(f"qpipe.bench.{name}", run_name="__main__")
