# Two commands on a fresh machine with only Python and pip: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# torchrun tests and the DDP example: a CPU build that installs from a local file here.
	$(BIN)/python -m pip install --quiet torch==2.13.0 numpy || echo "torch 2.13.0 not installable: its tests will skip"
	$(BIN)/python -m pip install --quiet atheris || echo "atheris not installable: the fuzz test will skip"
	touch $(STAMP)

install: $(STAMP)

DEMO_DIR := .distwal-demo

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/distwal run --dir $(DEMO_DIR) -- $(BIN)/python examples/demo_job.py --ranks 4 --steps 5000
	$(BIN)/distwal status $(DEMO_DIR)
	$(BIN)/python examples/readback.py $(DEMO_DIR)
	$(BIN)/distwal read $(DEMO_DIR) --rank 1 | tail -n 2   # the SIGKILLed rank's last delivered records

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check distwal --select F,E,W,B --ignore E501,B905
	$(BIN)/mypy distwal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not process"

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .distwal $(DEMO_DIR) .pytest_cache .hypothesis build *.egg-info
