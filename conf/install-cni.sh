#!/bin/sh
# install-cni.sh: install tabby's CNI plugins and network configuration on a
# host. It runs as the `install-cni` init container of the tabby-node
# DaemonSet (conf/k8s/tabby.yaml), with the host's /opt/cni/bin and
# /etc/cni/net.d mounted under /host, and can be run by hand the same way.
#
# It is idempotent: a second run with the same input changes nothing (files
# that are already identical are left alone, so a runtime that watches the
# config directory sees no churn). Every file is written under a temporary
# name in its destination directory and renamed into place, so a runtime
# never runs a half-copied plugin or reads a half-written configuration, and
# a running ADD keeps the binary it started with.
#
# POSIX sh only (the image's /bin/sh is dash).
#
# Environment (defaults in brackets):
#   SRC_BIN_DIR         where the image keeps tabby and tabby-ipam [/opt/tabby/bin]
#   CNI_BIN_DIR         the host's CNI plugin dir, as mounted here [/host/opt/cni/bin]
#   CNI_NET_DIR         the host's CNI config dir, as mounted here [/host/etc/cni/net.d]
#   HOST_CNI_NET_DIR    the same dir as the host sees it; TLS paths written into
#                       the conflist point there [/etc/cni/net.d]
#   CNI_CONF_NAME       the conflist's file name [10-tabby.conflist]
#   CNI_NETWORK_CONFIG  the conflist template itself (the ConfigMap's
#                       cni_network_config), or
#   CNI_NETWORK_CONFIG_FILE  a file holding it (used when CNI_NETWORK_CONFIG is empty)
#   ETCD_ENDPOINTS      etcd URLs, comma separated (required)
#   ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE
#                       etcd TLS files as this container sees them (the Secret
#                       volume); each one given is copied to
#                       $CNI_NET_DIR/tabby-tls/ and the conflist names the host's
#                       copy. Empty: no TLS (the placeholder becomes "").
#   ETCD_TLS_HOST_DIR, HOST_ETCD_TLS_HOST_DIR
#                       a host directory of this node's own etcd certificate,
#                       as mounted here [/etc/tabby/etcd-tls-host] and as the
#                       host sees it [/etc/tabby/pki]; a TLS file in it is not
#                       copied: the conflist names the host's file, so the
#                       plugins follow a rotation there without a new copy
#   EXTRA_BIN_DIR       where the image keeps reference plugins [/opt/tabby/cni]
#   EXTRA_PLUGINS       reference plugins the conflist chains, installed only
#                       when the host has none of that name [portmap]
#
# Template placeholders: __ETCD_ENDPOINTS__, __ETCD_CA_CERT_FILE__,
# __ETCD_CERT_FILE__, __ETCD_KEY_FILE__. Any other __NAME__ left after
# rendering is an error. The node name is not a placeholder: the plugin reads
# it from <state_dir>/nodename, which tabby-node writes.
set -eu

SRC_BIN_DIR=${SRC_BIN_DIR:-/opt/tabby/bin}
CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
HOST_CNI_NET_DIR=${HOST_CNI_NET_DIR:-/etc/cni/net.d}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-tabby.conflist}
CNI_NETWORK_CONFIG=${CNI_NETWORK_CONFIG:-}
CNI_NETWORK_CONFIG_FILE=${CNI_NETWORK_CONFIG_FILE:-}
ETCD_ENDPOINTS=${ETCD_ENDPOINTS:-}
ETCD_CA_CERT_FILE=${ETCD_CA_CERT_FILE:-}
ETCD_CERT_FILE=${ETCD_CERT_FILE:-}
ETCD_KEY_FILE=${ETCD_KEY_FILE:-}
ETCD_TLS_HOST_DIR=${ETCD_TLS_HOST_DIR:-/etc/tabby/etcd-tls-host}
HOST_ETCD_TLS_HOST_DIR=${HOST_ETCD_TLS_HOST_DIR:-/etc/tabby/pki}
EXTRA_BIN_DIR=${EXTRA_BIN_DIR:-/opt/tabby/cni}
EXTRA_PLUGINS=${EXTRA_PLUGINS-portmap}

