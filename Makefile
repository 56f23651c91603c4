# `make demo` runs the nightly DAG on the synthetic shop; `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
VAR    ?= $(CURDIR)/var

export RECSYS_VAR_DIR             := $(VAR)
export AIRFLOW_HOME               := $(VAR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export TF_USE_LEGACY_KERAS        := 1
export PATH                       := $(BIN):$(PATH)

.PHONY: setup test-deps demo test test-fast lint bench bench-topk airflow mlflow app clean

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

demo: setup  ## generate data if missing, run the DAG through Airflow, print timings, metrics and a user's list
	$(BIN)/python -m pipelines.demo

test: setup test-deps  ## lint, then every test, the slow end-to-end and browser ones included
	$(BIN)/ruff check .
	$(BIN)/pytest -ra

# What the tests need from Debian: Chromium for the browser tests (never a browser Playwright downloads), the
# PostgreSQL server binaries (each test session starts its own throwaway cluster from them), redis-server
# (the Celery test's broker) and docker-compose (to validate docker/compose.yaml; no engine is needed). Installed when
# missing, as root or through sudo; where that fails those tests skip, except under CI=true, where they fail.
test-deps:
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	[ -z "$$missing" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); export DEBIAN_FRONTEND=noninteractive; \
	  echo "installing $$missing for the tests"; \
	  $$SUDO apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
	  echo "could not install $$missing: the tests that need it will skip (and fail under CI=true)"; }

test-fast: setup
	$(BIN)/pytest -ra -m "not slow"

lint: setup
	$(BIN)/ruff check .

SCALE ?= S
bench: setup  ## per-step wall time, peak RSS and throughput at SCALE=S|M|L -> var/bench/
	$(BIN)/python -m benchmarks.pipeline --scale $(SCALE) --out $(VAR)/bench

bench-topk: setup  ## exact top-K scorer against the GEMM peak, faiss, TensorFlow and numpy -> var/bench/
	$(BIN)/python -m benchmarks.topk --approximate --out $(VAR)/bench

PASSWORDS := $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated
airflow: setup  ## Airflow UI on http://127.0.0.1:8080 (this host only); the admin password is printed and kept, mode 0600, in $(PASSWORDS)
	mkdir -p $(AIRFLOW_HOME) && touch $(PASSWORDS) && chmod 600 $(PASSWORDS)
	umask 077 && AIRFLOW__API__HOST=127.0.0.1 $(BIN)/airflow standalone

mlflow: setup  ## MLflow UI on :5000 over the pipeline's tracking store, opened in its model-training view
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(VAR)/mlflow/mlflow.db \
		--default-artifact-root $(VAR)/mlflow/artifacts --host 127.0.0.1 --port 5000 --app-name recsys

app: setup  ## read-only user lookup page on http://127.0.0.1:8501: a user's list, history and model
	$(BIN)/recsys app --port 8501

clean:
	rm -rf $(VAR)
