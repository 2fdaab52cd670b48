# Sourced by the scripts: installs what a fresh Debian machine lacks and
# fails loudly where FUSE cannot work.
need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
command -v getfattr >/dev/null 2>&1 || need_apt+=(attr)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
# ip and tc: the shaped-network tests and benchmarks (network namespaces).
# chromium: the dashboard's test drives the page in a real, headless browser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# systemd-analyze: the test that checks the systemd user unit in contrib/.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
{ command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; } || need_apt+=(iproute2)
# man (the package's test reads the installed man pages) and dpkg-shlibdeps
# (cargo-deb works out the package's library dependencies with it).
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need_apt+=(dpkg-dev)
# nft: the home routers (NAT, stateful firewalls) of the reachability tests.
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# miniupnpd: the home router that offers port mappings (UPnP IGD, NAT-PMP).
command -v miniupnpd >/dev/null 2>&1 || need_apt+=(miniupnpd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${need_apt[*]} missing and not root; install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -c /dev/fuse ]; then
  echo "error: /dev/fuse is missing: FUSE cannot work on this machine" >&2
  exit 1
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found; install the Rust toolchain" >&2; exit 1; }
# cargo-deb builds the Debian package (scripts/package.sh and its test).
# 3.8 still packages the dev profile, which the test takes from the other
# tests' build (with a warning: later versions may refuse it). About 100 s
# of CPU to build, once.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --version '~3.8' --quiet
fi
