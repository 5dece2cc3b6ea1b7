#!/usr/bin/env bash
# supervisorctl against the local stack's supervisord: `stack/ctl.sh status`,
# `stack/ctl.sh stop kafka`, `stack/ctl.sh pid redis` (what the e2e suite's faults use).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
sctl "$@"
