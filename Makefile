# The two entry points; everything they need is installed or built by the scripts they call.
.PHONY: demo test crds dashboard env-build env-up env-down env-status

demo: ## bring up the local environment and run the story
	bash scripts/demo

test: ## run every test tier (lint, unit, end to end on the real components)
	bash scripts/test

env-build:
	bash scripts/env build
env-up:
	bash scripts/env up
env-down:
	bash scripts/env down
env-status:
	bash scripts/env status

dashboard: ## rewrite the chart's Grafana dashboard from scripts/dashboard.py
	python3 scripts/dashboard.py

crds: ## regenerate the committed CRDs (crds/ and the chart's copy) from the Rust types
	bash -c 'source scripts/common.sh && cargo run --quiet -- crds --dir crds --dir charts/rollguard/files/crds'
