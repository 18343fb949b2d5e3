# istio-iptables developer entry points.  Run as root for demo/test-netns/bench/image/e2e.
#
# Every target that runs something first calls scripts/bootstrap.sh, which installs what
# is missing (host packages with apt-get, as root; .venv with the package and its
# extras) and does nothing when all is there.  `make PYTHON=python3 test` uses that
# Python instead and leaves .venv alone.
PYTHON ?= .venv/bin/python
PIP ?= $(PYTHON) -m pip
BOOTSTRAP = bash scripts/bootstrap.sh $(if $(filter .venv/bin/python,$(PYTHON)),,--no-venv)
# The podman end-to-end test runs inside `make test` with RUN_E2E=1: it needs the image tools.
TEST_BOOTSTRAP = $(BOOTSTRAP) $(if $(filter 1,$(RUN_E2E)),--image)

.PHONY: bootstrap install dev test test-unit lint demo bench bench-instructions image e2e clean

bootstrap:          ## host packages and .venv, only what is missing or stale
	$(BOOTSTRAP)

install:            ## install the tool (console scripts istio-iptables, istio-clean-iptables, istio-iptables-cni)
	$(PIP) install .

dev:                ## (re)install with test and lint extras, editable
	$(PIP) install -e '.[test,lint]'

test:               ## all tests; netns tests run as root (REQUIRE_NETNS=1 turns their skips into failures)
	@$(TEST_BOOTSTRAP)
	$(PYTHON) -m pytest -q

test-unit:          ## tests that need no root
	@$(BOOTSTRAP) --venv-only
	$(PYTHON) -m pytest -q -m 'not netns'

lint:               ## ruff and mypy --strict over the package, tests, bench, scripts and images
	@$(BOOTSTRAP) --venv-only
	$(PYTHON) -m ruff check istio_iptables tests bench scripts images
	$(PYTHON) -m mypy istio_iptables tests bench scripts images

demo:               ## scratch pod namespace, standard profile, show the rules and where a connection lands
	@$(BOOTSTRAP)
	$(PYTHON) scripts/demo.py

bench:              ## startup cost against the floor and the shell baseline (root)
	@$(BOOTSTRAP)
	$(PYTHON) -m compileall -q istio_iptables
	$(PYTHON) bench/bench.py

bench-instructions: ## standard and TPROXY against the floor in instructions (valgrind): repeatable on a noisy VM
	@$(BOOTSTRAP)
	$(PYTHON) -m compileall -q istio_iptables
	$(PYTHON) bench/instructions.py

image:              ## build the init-container image (podman), from a local Debian base
	@$(BOOTSTRAP) --image
	PIP_PYTHON=$(PYTHON) bash images/build.sh

e2e:                ## run the Pod manifest with podman kube play and prove where traffic lands
	@$(BOOTSTRAP) --image
	bash images/e2e.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
