# The two commands of the README. Both create or reuse .venv first.
PYTHON := .venv/bin/python
DEMO_HOME ?= demo_home

.PHONY: venv demo demo-replay test bench clean notebook mariadb test-mariadb

venv:
	@bash scripts/bootstrap.sh

# The main job, the closed loop in real time: users -> driftline serve -> impressions + clicks -> join ->
# train -> gate -> push -> hot swap -> the same users.
demo: venv
	$(PYTHON) -m pipelines.cli demo --closed-loop --home $(DEMO_HOME)

# The replayed stream without a server (a poisoned span the gate refuses; fast, no wall-clock waits).
demo-replay: venv
	$(PYTHON) -m pipelines.cli demo --home $(DEMO_HOME)_replay

test: venv
	$(PYTHON) -m pytest tests

# The ML Metadata-heavy tests again with ML Metadata on MariaDB (tests/conftest.py, --metadata mysql).
MARIADB_TESTS := tests/test_metadata_backend.py tests/test_retention.py tests/test_recovery.py \
	tests/test_lineage.py tests/test_continuous_e2e.py tests/test_rollback_pin.py \
	tests/test_idempotent_publish.py tests/test_lease.py tests/test_racing_controllers.py \
	tests/test_controller_crash.py tests/test_controller_restart.py

# A local MariaDB for ML Metadata (scripts/mariadb.sh): installed with apt if missing, its own data
# folder under build/, reused while it runs. Prints the connection: eval "$$(make -s mariadb)".
mariadb:
	@bash scripts/mariadb.sh

test-mariadb: venv
	connection=$$(bash scripts/mariadb.sh) && eval "$$connection" && \
		DRIFTLINE_TEST_METADATA=mysql $(PYTHON) -m pytest $(MARIADB_TESTS)

bench: venv
	$(PYTHON) benchmarks/ingest.py

clean:
	rm -rf $(DEMO_HOME) $(DEMO_HOME)_replay .pytest_cache

# Re-executes the notebook in place, refreshing its committed outputs (a few minutes).
notebook: venv
	cd notebooks && ../.venv/bin/jupyter-execute --inplace --timeout=1800 continuous_vs_batch.ipynb
