#!/bin/sh
# Install, upgrade and remove Portunus on this host (docs/deploy.md).
#
#   install.sh [--dry-run] install server|client|standalone --wheel FILE|--package SPEC
#              [--enroll URI] [--config FILE] [--advertised-endpoint HOST:PORT]
#              [--operator-http-listen ADDR:PORT] [--data-dir DIR] [--init systemd|openrc|none]
#              [--no-service]
#   install.sh [--dry-run] upgrade --wheel FILE|--package SPEC
#   install.sh [--dry-run] uninstall [--purge]
#   install.sh status
#   install.sh [--dry-run] service start|stop|restart
#   install.sh config get KEY
#   install.sh [--dry-run] config set KEY VALUE [--restart]
#
# Roles: server (portunus-server), client (an edge, portunus-client),
# standalone (the standalone forwarder). The project goes into its own
# virtual environment, /opt/portunus/venv, from a wheel (--wheel, made with
# `pip wheel --no-deps .`) or a pip requirement (--package, e.g.
# 'portunus==0.1.0' from the index PIP_INDEX_URL names: the name
# "portunus" on the public PyPI is another project). pip's own variables
# (PIP_INDEX_URL, PIP_NO_INDEX, PIP_FIND_LINKS) apply.
#
# Config keys (server): advertised-endpoint, operator-http-listen, data-dir.
# --dry-run prints every change it would make and makes none.
set -eu

INSTALLER_VERSION=1
PREFIX=/opt/portunus
VENV=$PREFIX/venv
ETC=/etc/portunus
META=$ETC/.install-meta
SERVER_ENV=$ETC/server.env
BUNDLE=$ETC/client.bundle.json
STANDALONE_CONFIG=$ETC/standalone.toml
DEFAULT_DATA_DIR=/var/lib/portunus
SYSTEMD_DIR=/etc/systemd/system
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)

dry_run=0
init=
wheel=
package=
enroll=
config=
advertised=
http_listen=
data_dir=
no_service=0
purge=0
restart=0

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# Every change goes through run or put: with --dry-run they only print.
run() {
	if [ "$dry_run" = 1 ]; then
		say "would run: $*"
	else
		"$@"
	fi
}

# put FILE MODE OWNER:GROUP < content
put() {
	if [ "$dry_run" = 1 ]; then
		say "would write $1 (mode $2, owner $3)"
		cat >/dev/null
		return
	fi
	tmp="$1.tmp.$$"
	cat >"$tmp"
	chmod "$2" "$tmp"
	chown "$3" "$tmp"
	mv -f "$tmp" "$1"
}

user_of() {
	case $1 in
		server) echo portunus-server ;;
		client) echo portunus-client ;;
		standalone) echo portunus ;;
	esac
}

meta() {
	[ -f "$META" ] || return 0
	sed -n "s/^$1=//p" "$META" | tail -n 1
}

installed_version() {
	[ -x "$VENV/bin/python" ] || return 0
	"$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("portunus"))' 2>/dev/null || true
}

detect_init() {
	if [ -n "$init" ]; then
		case $init in systemd|openrc|none) ;; *) die "--init must be systemd, openrc or none" ;; esac
		echo "$init"
	elif [ -d /run/systemd/system ] || command -v systemctl >/dev/null 2>&1; then
		echo systemd
	elif command -v openrc-run >/dev/null 2>&1; then
		echo openrc
	else
		echo none
	fi
}

# Whether the init system is the one running now (not just installed,
# as in a chroot or an image build): only then are services started.
init_running() {
	case $1 in
		systemd) [ -d /run/systemd/system ] ;;
		openrc) [ -e /run/openrc/softlevel ] ;;
		*) return 1 ;;
	esac
}

unit_source() {
	case $1 in
		systemd) echo "$HERE/systemd/portunus-$2.service" ;;
		openrc) echo "$HERE/openrc/portunus-$2" ;;
	esac
}

unit_path() {
	case $1 in
		systemd) echo "$SYSTEMD_DIR/portunus-$2.service" ;;
		openrc) echo "/etc/init.d/portunus-$2" ;;
	esac
}

run_command() {
	case $1 in
		server) echo "$VENV/bin/portunus-server serve --data-dir ${2:-$DEFAULT_DATA_DIR}" ;;
		client) echo "$VENV/bin/portunus-client run --bundle $BUNDLE" ;;
		standalone) echo "$VENV/bin/twistd --nodaemon --pidfile= portunus-standalone --config $STANDALONE_CONFIG" ;;
	esac
}

