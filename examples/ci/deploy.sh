#!/usr/bin/env bash
# Deploy one greenswap migration: plan -> sync -> verify -> cutover.
# Stops at the first non-zero exit and says what to do; never finalizes
# (that is a person's decision, after the old clients are gone).
#
#   DATABASE_URL=postgres://... bash examples/ci/deploy.sh migrations/greenswap/orders_v2.yaml
#
# Every step is safe to re-run: sync resumes from its checkpoint, verify and
# cutover are idempotent for a migration already in the target state.
set -uo pipefail

spec=${1:?usage: deploy.sh SPEC.yaml}
gs=${GREENSWAP:-greenswap}
# The migration's name is the spec's top-level "name:" field.
name=$(sed -n 's/^name:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$spec" | head -n1)
[ -n "$name" ] || { echo "deploy: no name: in $spec" >&2; exit 2; }

step() {
	echo "==> greenswap $*"
	"$gs" "$@"
	code=$?
	if [ "$code" -ne 0 ]; then
		case "$code" in
		1) why="failed (for verify: blue and green differ; see the keys listed above)" ;;
		2) why="bad input: spec, flags, missing table or migration, unreachable database; nothing was changed" ;;
		3) why="plan found blocking hazards; nothing was changed" ;;
		4) why="another greenswap holds this migration (named above); wait for it, then re-run" ;;
		5) why="gave up waiting for a table lock (the blocking sessions are named above); nothing was changed; re-run later" ;;
		130) why="interrupted; progress is checkpointed; re-run this script to resume" ;;
		*) why="exit $code" ;;
		esac
		echo "deploy: greenswap $1 stopped the pipeline: exit $code: $why" >&2
		echo "deploy: where it stands: greenswap status $name" >&2
		exit "$code"
	fi
}

step plan -f "$spec"
step sync -f "$spec"
step verify "$name"
step cutover "$name"
echo "deploy: $name is cut over. Roll back with: greenswap rollback $name"
echo "deploy: once no client uses the old shape: greenswap finalize $name"
