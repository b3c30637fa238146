// Validates an AsyncAPI document with the official parser (@asyncapi/parser).
//
//   node asyncapi_validate.cjs DOCUMENT
//       prints each diagnostic as "severity path: message" (severity 0 = error), then "ok" if
//       there is no error; exits 1 on errors.
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');

async function main() {
  const text = fs.readFileSync(process.argv[2], 'utf8');
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text);
  let errors = 0;
  for (const d of diagnostics) {
    console.log(`${d.severity} ${d.path.join('.')}: ${d.message}`);
    if (d.severity === 0) errors += 1;
  }
  if (!document || errors > 0) {
    process.exit(1);
  }
  console.log('ok');
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
