// Runs a WASI command module under Node's own WASI implementation (node:wasi), a
// runtime unrelated to the wasmtime the tests embed: `node run-node-wasi.mjs vote.wasm < votes.jsonl`.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node run-node-wasi.mjs <module.wasm> < input");
  process.exit(2);
}
const wasi = new WASI({ version: "preview1", args: [file], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
