"""End-to-end benchmarks: apps under uvicorn, the local provider and a load generator, each in
its own process on 127.0.0.1 (see ``benchmarks/run_all.py``)."""
