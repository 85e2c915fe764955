# Bastion: `make demo` and `make test` set up everything they need on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATA ?= $(CURDIR)/demo-data
LISTEN ?= 127.0.0.1:8022
# sslyze pins an older cryptography than the project's, so it lives in a venv of its own.
SSLYZE_VENV := .venv-sslyze
SSLYZE_VERSION := 6.3.1

.PHONY: demo test test-system bench bench-full system venv clean assets sslyze

system:
	@missing=""; \
	[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || missing="$$missing openssh-server"; \
	command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 || missing="$$missing openssh-client"; \
	$(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

demo: system venv assets
	$(BIN)/bastion demo --data-dir $(DATA) --listen $(LISTEN)

# The test suite also builds a software FIDO2 key provider for ssh (gcc + OpenSSL headers)
# and drives Debian's Chromium through Playwright (we never download browser builds).
test-system: system
	@missing=""; command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	[ -f /usr/include/openssl/evp.h ] || missing="$$missing libssl-dev"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -d /usr/share/fonts/truetype/dejavu ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Front-end bundles from npm (web/package-lock.json) copied into web/static/vendor/.
assets:
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian packages: nodejs npm"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; \
	}
	@sh web/build.sh

$(SSLYZE_VENV)/.installed-$(SSLYZE_VERSION):
	[ -x $(SSLYZE_VENV)/bin/python ] || $(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/pip install -q --disable-pip-version-check 'sslyze==$(SSLYZE_VERSION)'
	rm -f $(SSLYZE_VENV)/.installed-*; touch $@

sslyze: system $(SSLYZE_VENV)/.installed-$(SSLYZE_VERSION)

test: test-system venv assets sslyze
	$(BIN)/pytest -q -ra

bench: system venv
	$(BIN)/python -m bench.run --quick

bench-full: system venv
	$(BIN)/python -m bench.run --full

clean:
	rm -rf $(VENV) demo-data .pytest_cache
