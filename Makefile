# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The demo runs on SQLite + local files under ./var/demo with development settings, offline:
# open_clip weights come from the local cache or a checkpoint file, never a download.
DEMO_ENV := DJANGO_DEBUG=true SIMSEARCH_DATA_DIR=$(CURDIR)/var/demo SIMSEARCH_STORAGE=local HF_HUB_OFFLINE=1

# The browser test drives Debian's Chromium (no browser download); CJK fonts render Korean names.
CHROMIUM := /usr/bin/chromium
CJK_FONT := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Translations: locale/<lang>/LC_MESSAGES/*.po are in git, the compiled .mo files are not; `messages`
# compiles them with Django's compilemessages, which needs GNU gettext's msgfmt (Debian's gettext).
# Both commands walk the tree from here: the venv (a dot folder) and var/ are left out.
MSGFMT := /usr/bin/msgfmt
I18N_ENV := DJANGO_DEBUG=true SIMSEARCH_DATA_DIR=$(CURDIR)/var/i18n SIMSEARCH_STORAGE=local
MAKEMESSAGES_ARGS := -l ko --add-location=file --no-obsolete --ignore=var --ignore=tests --ignore=benchmarks

.PHONY: venv test lint demo demo-data messages makemessages clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(CHROMIUM) $(CJK_FONT):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk

$(MSGFMT):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gettext

# Compile the .po files to .mo (only those that changed).
messages: venv $(MSGFMT)
	$(I18N_ENV) $(PY) manage.py compilemessages --ignore='.*' --ignore=var

# After marking new strings: collect them into the .po files, then translate every new msgid there.
makemessages: venv $(MSGFMT)
	$(I18N_ENV) $(PY) manage.py makemessages $(MAKEMESSAGES_ARGS)
	$(I18N_ENV) $(PY) manage.py makemessages -d djangojs $(MAKEMESSAGES_ARGS)

test: venv messages $(CHROMIUM) $(CJK_FONT)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

demo-data: venv messages
	$(DEMO_ENV) $(PY) manage.py migrate --noinput
	$(DEMO_ENV) $(PY) manage.py create_demo_admin
	$(DEMO_ENV) $(PY) manage.py create_roles
	$(DEMO_ENV) $(PY) manage.py load_demo_catalog

# Uses the configured weights when they load, otherwise untrained weights (with a loud warning and
# the fetch_weights commands that fix it); untrained weights have no file whose sha256 could be checked.
demo: demo-data
	@weights="$$($(DEMO_ENV) $(PY) manage.py demo_weights)" && \
	if [ "$$weights" = untrained ]; then export SIMSEARCH_PRETRAINED_SHA256=; fi && \
	$(DEMO_ENV) SIMSEARCH_PRETRAINED="$$weights" $(PY) manage.py rebuild_index --type all --sync && \
	$(DEMO_ENV) SIMSEARCH_PRETRAINED="$$weights" $(PY) manage.py serve_demo --host $(HOST) --port $(PORT)

clean:
	rm -rf var/demo var/test var/i18n
	find locale -name '*.mo' -delete
