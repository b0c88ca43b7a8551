// `npm test`: the suite in two passes. The crash tests (*-crash.test.ts: a SIGKILLed server during
// 2,000 writes, a registry sync of 10,000 Immunizations through worker kills and a Redis restart) load
// both cores for minutes; beside them the tests that measure event-loop stalls and timeouts measure
// the crash tests instead. So they run last, on their own. With arguments (files, patterns, jest
// options) it is one plain jest run, as before.
import { spawnSync } from 'node:child_process';

const jest = ['--experimental-vm-modules', 'node_modules/jest/bin/jest.js'];
const run = (args) => spawnSync(process.execPath, [...jest, ...args], { stdio: 'inherit' }).status ?? 1;
const args = process.argv.slice(2);
if (args.length) process.exit(run(args));
const HEAVY = '[-]crash\\.test\\.ts$';
const first = run(['--testPathIgnorePatterns', HEAVY]);
const second = run(['--testPathPatterns', HEAVY]);
process.exit(first || second);
