# The two set-up commands of the README:  `make demo`  and  `make test`.
# Each creates .venv and installs what it needs; `make test` also installs the DICOM peers
# (DCMTK, dicom3tools, Orthanc and its DICOMweb plugin) and Chromium (the web page's browser
# test) and promtool (package prometheus, 19 MB: the alert rules' tests) from Debian when they are missing.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PEERS  := dcmtk dicom3tools orthanc orthanc-dicomweb chromium prometheus
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint peers install

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is a CPU build (a local wheel on our machines); any other spec may pull CUDA
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

install: $(STAMP)

peers:
	@if ! command -v storescu >/dev/null || ! command -v dciodvfy >/dev/null || ! command -v Orthanc >/dev/null \
	    || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ! command -v chromium >/dev/null \
	    || ! command -v promtool >/dev/null; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(PEERS) >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(PEERS) >/dev/null; }; \
	fi

demo: $(STAMP)
	$(VENV)/bin/dicomnode demo

# lint first: a type or lint error fails fast, before the minutes-long suite
test: lint peers
	$(PY) -m pytest -q

# the fast tier for your own iterations: no processes, no servers
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not process and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check dicomnode worker training tests bench
	$(VENV)/bin/mypy dicomnode worker training