TLS_SUBDIR=tabby-tls

log() { printf 'install-cni: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# install_file SRC DIR NAME MODE: put SRC at DIR/NAME atomically, unless an
# identical file is already there.
install_file() {
	_src=$1 _dir=$2 _name=$3 _mode=$4
	_dst=$_dir/$_name
	if [ -f "$_dst" ] && cmp -s "$_src" "$_dst"; then
		chmod "$_mode" "$_dst"
		log "$_dst is up to date"
		return 0
	fi
	# A fixed temporary name (not $$) so that a run killed half-way leaves
	# nothing that the next run does not overwrite; it starts with a dot and
	# ends in .tmp, so neither a runtime (which reads only *.conf, *.conflist
	# and *.json) nor a plugin lookup ever picks it up.
	_tmp=$_dir/.$_name.tabby.tmp
	rm -f "$_tmp"
	cp "$_src" "$_tmp"
	chmod "$_mode" "$_tmp"
	mv -f "$_tmp" "$_dst"
	log "installed $_dst"
}

# json_safe NAME VALUE: the value goes into a JSON string and a sed
# replacement; refuse what would break either.
json_safe() {
	case $2 in
	*'"'* | *\\* | *'|'*) die "$1 must not contain '\"', '\\' or '|': $2" ;;
	esac
	case $2 in
	*"
"*) die "$1 must be one line" ;;
	esac
}

# sed_escape VALUE: escape & for the replacement side of s|...|...|.
sed_escape() { printf '%s' "$1" | sed 's/&/\\&/g'; }

# --- check the input ---------------------------------------------------------
[ -n "$ETCD_ENDPOINTS" ] || die "ETCD_ENDPOINTS is empty (the tabby-etcd Secret's etcd_endpoints)"
json_safe ETCD_ENDPOINTS "$ETCD_ENDPOINTS"
for _p in tabby tabby-ipam; do
	[ -f "$SRC_BIN_DIR/$_p" ] || die "$SRC_BIN_DIR/$_p is missing"
done
if [ -z "$CNI_NETWORK_CONFIG" ]; then
	[ -n "$CNI_NETWORK_CONFIG_FILE" ] || die "set CNI_NETWORK_CONFIG (the ConfigMap's cni_network_config) or CNI_NETWORK_CONFIG_FILE"
	[ -f "$CNI_NETWORK_CONFIG_FILE" ] || die "CNI_NETWORK_CONFIG_FILE $CNI_NETWORK_CONFIG_FILE does not exist"
	CNI_NETWORK_CONFIG=$(cat "$CNI_NETWORK_CONFIG_FILE")
