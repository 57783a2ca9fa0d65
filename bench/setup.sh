#!/bin/sh
# Install what `make bench` needs from Debian's packages, when missing.
#
#   iperf3               bulk transfer (L4 bulk workloads)
#   wrk                  HTTP/HTTPS load (built with OpenSSL: https:// URLs work)
#   nginx                the HTTP backend and the nginx contenders
#   libnginx-mod-stream  nginx's `stream` module (TCP proxying): a dynamic
#                        module on Debian, not in nginx-light or nginx itself
#   haproxy, socat       the other contenders (socat also echoes for ping-pong)
#   openssl              the benchmark's throwaway CA and certificate
#
# Runs apt-get only when something is missing, and only as root (otherwise
# it says what to install and exits 1). Safe to run again.
set -eu

missing=""
need() {
    # $1: a command (or file) that shows the package is there; $2: the package
    case "$1" in
    /*) [ -e "$1" ] || missing="$missing $2" ;;
    *) PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1 || missing="$missing $2" ;;
    esac
}
need iperf3 iperf3
need wrk wrk
need nginx nginx
need /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream
need haproxy haproxy
need socat socat
need openssl openssl

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "bench/setup.sh: missing Debian packages:$missing" >&2
    echo "  install them as root: apt-get install -y$missing" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: no apt-get here; install by hand:$missing" >&2
    exit 1
fi
echo "bench/setup.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # $missing is a list of package names
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# Debian starts the services it installs; the benchmark runs its own
# instances on free loopback ports, so stop the system ones where possible.
for service in nginx haproxy; do
    case "$missing" in
    *" $service"*)
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
            systemctl stop "$service" || true
        fi
        ;;
    esac
done