ensure_user() {
	if id "$1" >/dev/null 2>&1; then
		return
	fi
	if command -v useradd >/dev/null 2>&1; then
		run useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin "$1"
	elif command -v adduser >/dev/null 2>&1; then
		run addgroup -S "$1"
		run adduser -S -D -H -h /nonexistent -s /sbin/nologin -G "$1" "$1"
	else
		die "cannot create user $1: neither useradd nor adduser is installed"
	fi
}

remove_user() {
	id "$1" >/dev/null 2>&1 || return 0
	if command -v userdel >/dev/null 2>&1; then
		run userdel "$1"
		if getent group "$1" >/dev/null 2>&1; then
			run groupdel "$1"
		fi
	else
		run deluser "$1"
		if getent group "$1" >/dev/null 2>&1; then
			run delgroup "$1"
		fi
	fi
}

# ensure_dir PATH MODE OWNER:GROUP
ensure_dir() {
	if [ -d "$1" ]; then
		run chmod "$2" "$1"
		run chown "$3" "$1"
	else
		run install -d -m "$2" -o "${3%%:*}" -g "${3##*:}" "$1"
	fi
}

pip_spec() {
	if [ -n "$wheel" ]; then
		[ -f "$wheel" ] || die "--wheel $wheel: no such file"
		echo "$wheel"
	elif [ -n "$package" ]; then
		echo "$package"
	else
		die "say what to install: --wheel FILE (pip wheel --no-deps .) or --package SPEC (from your index; 'portunus' on the public PyPI is another project)"
	fi
}

install_venv() {
	spec=$(pip_spec)
	if ! "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
		die "$PYTHON must be Python 3.11 or newer with the venv module (Debian: apt-get install python3-venv)"
	fi
	if [ ! -x "$VENV/bin/python" ]; then
		run install -d -m 0755 "$PREFIX"
		run "$PYTHON" -m venv "$VENV"
	fi
	run "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
		--upgrade "$spec"
	# twistd finds the roles through Twisted's plugin cache; writing it now
	# keeps the services from trying to write into the read-only venv.
	run "$VENV/bin/python" -c \
		'import portunus.healthcheck; from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
}

# write_server_env: PORTUNUS_* settings of the server's service.
write_server_env() {
	{
		echo "# Portunus server settings (install.sh config set KEY VALUE)."
		[ -z "$advertised" ] || echo "PORTUNUS_ADVERTISED_ENDPOINT=$advertised"
		[ -z "$http_listen" ] || echo "PORTUNUS_OPERATOR_HTTP_LISTEN=$http_listen"
		[ -z "$data_dir" ] || [ "$data_dir" = "$DEFAULT_DATA_DIR" ] || echo "PORTUNUS_DATA_DIR=$data_dir"
	} | put "$SERVER_ENV" 0640 root:portunus-server
}

env_value() {
	[ -f "$SERVER_ENV" ] || return 0
	sed -n "s/^$1=//p" "$SERVER_ENV" | tail -n 1
}

# The systemd unit only may write where ReadWritePaths says.
write_data_dir_dropin() {
	dropin="$SYSTEMD_DIR/portunus-server.service.d"
	if [ -z "$data_dir" ] || [ "$data_dir" = "$DEFAULT_DATA_DIR" ]; then
		if [ -e "$dropin/10-data-dir.conf" ]; then
			run rm -f "$dropin/10-data-dir.conf"
			run rmdir "$dropin"
		fi
		return
	fi
	[ -d "$dropin" ] || run install -d -m 0755 "$dropin"
	printf '[Service]\nReadWritePaths=%s\n' "$data_dir" | put "$dropin/10-data-dir.conf" 0644 root:root
}

install_unit() {
	kind=$1
	role=$2
	[ "$kind" != none ] || return 0
	source=$(unit_source "$kind" "$role")
	[ -f "$source" ] || die "$source is missing: run install.sh from the project's contrib/ directory"
	case $kind in
		systemd) mode=0644 ;;
		openrc) mode=0755 ;;
	esac
	put "$(unit_path "$kind" "$role")" "$mode" root:root <"$source"
	if [ "$kind" = systemd ] && [ "$role" = server ]; then
		write_data_dir_dropin
	fi
}

