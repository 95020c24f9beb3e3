# ultralytics-prune: `make demo` runs the embedded demo, `make test` the test suite (both install first).
PY ?= python

.PHONY: install test demo clean

install:
	$(PY) -m pip install -q -e ".[test]"

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider

demo: install
	$(PY) tools/demo.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
