# An admin's edit of the users file the way liboath (pam_oath) locks it: an
# fcntl write lock on `<file>.lock` (no flock), then temp file, fsync, rename,
# fsync of the directory, delete the lock file, unlock
# (shared/spec/users-file.md). Used by test/crash.ts as a real other program.
#
#   edit_users_file.py FILE append LINE | comment ID | pin LOGIN PIN | crash
#
# `crash` takes the lock, leaves half a temp file, says "holding" and waits to
# be killed: an admin tool that dies in the middle of its write.
import fcntl
import os
import re
import signal
import sys
import time

signal.alarm(20)  # a lock that never comes is a failure, not a hang
os.umask(0o077)
path, op, args = sys.argv[1], sys.argv[2], sys.argv[3:]
lock, temp = path + '.lock', path + '.new'

# The holder before us deletes the lock file before unlocking: a lock on the
# file we opened may be on one nobody else can see any more. Check that the
# path still names it and start over if not, as the spec requires.
for _ in range(200):
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    mine = os.fstat(fd)
    try:
        now = os.stat(lock)
        if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
    except FileNotFoundError:
        pass
    os.close(fd)
else:
    sys.exit('lock file replaced 200 times in a row')

with open(path, 'rb') as f:
    text = f.read()
if op == 'append':
    text += args[0].encode() + b'\n'
elif op == 'comment':
    text = re.sub(rb'(?m)^(# comment-edits:.*)$', lambda m: m.group(1) + b' ' + args[0].encode(), text, count=1)
elif op == 'pin':
    text = re.sub(rb'(?m)^(\S+ ' + re.escape(args[0].encode()) + rb') \S+ ', lambda m: m.group(1) + b' ' + args[1].encode() + b' ', text, count=1)
elif op != 'crash':
    sys.exit('unknown edit ' + op)

out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
if op == 'crash':
    os.write(out, text[:100])
    print('holding', flush=True)
    time.sleep(30)
os.write(out, text)
os.fsync(out)
os.close(out)
os.rename(temp, path)
d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
os.fsync(d)
os.close(d)
os.unlink(lock)
os.close(fd)
