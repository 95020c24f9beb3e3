# ultralytics-prune: `make demo` runs the embedded demo, `make test` the test suite (both install first).
PY ?= python

.PHONY: install test demo clean

install:
	$(PY) -m pip install -q -e ".[test]"

# two workers, one test file each at a time (a file's fixtures are built once); `make test WORKERS=0` runs in one process
WORKERS ?= 2
test: install
	$(PY) -m pytest tests -q -p no:cacheprovider -n $(WORKERS) --dist loadfile

demo: install
	$(PY) tools/demo.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
