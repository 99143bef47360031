import t from 'tap';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { replaceFile, syncDirectory, tempFileOf } from '../src/atomicWrite.js';
import { tempDir, writeFile600 } from './lib/harness.js';

t.test('replaces the file by rename, keeping mode, leaving no temp file', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'users'), 'old\n');
  const before = statSync(file);
  await replaceFile(file, Buffer.from('new\n'), before);
  t.equal(readFileSync(file, 'utf8'), 'new\n');
  const after = statSync(file);
  t.not(after.ino, before.ino, 'a new inode: readers see the old or the new file, never a mix');
  t.equal(after.mode & 0o7777, 0o600);
  t.same(readdirSync(dir), ['users']);
});

t.test('keeps an unusual mode too', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'users');
  writeFileSync(file, 'x', { mode: 0o640 });
  await replaceFile(file, Buffer.from('y'), statSync(file));
  t.equal(statSync(file).mode & 0o7777, 0o640);
});

t.test('a stale temp file from a crashed writer does not block the next write', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'users'), 'a');
  writeFileSync(tempFileOf(file), 'half');
  await replaceFile(file, Buffer.from('b'), statSync(file));
  t.equal(readFileSync(file, 'utf8'), 'b');
  t.notOk(existsSync(tempFileOf(file)));
});

t.test('a failed write leaves the original and no temp file', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'users'), 'keep');
  const stats = statSync(file);
  // rename onto a directory fails after the temp file was written
  const target = join(dir, 'adir');
  mkdirSync(join(target, 'sub'), { recursive: true });
  await t.rejects(replaceFile(target, Buffer.from('x'), stats));
  t.notOk(existsSync(tempFileOf(target)), 'temp removed');
  t.equal(readFileSync(file, 'utf8'), 'keep');
  await syncDirectory(dir);
  t.pass('a directory can be fsynced');
});
