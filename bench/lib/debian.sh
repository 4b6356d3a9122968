# Sourced by bench/overhead/run.sh and bench/fidelity/run.sh (bash).
#
# install_missing LABEL PACKAGE...: installs the named Debian packages with apt-get when running as
# root, or says how to install them. Messages go to stderr, prefixed with LABEL. It never fails: the
# caller checks afterwards for what it cannot do without.
install_missing() {
  local label=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$label: installing $* from Debian" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
      || echo "$label: could not install $*" >&2
  else
    echo "$label: $* missing; install with: sudo apt-get install -y $*" >&2
  fi
}
