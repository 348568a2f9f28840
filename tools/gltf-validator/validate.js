// Validate a .glb/.gltf with the Khronos glTF validator; print the report as JSON on stdout.
// Usage: node validate.js FILE   (exit 0 when the report was produced, 1 on a usage/read error)
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.js FILE.glb");
  process.exit(1);
}
const data = new Uint8Array(fs.readFileSync(file));
const dir = path.dirname(path.resolve(file));
validator
  .validateBytes(data, {
    uri: path.basename(file),
    maxIssues: 100,
    externalResourceFunction: (uri) =>
      new Promise((resolve, reject) => {
        fs.readFile(path.join(dir, decodeURIComponent(uri)), (err, buf) =>
          err ? reject(err.toString()) : resolve(new Uint8Array(buf))
        );
      }),
  })
  .then((report) => {
    process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  })
  .catch((err) => {
    console.error("validation failed: " + err);
    process.exit(1);
  });
