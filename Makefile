# The two commands of the README. Both create or reuse .venv first.
PYTHON := .venv/bin/python
DEMO_HOME ?= demo_home

.PHONY: venv demo test bench clean notebook

venv:
	@bash scripts/bootstrap.sh

demo: venv
	$(PYTHON) -m pipelines.cli demo --home $(DEMO_HOME)

test: venv
	$(PYTHON) -m pytest tests

bench: venv
	$(PYTHON) benchmarks/ingest.py

clean:
	rm -rf $(DEMO_HOME) .pytest_cache

# Re-executes the notebook in place, refreshing its committed outputs (a few minutes).
notebook: venv
	cd notebooks && ../.venv/bin/jupyter-execute --inplace --timeout=1800 continuous_vs_batch.ipynb
