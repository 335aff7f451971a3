# Quick start: `make demo` and `make test` (each sets up .venv first, idempotently).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
NN_STAMP := $(VENV)/.installed-nn
MUT_STAMP := $(VENV)/.installed-mutation

.PHONY: install install-nn demo test test-fast lint docs bench mutants clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[xtb,openmm,test,docs,cluster]"
	touch $(STAMP)

# Neural potentials for the force-source integration tests and examples, and the chemistry
# extras (RDKit, QM9) for molecule generation.
# SchNetPack 2.2.0 declares Python>=3.12 but works on 3.11: its dependencies first, then itself.
install-nn: $(NN_STAMP)

$(NN_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[nn,chem]"
	$(PIP) install -q --no-deps --ignore-requires-python schnetpack==2.2.0
	touch $(NN_STAMP)

demo: install
	$(VENV)/bin/ase-drift demo

test: install install-nn
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check ase_drift tests benchmarks examples

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d site

# Every benchmark in its quick form, from scratch (results in bench_out/, tables into docs/).
bench: install
	rm -rf bench_out
	$(PY) -m benchmarks.speed
	$(PY) -m benchmarks.speed_vs --quick
	$(PY) -m benchmarks.labelling
	$(PY) -m benchmarks.ethanol --quick --results bench_out/ethanol-quick.json
	$(PY) -m benchmarks.alanine --quick --results bench_out/alanine-quick.json

# Mutation testing (not part of CI): mutmut mutates the modules listed in pyproject.toml
# ([tool.mutmut]), runs for each mutant the selected fast tests that call the mutated function
# (one worker, one thread), then benchmarks/mutants.py prints the score per module and the
# survivors. `make mutants MUTANTS='ase_drift.units*'` runs a subset; `mutmut show NAME` shows
# one mutant. Starts from a fresh copy of the tree in mutants/ every time.
MUTANTS ?=
$(MUT_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[mutation]"
	touch $(MUT_STAMP)

mutants: $(MUT_STAMP)
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 1 $(MUTANTS)
	$(PY) -m benchmarks.mutants

clean:
	rm -rf demo_out bench_out site .pytest_cache mutants
