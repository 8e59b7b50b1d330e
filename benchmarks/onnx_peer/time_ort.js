// ONNX Runtime's side of benchmarks/onnx_peer.sh: runs the networks
// export_tlite.py wrote on one thread (onnxruntime-node, CPU), checks their
// outputs against torouter's, and times them as tlite_peer_bench times
// torouter: one prompt at a time at each length, 1,024 prompts padded to one
// length and sorted into length buckets, and the 1024^3 GEMM.
//
//   node benchmarks/onnx_peer/time_ort.js DIR ROUNDS NAME...   -> DIR/onnxruntime.json
//
// Only session.run is timed; the input tensors are made before the clock.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const options = {
  executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1,
  executionMode: 'sequential', graphOptimizationLevel: 'all',
};

const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const nowUs = () => Number(process.hrtime.bigint()) / 1000;

// Median over rounds of each round's median call (microseconds).
async function timeCalls(call, rounds, secondsPerRound) {
  const roundMedians = [];
  for (let r = 0; r < rounds; ++r) {
    const calls = [];
    const end = nowUs() + secondsPerRound * 1e6;
    while (nowUs() < end || calls.length < 3) {
      const start = nowUs();
      await call();
      calls.push(nowUs() - start);
    }
    roundMedians.push(median(calls));
  }
  return median(roundMedians);
}

function idsTensor(prompts, length) {
  const ids = new BigInt64Array(prompts.length * length);
  const mask = new Float32Array(prompts.length * length);
  prompts.forEach((p, i) => p.forEach((id, j) => {
    ids[i * length + j] = BigInt(id);
    mask[i * length + j] = 1;
  }));
  return { ids: new ort.Tensor('int64', ids, [prompts.length, length]),
           mask: new ort.Tensor('float32', mask, [prompts.length, length]) };
}

function maxDifference(got, want) {
  let worst = 0;
  want.flat().forEach((w, i) => { worst = Math.max(worst, Math.abs(got[i] - w)); });
  return worst;
}

// The batch cut into chunks of `size` prompts of similar length, each
// padded to its longest (size 1024: one chunk, padded to the longest).
function bucketFeeds(batch, size) {
  const sorted = [...batch].sort((a, b) => a.length - b.length);
  const feeds = [];
  for (let i = 0; i < sorted.length; i += size) {
    const chunk = sorted.slice(i, i + size);
    feeds.push(idsTensor(chunk, chunk[chunk.length - 1].length));
  }
  return feeds;
}

async function timeShape(dir, name, rounds) {
  const inputs = JSON.parse(fs.readFileSync(path.join(dir, `${name}.inputs.json`)));
  const expected = JSON.parse(fs.readFileSync(path.join(dir, `${name}.expected.json`)));
  const single = await ort.InferenceSession.create(path.join(dir, `${name}.single.onnx`), options);
  const batched = await ort.InferenceSession.create(path.join(dir, `${name}.batch.onnx`), options);
  const result = { single_p50_us: {}, max_abs_difference: 0, batch_ms: {} };
  for (const [length, ids] of Object.entries(inputs.single)) {
    const feeds = { ids: idsTensor([ids], ids.length).ids };
    const out = await single.run(feeds);
    const want = expected.single[length];
    result.max_abs_difference = Math.max(result.max_abs_difference,
      maxDifference(out.quality.data, want.logits), maxDifference(out.tokens.data, want.tokens));
    result.single_p50_us[length] = await timeCalls(() => single.run(feeds), rounds, 0.3);
  }
  const checked = inputs.batch.slice(0, expected.batch_logits.length);
  const out = await batched.run(idsTensor(checked, Math.max(...checked.map((p) => p.length))));
  result.max_abs_difference = Math.max(result.max_abs_difference,
    maxDifference(out.quality.data, expected.batch_logits));
  for (const size of [1024, 256, 64, 16, 4]) {
    const feeds = bucketFeeds(inputs.batch, size);
    const runAll = async () => { for (const f of feeds) await batched.run(f); };
    await runAll();
    result.batch_ms[size === 1024 ? 'padded' : `buckets_of_${size}`] =
        (await timeCalls(runAll, rounds, 1.0)) / 1000;
  }
  result.best_batch_ms = Math.min(...Object.values(result.batch_ms));
  result.batch_prompts_per_second = inputs.batch.length / (result.best_batch_ms / 1000);
  return result;
}

async function gemmRate(dir, rounds) {
  const session = await ort.InferenceSession.create(path.join(dir, 'gemm1024.onnx'), options);
  const n = 1024;
  const random = () => Float32Array.from({ length: n * n }, () => Math.random() * 2 - 1);
  const feeds = { a: new ort.Tensor('float32', random(), [n, n]),
                  b: new ort.Tensor('float32', random(), [n, n]) };
  await session.run(feeds);
  const us = await timeCalls(() => session.run(feeds), rounds, 1.0);
  return (2 * n * n * n) / (us * 1e-6) / 1e9;
}

// What one session.run costs through Node with nothing to compute: the
// overhead in every single-prompt figure of the peer.
async function callOverhead(dir, rounds) {
  const session = await ort.InferenceSession.create(path.join(dir, 'identity.onnx'), options);
  const feeds = { x: new ort.Tensor('float32', new Float32Array([1]), [1]) };
  await session.run(feeds);
  return timeCalls(() => session.run(feeds), rounds, 0.3);
}

async function main() {
  const [dir, roundsText, ...names] = process.argv.slice(2);
  const rounds = Number(roundsText);
  if (!dir || !(rounds > 0) || names.length === 0) {
    console.error('usage: node time_ort.js DIR ROUNDS NAME...');
    process.exit(2);
  }
  const report = { onnxruntime: require('onnxruntime-node/package.json').version, shapes: {} };
  for (const name of names) report.shapes[name] = await timeShape(dir, name, rounds);
  report.gemm_1024_gflops = await gemmRate(dir, rounds);
  report.call_overhead_us = await callOverhead(dir, rounds);
  fs.writeFileSync(path.join(dir, 'onnxruntime.json'), JSON.stringify(report, null, 1) + '\n');
  console.log(JSON.stringify(report));
}

main().catch((e) => { console.error(`time_ort.js: ${e.stack || e}`); process.exit(1); });
