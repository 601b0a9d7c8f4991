#!/bin/sh
# Make a copy of the ocf:heartbeat:exportfs resource agent whose backup_rmtab
# and restore_rmtab call rmtabtool (see docs/pacemaker.md for the why).
#
#   sh exportfs-rmtabtool.sh [SOURCE [TARGET]]
#
# SOURCE  the packaged agent (default /usr/lib/ocf/resource.d/heartbeat/exportfs)
# TARGET  the copy to write  (default /usr/lib/ocf/resource.d/rmtabtool/exportfs,
#         i.e. the resource type ocf:rmtabtool:exportfs)
#
# The packaged agent is never modified, so a package upgrade neither undoes the
# change nor conflicts with it; re-run this script after an upgrade to pick up
# the new agent. Running it on an already converted copy replaces the drop-in.
# Exactly the two functions are replaced; anything else aborts with no change.
set -eu

src=${1:-/usr/lib/ocf/resource.d/heartbeat/exportfs}
dst=${2:-/usr/lib/ocf/resource.d/rmtabtool/exportfs}

die() { echo "exportfs-rmtabtool: $*" >&2; exit 1; }

[ -r "$src" ] || die "cannot read $src"
case "$(basename "$dst")" in
exportfs) ;;
*) die "$dst: the copy must be named exportfs (ocf-rarun derives its function names from it)" ;;
esac
mkdir -p "$(dirname "$dst")"

tmp=$(mktemp "$(dirname "$dst")/.exportfs.XXXXXX")
block=$(mktemp)
trap 'rm -f "$tmp" "$block"' EXIT

cat >"$block" <<'DROPIN'
# BEGIN rmtabtool drop-in (docs/pacemaker.md)
# backup_rmtab/restore_rmtab through rmtabtool: restore merges the backup by
# (client, path) under rpc.mountd's lock instead of adding lines, so failovers
# cannot grow the rmtab; every write is atomic. rmtab trouble is logged and
# never fails a monitor or a stop (a failed stop gets the node fenced).
rmtabtool_live_rmtab=/var/lib/nfs/rmtab

