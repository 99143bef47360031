import t from 'tap';
import { chownSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Stats } from 'node:fs';
import { changedRanges, syncDirectory, TempFile, tempFileOf } from '../src/atomicWrite.js';

const replaceFile = (file: string, bytes: Buffer, original: Stats): Promise<Stats | undefined> =>
  TempFile.create(file, original).replace(bytes);
import { otherOwner, tempDir, writeFile600 } from './lib/harness.js';

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

t.test('a veto just before the rename leaves the file alone and deletes the temp file', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'users'), 'theirs');
  const result = await TempFile.create(file, statSync(file)).replace(Buffer.from('ours'), () => false);
  t.equal(result, undefined);
  t.equal(readFileSync(file, 'utf8'), 'theirs');
  t.notOk(existsSync(tempFileOf(file)));
  const after = await TempFile.create(file, statSync(file)).replace(Buffer.from('ours'), () => true);
  t.equal(after?.ino, statSync(file).ino, 'the stats of the renamed file');
});

t.test('changedRanges: the pages that differ, and the moved tail', async (t) => {
  const old = Buffer.alloc(20_000, 'a');
  t.same(changedRanges(undefined, old), [[0, 20_000]], 'no old content: everything');
  t.same(changedRanges(old, Buffer.from(old)), [], 'same content: nothing');
  const onePage = Buffer.from(old);
  onePage[5000] = 0x62;
  t.same(changedRanges(old, onePage), [[4096, 8192]]);
  const twoApart = Buffer.from(onePage);
  twoApart[17_000] = 0x62;
  t.same(changedRanges(old, twoApart), [[4096, 8192], [16_384, 20_000]]);
  const inserted = Buffer.concat([Buffer.alloc(5000, 'a'), Buffer.from('XY'), Buffer.alloc(15_000, 'b')]);
  t.same(changedRanges(old, inserted), [[4096, 20_002]], 'from the first differing page to the end');
  const grown = Buffer.concat([old, Buffer.from('tail')]);
  t.same(changedRanges(old, grown), [[20_000, 20_004]], 'only the appended bytes');
  const shorter = old.subarray(0, 10_000);
  t.same(changedRanges(old, shorter), [], 'a shorter file is a truncation');
});

t.test('a prepared temp file patched into new content equals that content', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'users'), 'x');
  for (const [base, next] of [
    [Buffer.alloc(50_000, 'a'), Buffer.concat([Buffer.alloc(30_000, 'a'), Buffer.from('changed'), Buffer.alloc(19_993, 'a')])],
    [Buffer.alloc(50_000, 'a'), Buffer.concat([Buffer.from('grown '), Buffer.alloc(50_000, 'a')])],
    [Buffer.alloc(50_000, 'a'), Buffer.alloc(10_000, 'b')],
  ] as [Buffer, Buffer][]) {
    const temp = await TempFile.prepared(file, base, statSync(file));
    t.ok(temp.holds(base));
    t.equal(readFileSync(tempFileOf(file)).length, base.length, 'the bulk is written ahead');
    await temp.replace(next);
    t.ok(readFileSync(file).equals(next), `${next.length} bytes as expected`);
    t.notOk(existsSync(tempFileOf(file)));
  }
  const unused = await TempFile.prepared(file, Buffer.from('abc'), statSync(file));
  unused.discard();
  t.notOk(existsSync(tempFileOf(file)), 'a discarded temp file is deleted');
});

t.test('keeps the owner and group of the file it replaces', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'users'), 'old');
  const owner = otherOwner();
  chownSync(file, owner.uid, owner.gid);
  const before = statSync(file);
  await TempFile.create(file, before).replace(Buffer.from('new'));
  const after = statSync(file);
  t.not(after.ino, before.ino, 'a new inode');
  t.same([after.uid, after.gid, after.mode & 0o7777], [owner.uid, owner.gid, 0o600], `owner kept (${owner.what}), mode kept`);
});