reload_units() {
	if [ "$1" = systemd ] && init_running systemd; then
		run systemctl daemon-reload
	fi
}

enable_service() {
	case $1 in
		systemd) run systemctl enable --quiet "portunus-$2.service" ;;
		openrc) run rc-update add "portunus-$2" default ;;
	esac
}

service_ctl() {
	kind=$1
	action=$2
	role=$3
	case $kind in
		systemd) run systemctl "$action" "portunus-$role.service" ;;
		openrc) run rc-service "portunus-$role" "$action" ;;
		*) die "no init system manages Portunus here; run: $(run_command "$role" "$(meta data_dir)")" ;;
	esac
}

# Whether the role has what it needs to start.
can_start() {
	case $1 in
		client) [ -f "$BUNDLE" ] ;;
		standalone) [ -f "$STANDALONE_CONFIG" ] ;;
		*) return 0 ;;
	esac
}

write_meta() {
	{
		echo "role=$1"
		echo "version=$2"
		echo "init=$3"
		echo "source=$4"
		[ "$1" != server ] || echo "data_dir=${data_dir:-$DEFAULT_DATA_DIR}"
		echo "installed_at=$5"
		[ -z "${6:-}" ] || echo "upgraded_at=$6"
		echo "installer_version=$INSTALLER_VERSION"
	} | put "$META" 0644 root:root
}

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

installed_role() {
	role=$(meta role)
	[ -n "$role" ] || die "Portunus is not installed here ($META is missing)"
	echo "$role"
}

need_root() {
	[ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or with --dry-run to see what would change)"
}

check_setting() {
	# The server's own parsers check the values (one implementation).
	[ -x "$VENV/bin/python" ] || return 0
	"$VENV/bin/python" - "$1" "$2" <<'PY' || exit 1
import os, sys
from portunus.server.settings import parse_advertised_endpoint, parse_listen_address
key, value = sys.argv[1], sys.argv[2]
try:
    if key == "advertised-endpoint":
        parse_advertised_endpoint(value)
    elif key == "operator-http-listen":
        parse_listen_address(value)
    elif not os.path.isabs(value):
        raise ValueError("must be an absolute path")
except ValueError as e:
    sys.exit(f"install.sh: {key}: {e}")
PY
}

# ---------------------------------------------------------------------------
# Verbs

do_install() {
	role=$1
	case $role in server|client|standalone) ;; *) die "install what? server, client or standalone" ;; esac
	need_root
	previous=$(meta role)
	[ -z "$previous" ] || [ "$previous" = "$role" ] ||
		die "the $previous role is installed here; run 'install.sh uninstall' first"
	[ -z "$enroll" ] || [ "$role" = client ] || die "--enroll is for the client role"
	[ -z "$config" ] || [ "$role" = standalone ] || die "--config is for the standalone role"
	[ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"
	if [ "$role" != server ] && { [ -n "$advertised" ] || [ -n "$http_listen" ] || [ -n "$data_dir" ]; }; then
		die "--advertised-endpoint, --operator-http-listen and --data-dir are for the server role"
	fi
	kind=$(detect_init)
	user=$(user_of "$role")
	say "installing portunus $role (init: $kind)"

	ensure_user "$user"
	ensure_dir "$ETC" 0750 "root:$user"
	install_venv
	if [ "$role" = server ]; then
		for key in advertised-endpoint operator-http-listen data-dir; do
			case $key in
				advertised-endpoint) value=$advertised ;;
				operator-http-listen) value=$http_listen ;;
				data-dir) value=$data_dir ;;
			esac
			[ -z "$value" ] || [ "$dry_run" = 1 ] || check_setting "$key" "$value"
		done
		ensure_dir "${data_dir:-$DEFAULT_DATA_DIR}" 0700 "$user:$user"
		write_server_env
	fi
	if [ "$role" = standalone ]; then
		if [ -n "$config" ]; then
			[ "$dry_run" = 1 ] || "$VENV/bin/twistd" --nodaemon --pidfile= portunus-standalone \
				--config "$config" --check >/dev/null || die "--config $config is not valid (see above)"
			put "$STANDALONE_CONFIG" 0640 "root:$user" <"$config"
		elif [ -f "$STANDALONE_CONFIG" ]; then
			run chown "root:$user" "$STANDALONE_CONFIG"
			run chmod 0640 "$STANDALONE_CONFIG"
		fi
	fi
	if [ "$role" = client ] && [ -n "$enroll" ]; then
		run "$VENV/bin/portunus-client" enroll "$enroll" --out "$BUNDLE"
		run chown "root:$user" "$BUNDLE"
		run chmod 0640 "$BUNDLE"
	fi
	install_unit "$kind" "$role"
	reload_units "$kind"
	if [ "$kind" != none ]; then
		enable_service "$kind" "$role"
	fi
	version=$(installed_version)
	[ "$dry_run" = 0 ] || version=$(meta version)
	write_meta "$role" "${version:-unknown}" "$kind" "$(pip_spec)" "$(now)"

	if [ "$kind" = none ]; then
		say "no init system found: start it with"
		say "  $(run_command "$role" "$data_dir")"
	elif [ "$no_service" = 1 ]; then
		say "not started (--no-service)"
	elif ! init_running "$kind"; then
		say "$kind is installed but not running here: the service is enabled for the next boot"
	elif ! can_start "$role"; then
		case $role in
			client) say "not started: no bundle yet; run install.sh again with --enroll URI" ;;
			standalone) say "not started: write $STANDALONE_CONFIG, then: install.sh service start" ;;
		esac
	else
		service_ctl "$kind" restart "$role"
	fi
	say "installed portunus $role ${version:-}"
}

