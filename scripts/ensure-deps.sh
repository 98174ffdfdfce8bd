#!/usr/bin/env bash
# Install the system packages the test suite starts for real (idempotent, Debian 12):
# prometheus + promtool, prometheus-alertmanager + amtool, PostgreSQL (initdb, postgres, psql),
# MariaDB (mariadb-install-db, mariadbd, mariadb), openssl (certificates for the TLS tests), Node.js
# (the inventory schema's patterns, as editors read them), Chromium (the status page's acceptance
# test drives Debian's headless chromium over DevTools; the monthly report's HTML is screenshot by it),
# Pango, HarfBuzz's subsetter and a font (WeasyPrint lays out the monthly report's PDF with them: a
# runtime need of `fabwatch report --format pdf` too), poppler-utils (pdftoppm and pdftotext read the
# PDF back as a person sees it).
# VictoriaMetrics (single-node: the long-term store Prometheus remote-writes into, read back by its query API).
# Only missing packages are installed; `apt-get update` runs once, and only if needed.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

missing=()

have() { command -v "$1" >/dev/null 2>&1; }

have_deb() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]; }

have_postgres() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        && compgen -G '/usr/lib/postgresql/*/bin/pg_isready' >/dev/null \
        && getent passwd postgres >/dev/null
}

{ have prometheus && have promtool; } || missing+=(prometheus)
{ have prometheus-alertmanager && have amtool; } || missing+=(prometheus-alertmanager)
have_postgres || missing+=(postgresql)
have victoria-metrics || missing+=(victoria-metrics)
have_mariadb() {
    [[ -x /usr/sbin/mariadbd ]] && have mariadb-install-db && have mariadb && have mariadb-admin
}

have_mariadb || missing+=(mariadb-server mariadb-client)
have openssl || missing+=(openssl)   # the TLS tests make their certificates with it
have node || missing+=(nodejs)      # the JSON Schema's patterns are compiled as editors (JavaScript) read them
{ have chromium && have chromedriver; } || missing+=(chromium chromium-driver)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# WeasyPrint (the report's PDF) loads these with dlopen: a wheel cannot bring them
for package in libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core; do
    have_deb "$package" || missing+=("$package")
done
{ have pdftoppm && have pdftotext; } || missing+=(poppler-utils)

if (( ${#missing[@]} == 0 )); then
    exit 0
fi

sudo=()
if (( EUID != 0 )); then
    if ! have sudo; then
        echo "ensure-deps: missing ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    sudo=(sudo -E)
fi

# Keep the packages' own services from starting: the tests start their own servers.
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
    "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "ensure-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ensure-deps: installed ${missing[*]}"
