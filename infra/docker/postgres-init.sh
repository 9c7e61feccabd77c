#!/bin/sh
# First start of the postgres container only: one database per server that needs one
# ($OPDLM_DATABASES, owned by $POSTGRES_USER). Later starts reuse the volume and skip this.
set -eu
for db in $OPDLM_DATABASES; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
