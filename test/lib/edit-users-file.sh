#!/bin/sh
# An admin's edit of the users file the way otplock and mod_authn_otp lock it:
# flock(1) on `<file>.lock` (flock only, no fcntl lock), then temp file, fsync,
# rename, fsync of the directory, delete the lock file, unlock
# (shared/spec/users-file.md). Used by test/crash.ts as a real other program.
#
#   edit-users-file.sh FILE append LINE | comment ID | pin LOGIN PIN | crash
#
# `crash` takes the lock, leaves half a temp file, says "holding" and waits to
# be killed: an admin tool that dies in the middle of its write.
set -eu
umask 077
file=$1 op=$2
shift 2
lock="$file.lock" temp="$file.new"

# The fd form of flock(1) rather than `flock FILE cmd`: the holder before us
# deletes the lock file before unlocking, so a lock taken on the file we opened
# may be on one nobody else can see any more. Check that the path still names
# the locked file and start over if not, as the spec requires (`flock FILE cmd`
# cannot check it: that is the race README's "Locking" paragraph describes).
tries=0
while :; do
  exec 9<>"$lock"
  flock -w 20 9
  [ "$(stat -L -c %d:%i /proc/self/fd/9)" = "$(stat -c %d:%i "$lock" 2>/dev/null || echo gone)" ] && break
  exec 9>&-
  tries=$((tries + 1))
  [ "$tries" -lt 200 ] || { echo "lock file replaced 200 times in a row" >&2; exit 4; }
done

case $op in
  append) { cat "$file"; printf '%s\n' "$1"; } > "$temp" ;;
  comment) sed "s/^# comment-edits:.*/& $1/" "$file" > "$temp" ;;
  pin) sed "s|^\([^ ]* $1\) [^ ]* |\1 $2 |" "$file" > "$temp" ;;
  crash)
    head -c 100 "$file" > "$temp"
    echo holding
    exec sleep 30 ;;
  *) echo "unknown edit $op" >&2; exit 2 ;;
esac
sync "$temp"
mv -f "$temp" "$file"
sync "$(dirname "$file")"
rm -f "$lock"
exec 9>&-
