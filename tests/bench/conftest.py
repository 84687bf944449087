# tests/bench holds a benchmark script, not tests: keep pytest out of it.
collect_ignore_glob = ["*.py"]
