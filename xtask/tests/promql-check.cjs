// Reads a JSON array of PromQL expressions on stdin; prints each that does not
// parse with the Prometheus project's own PromQL grammar (@prometheus-io/lezer-promql,
// installed by `cargo xtask test` under target/tools).
const { parser } = require('@prometheus-io/lezer-promql');
const exprs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
let bad = 0;
for (const expr of exprs) {
  const tree = parser.parse(expr);
  let error = null;
  tree.iterate({ enter: (n) => { if (n.type.isError && error === null) error = n.from; } });
  if (error !== null) { bad++; console.log(`does not parse at ${error}: ${expr}`); }
}
process.exit(bad ? 1 : 0);
