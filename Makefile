# Two commands on a fresh machine with Python >= 3.11 and make:
#   make book    run every chapter (PROFILE=cpu by default) and build the HTML book into _build/html
#   make test    run the test suite
#   make check-book   open the built book in headless Chromium with the network cut (screenshots in _build/screenshots)
PYTHON ?= python3
PROFILE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install chromium test book check-book reference sweep paper bench golden clean

# torch first, pinned to the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	touch $(STAMP)

install: $(STAMP) chromium

# The browser check of the book drives Debian's chromium (playwright's own browser download is not used).
chromium:
	@[ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the browser check of the book"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no chromium; the browser check of the book will be skipped (install chromium, or set CHROMIUM)"; fi

test: install
	$(BIN)/ruff check lib tests bench book
	$(BIN)/python -m pytest

# PROFILE=paper wants a GPU; ALLOW_CPU=1 runs it anyway.
book: install
	$(BIN)/python -m rote.book --profile $(PROFILE) $(if $(ALLOW_CPU),--allow-cpu)

# The committed reference runs (data/reference/) as finished runs at once (a chapter otherwise copies each when first asked).
reference: install
	$(BIN)/python -m rote.runs.reference

# The scorecard's grid into its committed records, lib/rote/resources/scorecard/ (rote.grid.sweep on a LocalCluster;
# SWEEP="--seeds 0 1" etc. passes options; without --records the sweep writes under ROTE_HOME).
sweep: install
	$(BIN)/python -m rote.grid.sweep --profile $(PROFILE) --records lib/rote/resources/scorecard $(if $(ALLOW_CPU),--allow-cpu) $(SWEEP)

# The paper profiles on a GPU machine (rote.book.paper): both tasks trained, analysed into the scorecard's records
# (lib/rote/resources/scorecard/paper/), published as reference runs (data/reference/<task>-paper/) and the book
# built on them; then commit what it wrote. PAPER=--dry-run takes the same path on the CPU at tiny sizes (minutes).
paper: install
	$(BIN)/python -m rote.book.paper $(if $(ALLOW_CPU),--allow-cpu) $(PAPER)

check-book: install
	$(BIN)/python -m rote.book.check _build/html

bench: install
	$(BIN)/python bench/training_speed.py

# Every chapter's numbers on small models that memorize their noise (the tiny profile, twice as wide,
# trained 1,200 steps at 10% noise: about 2 minutes) against bench/golden/tiny/; GOLDEN_WRITE=1 writes them anew.
GOLDEN := --profile tiny -o noise=0.1 -o n_embd=64 -o max_steps=1200 -o eval_every=100 --threads 1
golden: install
	rm -rf _build/golden
	ROTE_HOME=$(CURDIR)/_build/golden/home $(BIN)/python bench/chapter_numbers.py $(GOLDEN) \
		$(if $(GOLDEN_WRITE),bench/golden/tiny,_build/golden/numbers --check bench/golden/tiny)

clean:
	rm -rf _build
