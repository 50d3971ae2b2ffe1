#!/usr/bin/env bash
# Run the test suite in .venv. DDS traffic stays on this machine: localhost
# discovery and a domain id of the tests' own.
set -uo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${SGRU_TEST_DOMAIN_ID:-73}
exec .venv/bin/python -m pytest -q test "$@"
