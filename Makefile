# Two entry points: `make demo` (main job end to end on the embedded default) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := shards/demo

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DEMO)/dataset.json: $(STAMP)
	$(PY) jobs/make_shards.py --out $(DEMO) --overwrite

demo: $(DEMO)/dataset.json
	@echo "demo shards ready in $(DEMO) (see $(DEMO)/dataset.json)"

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(DEMO)
