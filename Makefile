# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TUNER := $(VENV)/bin/tuner
STAMP := $(VENV)/.installed
DEMO_DATA := data/demo
# Each demo run is its own search (nothing earlier is overwritten); the model name stays "demo",
# so the @champion alias moves to the newest promoted version.
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test install ui clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(TUNER) data demo --out $(DEMO_DATA)
	$(TUNER) search search_spaces/demo.yaml --name $(DEMO_NAME)
	echo $(DEMO_NAME) > runs/.last-demo
	$(TUNER) leaderboard $(DEMO_NAME) --top 10
	$(TUNER) promote $(DEMO_NAME) --model-name demo
	$(TUNER) predict models:/demo@champion --images $(DEMO_DATA)/test --out submission.csv --quiet
	$(TUNER) score submission.csv --key $(DEMO_DATA)/test_labels.csv
	@echo ""
	@echo "MLflow data: $(CURDIR)/mlflow.db (runs), $(CURDIR)/mlruns (artifacts), $(CURDIR)/runs (checkpoints)"
	@echo "Open the leaderboard:  make ui   (= tuner ui $(DEMO_NAME), on http://127.0.0.1:5000)"
	@echo "The search's report:   $(CURDIR)/runs/$(DEMO_NAME)/report/index.html"
	@echo "The last mile:         $(TUNER) promote $(DEMO_NAME) --ensemble 3 --tta flips --model-name demo-ensemble"
	@echo "                       $(TUNER) evaluate models:/demo-ensemble@champion --images $(DEMO_DATA)/test --key $(DEMO_DATA)/test_labels.csv --tta none,flips"

# The MLflow UI on 127.0.0.1, opened on the last demo search's leaderboard.
ui: $(STAMP)
	$(TUNER) ui $$(cat runs/.last-demo 2>/dev/null)

# Three pytest-xdist workers on two cores: many tests wait on Ray, servers and subprocesses. Work
# units are whole test files (tests/conftest.py), the slow ones first.
test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist loadscope

clean-demo:
	rm -rf runs mlruns mlflow.db submission.csv $(DEMO_DATA)
