# istio-iptables developer entry points.  Run as root for demo/test-netns/bench/image/e2e.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
PIP ?= $(PYTHON) -m pip

.PHONY: install dev test test-unit lint demo bench bench-instructions image e2e clean

install:            ## install the tool (console scripts istio-iptables, istio-clean-iptables)
	$(PIP) install .

dev:                ## install with test and lint extras, editable
	$(PIP) install -e '.[test,lint]'

test:               ## all tests; netns tests run as root (REQUIRE_NETNS=1 turns their skips into failures)
	$(PYTHON) -m pytest -q

test-unit:          ## tests that need no root
	$(PYTHON) -m pytest -q -m 'not netns'

lint:               ## ruff and mypy --strict over the package, tests, bench and scripts
	$(PYTHON) -m ruff check istio_iptables tests bench scripts
	$(PYTHON) -m mypy istio_iptables tests bench scripts

demo:               ## scratch pod namespace, standard profile, show the rules and where a connection lands
	$(PYTHON) scripts/demo.py

bench:              ## startup cost against the floor and the shell baseline (root)
	$(PYTHON) -m compileall -q istio_iptables
	$(PYTHON) bench/bench.py

bench-instructions: ## standard and TPROXY against the floor in instructions (valgrind): repeatable on a noisy VM
	$(PYTHON) -m compileall -q istio_iptables
	$(PYTHON) bench/instructions.py

image:              ## build the init-container image (podman), from a local Debian base
	bash images/build.sh

e2e:                ## run the Pod manifest with podman kube play and prove where traffic lands
	bash images/e2e.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
