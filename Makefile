# Two entry points: `make demo` (ElasticAST against a fixed-length AST on the built-in demo data) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SEED   := 0
CLIPS  := 640
DEMO   := data/demo
RUNS   := runs/demo
MODELS := elasticast ast
LENGTHS := 16 32 64 128 256 512

.PHONY: demo test test-fast lint clean

$(STAMP): pyproject.toml
	@echo "installing into $(VENV) (pip's output: $(VENV)/install.log) ..."
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@$(PY) -m pip install -e '.[test]' >> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

$(DEMO)/dataset.json: $(STAMP) shards/demo.py
	@$(PY) jobs/make_shards.py --out $(DEMO) --demo-clips $(CLIPS) --seed $(SEED) --backend local --overwrite --quiet

# One run per model, each with its settings in examples/demo/<model>.yaml. Recipes are not echoed
# (`@`): each command prints its own start line, and the whole demo fits on one screen.
$(RUNS)/%/metrics.json: $(DEMO)/dataset.json examples/demo/%.yaml
	@rm -rf $(RUNS)/$*
	@$(PY) jobs/train.py --config examples/demo/$*.yaml --shards $(DEMO) --out $(RUNS)/$* --seed $(SEED)

$(RUNS)/eval/results.md: $(MODELS:%=$(RUNS)/%/metrics.json)
	@$(PY) jobs/evaluate.py --checkpoint $(MODELS:%=$(RUNS)/%) --shards $(DEMO)/test --out $(RUNS)/eval \
		--sweeps length --lengths $(LENGTHS) > $(RUNS)/evaluate.log  # its progress bar stays on the terminal

demo: $(RUNS)/eval/results.md
	@cat $<
	@echo "plot: $(RUNS)/eval/length.png (accuracy vs maximum length; stars: native / trained length)"
	@echo "runs: $(MODELS:%=$(RUNS)/%) (metrics.json, best.pt); how to read this: docs/demo.md"

# Two pytest workers; the tests of one Ray instance share a worker (tests/conftest.py groups them).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow and not ray and not fsdd"

clean:
	rm -rf $(VENV) $(DEMO) $(RUNS)
