// Child process of durability.test.ts: writes through our BlkDriver + BlkDevice to a
// FileBlockBackend, prints "ACK <i>" after each acknowledged write, then waits to be SIGKILLed.
// argv: <image path> <mode: flush | writethrough> <writes>
// Imports the built package (dist/): run `npx tsc -b` first.
import { FileBlockBackend } from '../../dist/backend/index.js';
import { BlkDevice, BlkDriver, Machine } from '../../dist/index.js';

const [path, mode, countArg] = process.argv.slice(2);
const count = Number(countArg);
const backend = new FileBlockBackend(path, { createSize: 1 << 20 });
const m = new Machine({ ramSize: 8 << 20 });
m.addDevice(new BlkDevice({ backend }), { name: 'blk0' });
const d = BlkDriver.probe(m.probe('blk0'));
if (mode === 'writethrough') d.setWriteback(false);
for (let i = 0; i < count; i++) {
  const data = new Uint8Array(4096).fill((i * 37 + 1) & 0xff);
  d.write(i * 8, data);
  if (mode === 'flush') d.flush();
  process.stdout.write(`ACK ${i}\n`);
}
process.stdout.write('DONE\n');
// Stay alive until killed: the parent kills us right after the acknowledgement.
setInterval(() => {}, 1000);
