#!/usr/bin/env bash
# Builds the Debian package `fileshare`: fsd and fileshare-tracker, their man
# pages, fsd's shell completions, the user unit fsd.service and the system
# unit fileshare-tracker@.service, as fsd/Cargo.toml's
# [package.metadata.deb] lists them. Prints the .deb's path as its last line
# (the only one on stdout); progress goes to stderr.
#
#   scripts/package.sh [--profile NAME] [--no-build] [--fast] [--output DIR]
#
#   --profile NAME  the Cargo profile to build and package (default release;
#                   `dev` packages the debug build, to check the packaging
#                   quickly, never to ship)
#   --no-build      package the binaries already built for that profile
#   --fast          lighter compression: a bigger .deb, made sooner
#   --output DIR    where to write the .deb (default target/debian)
#
# The man pages and completions are generated here, by the binaries just
# built (`fsd man`, `fsd completions SHELL`, `fileshare-tracker --man`),
# rather than in a build.rs: the binaries hold the one definition of their
# command lines, which a build script would have to copy, and cargo-deb
# takes generated files from a fixed path, never from a build script's
# OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
deb_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a name}; shift 2 ;;
    --no-build) build=0; shift ;;
    --fast) deb_args+=(--fast); shift ;;
    --output) deb_args+=(--output "${2:?--output needs a directory}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb" >&2
  cargo install cargo-deb --locked >&2
fi

if [ "$build" = 1 ]; then
  echo "== cargo build --profile $profile" >&2
  cargo build --locked --profile "$profile" -p fsd -p fileshare-tracker >&2
fi

target_dir=$(cargo metadata --no-deps --format-version 1 --offline |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
case "$profile" in
  dev) bin_dir=$target_dir/debug ;;
  *) bin_dir=$target_dir/$profile ;;
esac
for b in fsd fileshare-tracker; do
  [ -x "$bin_dir/$b" ] || { echo "error: $bin_dir/$b is not built" >&2; exit 1; }
done

echo "== generating man pages, completions and the packaged user unit" >&2
assets=$bin_dir/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
# gzip -n: no name or time stamp, so the same build gives the same bytes.
"$bin_dir/fsd" man | gzip -9n >"$assets/fsd.1.gz"
"$bin_dir/fileshare-tracker" --man | gzip -9n >"$assets/fileshare-tracker.1.gz"
"$bin_dir/fsd" completions bash >"$assets/fsd.bash"
"$bin_dir/fsd" completions zsh >"$assets/_fsd"
"$bin_dir/fsd" completions fish >"$assets/fsd.fish"
# contrib/fsd.service runs the fsd that `cargo install --root /usr/local`
# puts in /usr/local/bin; the package's is in /usr/bin.
sed 's|/usr/local/bin/fsd|/usr/bin/fsd|g' contrib/fsd.service >"$assets/fsd.service"
grep -q '^ExecStart=/usr/bin/fsd ' "$assets/fsd.service" ||
  { echo "error: contrib/fsd.service no longer starts /usr/local/bin/fsd" >&2; exit 1; }

# The release profile keeps line tables for the benchmarks' profiles; the
# package goes without them.
echo "== cargo deb --profile $profile" >&2
out=$(cargo deb -p fsd --no-build --profile "$profile" --strip --locked "${deb_args[@]}")
deb=$(printf '%s\n' "$out" | tail -n 1)
[ -f "$deb" ] || { echo "error: cargo deb made no package (it said: $out)" >&2; exit 1; }
echo "$deb"
