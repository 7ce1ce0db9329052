#!/usr/bin/env bash
# deploy/dev/stop.sh (`make stop`): stops the development PostgreSQL cluster
# that setup.sh started. Data in .pstd/ is kept; `make setup` starts it again.
# PSTD_DEV_STATE names another state directory, as for setup.sh.
set -euo pipefail
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec "$PSTD_ROOT/deploy/dev/pg.sh" stop "${PSTD_DEV_STATE:-$PSTD_ROOT/.pstd}/pg"