fi
case $CNI_CONF_NAME in
*/* | '') die "CNI_CONF_NAME must be a plain file name" ;;
*.conflist) ;;
*) die "CNI_CONF_NAME must end in .conflist (it holds a plugin list)" ;;
esac

mkdir -p "$CNI_BIN_DIR" "$CNI_NET_DIR"

# --- plugins -----------------------------------------------------------------
for _p in tabby tabby-ipam; do
	install_file "$SRC_BIN_DIR/$_p" "$CNI_BIN_DIR" "$_p" 0755
done
# Chained reference plugins: the host's own copy wins (it may be newer).
for _p in $EXTRA_PLUGINS; do
	if [ -e "$CNI_BIN_DIR/$_p" ]; then
		log "$CNI_BIN_DIR/$_p exists; keeping the host's"
	elif [ -f "$EXTRA_BIN_DIR/$_p" ]; then
		install_file "$EXTRA_BIN_DIR/$_p" "$CNI_BIN_DIR" "$_p" 0755
	else
		log "warning: no $_p in $CNI_BIN_DIR or $EXTRA_BIN_DIR; the conflist chains it, so ADDs will fail until it is installed"
	fi
done

# --- etcd TLS files ----------------------------------------------------------
# tls_file VAR PATH NAME MODE: copy PATH (the Secret's file) next to the
# conflist and print the host's path of the copy; print nothing without TLS.
tls_file() {
	[ -n "$2" ] || return 0
	json_safe "$1" "$2"
	[ -s "$2" ] || die "$1=$2 is missing or empty (fill in the tabby-etcd Secret, or set $1 to \"\" for no TLS)"
	case $2 in
	"$ETCD_TLS_HOST_DIR"/*)
		json_safe HOST_ETCD_TLS_HOST_DIR "$HOST_ETCD_TLS_HOST_DIR"
		printf '%s/%s' "$HOST_ETCD_TLS_HOST_DIR" "${2#"$ETCD_TLS_HOST_DIR"/}"
		return 0
		;;
	esac
	mkdir -p "$CNI_NET_DIR/$TLS_SUBDIR"
	chmod 0700 "$CNI_NET_DIR/$TLS_SUBDIR"
	install_file "$2" "$CNI_NET_DIR/$TLS_SUBDIR" "$3" "$4"
	printf '%s/%s/%s' "$HOST_CNI_NET_DIR" "$TLS_SUBDIR" "$3"
}
CA=$(tls_file ETCD_CA_CERT_FILE "$ETCD_CA_CERT_FILE" etcd-ca 0644)
CERT=$(tls_file ETCD_CERT_FILE "$ETCD_CERT_FILE" etcd-cert 0644)
KEY=$(tls_file ETCD_KEY_FILE "$ETCD_KEY_FILE" etcd-key 0600)
json_safe HOST_CNI_NET_DIR "$HOST_CNI_NET_DIR"

# --- the conflist ------------------------------------------------------------
TMP_CONF=$CNI_NET_DIR/.$CNI_CONF_NAME.render.tmp
trap 'rm -f "$TMP_CONF"' EXIT
printf '%s\n' "$CNI_NETWORK_CONFIG" | sed \
	-e "s|__ETCD_ENDPOINTS__|$(sed_escape "$ETCD_ENDPOINTS")|g" \
	-e "s|__ETCD_CA_CERT_FILE__|$(sed_escape "$CA")|g" \
	-e "s|__ETCD_CERT_FILE__|$(sed_escape "$CERT")|g" \
	-e "s|__ETCD_KEY_FILE__|$(sed_escape "$KEY")|g" >"$TMP_CONF"

if grep -n '__[A-Z0-9_]*__' "$TMP_CONF" >&2; then
	die "placeholders left in the rendered conflist (lines above); this script knows __ETCD_ENDPOINTS__, __ETCD_CA_CERT_FILE__, __ETCD_CERT_FILE__, __ETCD_KEY_FILE__"
fi
# No JSON parser in the image: check the shape a CNI runtime needs at least.
_first=$(sed -n '/[^[:space:]]/{p;q;}' "$TMP_CONF")
case $_first in
[[:space:]]*'{'* | '{'*) ;;
*) die "the rendered conflist does not start with '{'" ;;
esac
grep -q '"plugins"' "$TMP_CONF" || die "the rendered conflist has no \"plugins\" list"
grep -q '"type"[[:space:]]*:[[:space:]]*"tabby"' "$TMP_CONF" || die "the rendered conflist has no plugin of type \"tabby\""

install_file "$TMP_CONF" "$CNI_NET_DIR" "$CNI_CONF_NAME" 0644

# A runtime uses the configuration whose file name sorts first.
for _f in "$CNI_NET_DIR"/*.conf "$CNI_NET_DIR"/*.conflist "$CNI_NET_DIR"/*.json; do
	[ -e "$_f" ] || continue
	_b=${_f##*/}
	if [ "$_b" != "$CNI_CONF_NAME" ]; then
		_lo=$(printf '%s\n%s\n' "$_b" "$CNI_CONF_NAME" | LC_ALL=C sort | sed -n 1p)
		if [ "$_lo" = "$_b" ]; then
			log "warning: $HOST_CNI_NET_DIR/$_b sorts before $CNI_CONF_NAME, so the runtime uses it, not tabby"
		fi
	fi
done
log "done: $HOST_CNI_NET_DIR/$CNI_CONF_NAME"
