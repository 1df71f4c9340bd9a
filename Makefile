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
# systemd-container boots the throw-away systemd the integration tests use;
# libsystemd-dev and pkg-config build pystemd and systemd-python; dbus and
# polkitd run inside that container. chromium is the browser that the
# Playwright tests in tests/browser launch, so no `playwright install` is needed.
APT_PACKAGES := python3-venv python3-dev systemd-container libsystemd-dev pkg-config dbus polkitd chromium

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

# Sending rates against Postfix's smtp-source/smtp-sink, engine memory and import
# speed, printed and written to bench/results/latest.md (bench/README.md).
# BENCH_FULL=1 adds the longest runs (bench/README.md); BENCH_ARGS passes options to bench/run.py.
# Only the two Postfix test tools are used: a Postfix daemon that the install
# started is stopped again.
.PHONY: bench

bench: setup
	@if ! test -x /usr/sbin/smtp-sink; then \
		echo "installing Debian package postfix for smtp-sink and smtp-source"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
			--no-install-recommends -o DPkg::Lock::Timeout=300 postfix || exit 1; \
		if $$SUDO postfix status >/dev/null 2>&1; then \
			echo "stopping the Postfix daemon that the install started"; $$SUDO postfix stop; \
		fi; \
	fi
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# ---------------------------------------------------------------------------
# System-wide install under systemd (as root):
#
#   make install                  app in $(PREFIX), state in $(STATE_DIR), units, polkit rule, user
#   make uninstall [PURGE=1]      remove it all; PURGE=1 also deletes $(STATE_DIR) and the user
#
# Offline: make install PIP_OPTIONS="--no-index --find-links=/path/to/wheels"
# (the wheels must include setuptools, which builds the project).

PREFIX ?= /opt/messagehub
STATE_DIR ?= /var/lib/messagehub
PIP_OPTIONS ?=
PURGE ?= 0

UNIT_DIR := /etc/systemd/system
POLKIT_RULE := /etc/polkit-1/rules.d/50-messagehub.rules
SYSUSERS_CONF := /usr/lib/sysusers.d/messagehub.conf
TMPFILES_CONF := /usr/lib/tmpfiles.d/messagehub.conf
UNITS := messagehub-web.service messagehub-campaign@.service
APP_FILES := messagehub migrations wsgi.py setup.cfg pyproject.toml README.md docs/sysadmin.md
INSTALL_APT_PACKAGES := python3-venv dbus polkitd
# The unit and config files name the default paths; a custom PREFIX or STATE_DIR is substituted in.
SUBSTITUTE_PATHS := sed -e 's|/opt/messagehub|$(PREFIX)|g' -e 's|/var/lib/messagehub|$(STATE_DIR)|g'
# sd_booted(3): systemd is running as PID 1 when this folder exists.
SYSTEMD_RUNNING := test -d /run/systemd/system

.PHONY: install uninstall install-root-check

install-root-check:
	@test "$$(id -u)" -eq 0 || { echo "make install and make uninstall must run as root" >&2; exit 1; }

install: install-root-check
	$(MAKE) system-packages APT_PACKAGES="$(INSTALL_APT_PACKAGES)"
	@echo "copying the app to $(PREFIX)"
	install -d -m 0755 $(PREFIX)
	rm -rf $(PREFIX)/messagehub $(PREFIX)/migrations $(PREFIX)/docs $(PREFIX)/build $(PREFIX)/*.egg-info
	tar -C $(CURDIR) --exclude=__pycache__ --exclude='*.pyc' -cf - $(APP_FILES) | tar -C $(PREFIX) --no-same-owner -xf -
	test -x $(PREFIX)/venv/bin/python || /usr/bin/python3 -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/python -m pip install -q $(PIP_OPTIONS) --upgrade $(PREFIX)
	@echo "installing the system user, state folder, units and polkit rule"
	install -d -m 0755 $(dir $(SYSUSERS_CONF)) $(dir $(TMPFILES_CONF)) $(UNIT_DIR) $(dir $(POLKIT_RULE))
	$(SUBSTITUTE_PATHS) systemd/messagehub.sysusers.conf > $(SYSUSERS_CONF)
	$(SUBSTITUTE_PATHS) systemd/messagehub.tmpfiles.conf > $(TMPFILES_CONF)
	systemd-sysusers $(SYSUSERS_CONF)
	systemd-tmpfiles --create $(TMPFILES_CONF)
	for unit in $(UNITS); do $(SUBSTITUTE_PATHS) systemd/$$unit > $(UNIT_DIR)/$$unit; chmod 0644 $(UNIT_DIR)/$$unit; done
	install -m 0644 systemd/messagehub.polkit.rules $(POLKIT_RULE)
	@# The web app reads the key as messagehub; campaign units get it through LoadCredential=, read by root.
	$(PREFIX)/venv/bin/python -c 'import pathlib, messagehub.config as c; c.ensure_secret_key(pathlib.Path("$(STATE_DIR)"))'
	chown messagehub:messagehub $(STATE_DIR)/secret_key
	chmod 0600 $(STATE_DIR)/secret_key
	@if $(SYSTEMD_RUNNING); then \
		systemctl daemon-reload && systemctl try-restart messagehub-web.service && \
		echo "installed; start the web app with: systemctl enable --now messagehub-web.service"; \
	else \
		echo "installed; systemd is not running here, so units were not reloaded"; \
	fi

uninstall: install-root-check
	@if $(SYSTEMD_RUNNING); then \
		echo "stopping campaign units and the web app"; \
		systemctl stop 'messagehub-campaign@*.service' messagehub-web.service; \
		systemctl disable messagehub-web.service 2>/dev/null || true; \
	else \
		echo "systemd is not running here, so no unit was stopped"; \
	fi
	rm -f $(addprefix $(UNIT_DIR)/,$(UNITS)) $(POLKIT_RULE) $(SYSUSERS_CONF) $(TMPFILES_CONF)
	rm -rf $(PREFIX)
	@if [ "$(PURGE)" = 1 ]; then \
		echo "deleting $(STATE_DIR) and the messagehub user"; \
		rm -rf $(STATE_DIR); \
		if id messagehub >/dev/null 2>&1; then userdel messagehub; fi; \
	else \
		echo "kept $(STATE_DIR) (database and secret key); make uninstall PURGE=1 deletes it"; \
	fi
	@if $(SYSTEMD_RUNNING); then systemctl daemon-reload; fi