do_upgrade() {
	need_root
	role=$(installed_role)
	kind=$(meta init)
	before=$(installed_version)
	data_dir=$(meta data_dir)
	install_venv
	install_unit "$kind" "$role"
	reload_units "$kind"
	after=$(installed_version)
	[ "$dry_run" = 0 ] || after=$before
	write_meta "$role" "$after" "$kind" "$(pip_spec)" "$(meta installed_at)" "$(now)"
	if [ "$no_service" = 0 ] && init_running "$kind" && can_start "$role"; then
		service_ctl "$kind" restart "$role"
	fi
	say "upgraded portunus $role: $before -> $after"
}

do_uninstall() {
	need_root
	role=$(installed_role)
	kind=$(meta init)
	user=$(user_of "$role")
	state=$(meta data_dir)
	if [ "$kind" != none ]; then
		if init_running "$kind"; then
			service_ctl "$kind" stop "$role" || true
		fi
		case $kind in
			systemd) run systemctl disable --quiet "portunus-$role.service" ;;
			openrc) run rc-update del "portunus-$role" default ;;
		esac
		run rm -f "$(unit_path "$kind" "$role")"
		if [ -d "$SYSTEMD_DIR/portunus-$role.service.d" ]; then
			run rm -rf "$SYSTEMD_DIR/portunus-$role.service.d"
		fi
		reload_units "$kind"
	fi
	run rm -rf "$PREFIX"
	run rm -f "$META"
	if [ "$purge" = 1 ]; then
		if [ -n "$state" ]; then
			run rm -rf "$state"
		fi
		run rm -rf "$ETC"
		run rm -f "/var/log/portunus-$role.log"
		remove_user "$user"
		say "uninstalled portunus $role and removed its configuration, state and user"
	else
		say "uninstalled portunus $role; kept $ETC, the state and user $user (--purge removes them)"
	fi
}

do_status() {
	role=$(meta role)
	if [ -z "$role" ]; then
		say "portunus: not installed"
		exit 1
	fi
	kind=$(meta init)
	say "role: $role"
	say "version: $(installed_version) (installed $(meta installed_at))"
	say "venv: $VENV"
	say "init: $kind"
	case $kind in
		systemd)
			unit=$(unit_path systemd "$role")
			if [ -f "$unit" ]; then say "unit: $unit"; else say "unit: $unit (missing)"; fi
			if init_running systemd; then
				say "enabled: $(systemctl is-enabled "portunus-$role.service" 2>/dev/null || true)"
				say "active: $(systemctl is-active "portunus-$role.service" 2>/dev/null || true)"
			else
				say "active: unknown (systemd is not running here)"
			fi
			;;
		openrc)
			say "unit: $(unit_path openrc "$role")"
			if init_running openrc; then
				say "active: $(rc-service "portunus-$role" status 2>/dev/null || true)"
			fi
			;;
	esac
	case $role in
		server) say "data dir: $(meta data_dir)" ;;
		client) if [ -f "$BUNDLE" ]; then say "bundle: $BUNDLE"; else say "bundle: none (enroll with --enroll URI)"; fi ;;
		standalone) if [ -f "$STANDALONE_CONFIG" ]; then say "config: $STANDALONE_CONFIG"; else say "config: none"; fi ;;
	esac
}

