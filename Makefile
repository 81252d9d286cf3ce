# Every target installs what it needs first; torch comes from constraints.txt (torch==2.13.0).
PIP_INSTALL = pip install -c constraints.txt

.PHONY: install train test lint bench

install:
	$(PIP_INSTALL) -e ".[survey,xgboost]"

train: install
	python train.py

test:
	$(PIP_INSTALL) -e ".[test]" && python -m pytest

lint:
	ruff check .

bench: install
	python benchmarks/run_all.py
