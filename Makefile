# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DATAPLATFORM_HOME ?= $(CURDIR)/.dataplatform
export DAGSTER_HOME ?= $(DATAPLATFORM_HOME)/dagster

.PHONY: install demo test ui lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Its declared opencv-python (GUI, libGL) would clash with the headless cv2 we install.
	$(BIN)/python -m pip install -q --no-deps rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dataplatform demo

# pytest exits 5 when it collects no test; make treats that as the failure it is.
test: $(STAMP)
	$(BIN)/python -m pytest

ui: $(STAMP)
	mkdir -p "$(DAGSTER_HOME)"
	$(BIN)/dagster dev -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check dataplatform tests bench
	$(BIN)/ruff format --check dataplatform tests bench

format: $(STAMP)
	$(BIN)/ruff format dataplatform tests bench
	$(BIN)/ruff check --fix dataplatform tests bench

bench: $(STAMP)
	$(BIN)/python bench/phash.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