# The backup file: rmtab_backup is relative to the export directory unless it
# is absolute (then the resource may export only one directory, or the
# directories would overwrite each other's backup).
rmtabtool_backup_file() {
	case "$OCF_RESKEY_rmtab_backup" in
	/*)
		if [ "$NUMDIRS" -gt 1 ]; then
			ocf_log err "rmtab_backup=$OCF_RESKEY_rmtab_backup is absolute but $NUMDIRS directories are exported: use a name relative to them"
			return $OCF_ERR_CONFIGURED
		fi
		echo "$OCF_RESKEY_rmtab_backup" ;;
	*)
		echo "$1/$OCF_RESKEY_rmtab_backup" ;;
	esac
}

# rmtabtool_run backup|restore ARGS...: run rmtabtool, log what it says on
# stderr, map its exit code (docs/exit-codes.md) to an OCF return code.
rmtabtool_run() {
	local what=$1 out rc
	out=$(rmtabtool "$@" 2>&1 >/dev/null)
	rc=$?
	rmtabtool_rc=$rc
	case $rc in
	0)
		[ -z "$out" ] || ocf_log warn "rmtabtool $what: ${out#rmtabtool: }"
		return $OCF_SUCCESS ;;
	66|75)
		# an input vanished, or a lock stayed busy: the next monitor retries
		ocf_log warn "rmtabtool $what (exit $rc): ${out#rmtabtool: }"
		return $OCF_SUCCESS ;;
	2|126|127)
		# not installed, not on PATH, or too old for these options
		ocf_log err "rmtabtool $what cannot run (exit $rc): ${out#rmtabtool: }"
		return $OCF_ERR_INSTALLED ;;
	*)
		# 65 70 73 74 77: the rmtab and the backup are untouched (atomic writes)
		ocf_log err "rmtabtool $what failed (exit $rc): ${out#rmtabtool: }"
		return $OCF_SUCCESS ;;
	esac
}

backup_rmtab() {
	local dir=$1 backup
	[ "$OCF_RESKEY_rmtab_backup" != none ] || return $OCF_SUCCESS
	# stop runs monitor first, which has just saved this directory: a second
	# run would only add a fraction of a second to every failover.
	case " $rmtabtool_saved " in *" $dir "*) return $OCF_SUCCESS ;; esac
	backup=$(rmtabtool_backup_file "$dir") || return $OCF_SUCCESS
	# On every monitor and on stop. -q: no rmtab yet (no NFSv3 mount since
	# boot) is normal, keeps the old backup and must not log every 10 s.
	rmtabtool_run backup --rmtab "$rmtabtool_live_rmtab" --to "$backup" \
		--missing-ok --lock-timeout 5 -q "$dir"
	[ "$rmtabtool_rc" != 0 ] || rmtabtool_saved="$rmtabtool_saved $dir"
	# Never fail a monitor or a stop, nor skip the next directory, for the rmtab.
	return $OCF_SUCCESS
}

restore_rmtab() {
	local dir=$1 backup rc
	[ "$OCF_RESKEY_rmtab_backup" != none ] || return $OCF_SUCCESS
	backup=$(rmtabtool_backup_file "$dir") || {
		rc=$?
		ocf_exit_reason "rmtab_backup must be relative when several directories are exported"
		return $rc
	}
	# On start. --replace: the backup, written by the node that ran the export
	# until now, is authoritative for this export: local entries it lacks are
	# clients that unmounted meanwhile. No backup yet (first start): a warning.
	rmtabtool_run restore --rmtab "$rmtabtool_live_rmtab" --from "$backup" \
		--replace --missing-ok --lock-timeout 10 "$dir"
	rc=$?
	[ $rc -eq $OCF_SUCCESS ] ||
		ocf_exit_reason "rmtabtool is not installed or too old on this node (see the log)"
	return $rc
}
# END rmtabtool drop-in
DROPIN

# Replace the two functions (or a previous drop-in) by the block. A function
# runs from its "name() {" line to the first line that is just "}".
awk -v blockfile="$block" '
function emit(   line) {
	while ((getline line < blockfile) > 0) print line
	close(blockfile)
	done++
}
/^# BEGIN rmtabtool drop-in/ { emit(); skip = "end"; next }
skip == "end" { if ($0 ~ /^# END rmtabtool drop-in/) skip = ""; next }
/^backup_rmtab\(\)[ \t]*\{?[ \t]*$/ { if (!done) emit(); skip = "fn"; found["backup"]++; next }
/^restore_rmtab\(\)[ \t]*\{?[ \t]*$/ { if (!done) emit(); skip = "fn"; found["restore"]++; next }
skip == "fn" { if ($0 ~ /^}[ \t]*$/) skip = ""; next }
{ print }
END {
	if (skip != "") { print "unterminated function or drop-in" > "/dev/stderr"; exit 1 }
	if (done != 1) { print "expected one drop-in, made " done + 0 > "/dev/stderr"; exit 1 }
	if (found["backup"] > 1 || found["restore"] > 1 || found["backup"] != found["restore"]) {
		print "backup_rmtab/restore_rmtab not found exactly once" > "/dev/stderr"; exit 1
	}
}' "$src" >"$tmp" || die "$src does not look like the exportfs agent: nothing written"

grep -q '^backup_rmtab() {$' "$tmp" && grep -q '^restore_rmtab() {$' "$tmp" ||
	die "the drop-in is missing from the result: nothing written"
sh -n "$tmp" || die "the result is not valid sh: nothing written"
chmod 755 "$tmp"
mv -f "$tmp" "$dst"
trap - EXIT
rm -f "$block"
echo "wrote $dst (ocf:$(basename "$(dirname "$dst")"):exportfs)"
