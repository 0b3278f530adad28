# Two entry points: `make demo` (main job end to end on the embedded default) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := shards/demo
RUN    := runs/demo

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DEMO)/dataset.json: $(STAMP)
	$(PY) jobs/make_shards.py --out $(DEMO) --overwrite

$(RUN)/metrics.json: $(DEMO)/dataset.json
	rm -rf $(RUN)
	$(PY) jobs/train.py --shards $(DEMO) --out $(RUN)

$(RUN)/eval/results.csv: $(RUN)/metrics.json
	$(PY) jobs/evaluate.py --checkpoint $(RUN) --shards $(DEMO)/test --lengths 256 512 1024 2048 --scales 1 2 3 4

demo: $(RUN)/eval/results.csv
	@echo "demo run in $(RUN) (metrics.json, best.pt); evaluation in $(RUN)/eval (results.md, length.png, scale.png)"

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not ray and not fsdd"

clean:
	rm -rf $(VENV) $(DEMO) $(RUN)
