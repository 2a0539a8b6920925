// Builds plugin.js into a Weir plugin component:
//   node build.mjs [OUTPUT.wasm]   (default: content-inspector.wasm)
//
// componentize-js's API rather than the jco CLI: the CLI's bundled
// StarlingMonkey backend fails here to read paths ("failed to get path
// metadata").
//
// package.json names @bytecodealliance/preview2-shim because
// componentize-js 0.23.0 imports it but declares it only as a dev
// dependency of its own.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const output = resolve(process.argv[2] ?? resolve(here, 'content-inspector.wasm'));
process.chdir(here);

const { component } = await componentize({
  sourcePath: 'plugin.js',
  witPath: '../../../wit',
  worldName: 'plugin',
  // The gateway provides no wasi:http, and a filter needs no fetch(); the
  // default build would import it and be refused at load.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(output, component);
console.log(`${output}: ${component.length} bytes`);