do_service() {
	case ${1:-} in start|stop|restart) ;; *) die "service start|stop|restart" ;; esac
	need_root
	role=$(installed_role)
	kind=$(meta init)
	if [ "$kind" != none ] && ! init_running "$kind"; then
		die "$kind is not running here; start the role by hand: $(run_command "$role" "$(meta data_dir)")"
	fi
	service_ctl "$kind" "$1" "$role"
}

config_var() {
	case $1 in
		advertised-endpoint) echo PORTUNUS_ADVERTISED_ENDPOINT ;;
		operator-http-listen) echo PORTUNUS_OPERATOR_HTTP_LISTEN ;;
		data-dir) echo PORTUNUS_DATA_DIR ;;
		*) die "unknown key '$1': advertised-endpoint, operator-http-listen or data-dir" ;;
	esac
}

do_config() {
	action=${1:-}
	key=${2:-}
	[ "$(meta role)" = server ] || die "config is for the server role (installed: $(meta role))"
	var=$(config_var "$key")
	advertised=$(env_value PORTUNUS_ADVERTISED_ENDPOINT)
	http_listen=$(env_value PORTUNUS_OPERATOR_HTTP_LISTEN)
	data_dir=$(env_value PORTUNUS_DATA_DIR)
	case $action in
		get)
			value=$(env_value "$var")
			[ -n "$value" ] || [ "$key" != data-dir ] || value=$DEFAULT_DATA_DIR
			say "$value"
			;;
		set)
			[ $# -ge 3 ] || die "config set $key VALUE"
			need_root
			check_setting "$key" "$3"
			case $key in
				advertised-endpoint) advertised=$3 ;;
				operator-http-listen) http_listen=$3 ;;
				data-dir)
					data_dir=$3
					ensure_dir "$data_dir" 0700 portunus-server:portunus-server
					kind=$(meta init)
					[ "$kind" != systemd ] || write_data_dir_dropin
					reload_units "$kind"
					write_meta server "$(meta version)" "$kind" "$(meta source)" "$(meta installed_at)" "$(meta upgraded_at)"
					say "note: nothing was moved; copy the old data dir's files if it held state"
					;;
			esac
			write_server_env
			if [ "$restart" = 1 ]; then
				service_ctl "$(meta init)" restart server
			else
				say "set $key; restart to apply: install.sh service restart"
			fi
			;;
		*) die "config get KEY | config set KEY VALUE" ;;
	esac
}

# ---------------------------------------------------------------------------

[ $# -gt 0 ] || usage
verb=
args=
while [ $# -gt 0 ]; do
	case $1 in
		--dry-run) dry_run=1 ;;
		--init) init=${2:?--init needs a value}; shift ;;
		--wheel) wheel=${2:?--wheel needs a file}; shift ;;
		--package) package=${2:?--package needs a pip requirement}; shift ;;
		--enroll) enroll=${2:?--enroll needs a URI}; shift ;;
		--config) config=${2:?--config needs a file}; shift ;;
		--advertised-endpoint) advertised=${2:?--advertised-endpoint needs HOST:PORT}; shift ;;
		--operator-http-listen) http_listen=${2:?--operator-http-listen needs ADDR:PORT}; shift ;;
		--data-dir) data_dir=${2:?--data-dir needs a directory}; shift ;;
		--no-service) no_service=1 ;;
		--purge) purge=1 ;;
		--restart) restart=1 ;;
		-h|--help) usage ;;
		-*) die "unknown option $1 (see --help)" ;;
		*)
			if [ -z "$verb" ]; then verb=$1; else args="$args $1"; fi
			;;
	esac
	shift
done
[ -z "$wheel" ] || wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
[ -z "$config" ] || config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")

# The remaining words are plain names and values (no spaces).
# shellcheck disable=SC2086
set -- $args
case $verb in
	install) do_install "${1:-}" ;;
	upgrade) do_upgrade ;;
	uninstall) do_uninstall ;;
	status) do_status ;;
	service) do_service "${1:-}" ;;
	config) do_config "$@" ;;
	*) usage ;;
esac
