# MessageHub: set up, run, test and benchmark on a Debian or Ubuntu host.
#
#   make run    set up, apply migrations, create the first admin, serve on 127.0.0.1:5000
#   make test   set up and run the whole test suite

# Debian's interpreter, not a pyenv one: campaign units and an unprivileged
# web user must be able to execute the virtualenv's python.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 5000
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the app and its tests need; installed when missing.
# systemd-container boots the throw-away systemd the integration tests use.
APT_PACKAGES := python3-venv python3-dev systemd-container

.PHONY: run test setup system-packages migrate admin clean

# gthread workers, so a page streaming a campaign's progress does not hold a whole worker.
run: setup migrate admin
	@echo "MessageHub at http://$(HOST):$(PORT)/"
	$(BIN)/gunicorn --chdir $(CURDIR) --bind $(HOST):$(PORT) --workers 2 \
		--worker-class gthread --threads 8 --access-logfile - wsgi:app

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: system-packages $(STAMP)

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

migrate: setup
	$(BIN)/messagehub db upgrade --directory migrations

admin: setup
	$(BIN)/messagehub user ensure-admin

clean:
	rm -rf $(VENV) build *.egg-info
