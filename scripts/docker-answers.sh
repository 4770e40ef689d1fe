#!/usr/bin/env bash
# Exit 0 when a Docker daemon answers GET /_ping at $DOCKER_HOST (default
# unix:///var/run/docker.sock), 1 otherwise; prints nothing unless -v.
# The Makefile adds -tags testcontainers to the test targets when it does.
# This is the same question internal/pgtest asks (source.go, pingDocker):
# unix:// and tcp:// daemons, TLS when DOCKER_TLS_VERIFY is set, 2 s timeout.
set -u
verbose=0
[ "${1:-}" = "-v" ] && verbose=1
say() { [ "$verbose" = 1 ] && echo "$@" >&2; return 0; }

host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
args=(--silent --fail --max-time 2 --output /dev/null)
case "$host" in
unix://*)
	sock="${host#unix://}"
	[ -S "$sock" ] || { say "no Docker socket at $sock"; exit 1; }
	url="http://docker/_ping"
	args+=(--unix-socket "$sock")
	;;
tcp://* | http://* | https://*)
	addr="${host#*://}"
	addr="${addr%%/*}"
	if [ -n "${DOCKER_TLS_VERIFY:-}" ] || [ "${host%%://*}" = https ]; then
		certs="${DOCKER_CERT_PATH:-$HOME/.docker}"
		url="https://$addr/_ping"
		args+=(--cacert "$certs/ca.pem" --cert "$certs/cert.pem" --key "$certs/key.pem")
	else
		url="http://$addr/_ping"
	fi
	;;
*)
	say "DOCKER_HOST=$host: only unix:// and tcp:// daemons are detected"
	exit 1
	;;
esac
if curl "${args[@]}" "$url"; then
	say "a Docker daemon answers at $host"
	exit 0
fi
say "no Docker daemon answers at $host"
exit 1
