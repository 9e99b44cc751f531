#!/usr/bin/env bash
# Start PostgreSQL for the tests when it does not answer at $1 (a postgresql:// URL): install
# Debian's server if missing, start its cluster, let local TCP connections in without a
# password (trust, as on the development machines) and create the role and the database.
set -euo pipefail
url=${1:-postgresql://127.0.0.1:5432/test}
py=${PYTHON:-.venv/bin/python}
answers() { "$py" -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$url" 2>/dev/null; }
answers && exit 0
command -v pg_ctlcluster >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql; }
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main
hba=/etc/postgresql/$version/main/pg_hba.conf
grep -q "^host all all 127.0.0.1/32 trust" "$hba" || sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
pg_ctlcluster "$version" main start 2>/dev/null || pg_ctlcluster "$version" main reload
user=$(whoami)
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = '$user'\"" | grep -q 1 ||
  su postgres -c "psql -qc 'CREATE ROLE \"$user\" SUPERUSER LOGIN'"
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 ||
  su postgres -c "createdb -O \"$user\" test"
for _ in $(seq 50); do answers && exit 0; sleep 0.2; done
echo "PostgreSQL does not answer at $url" >&2
exit 1
