// Real llama.cpp (through the npm package node-llama-cpp) on a GGUF from make_gguf.py, measured
// the way bench/bench_engine.cpp measures our engine, so the two can be put side by side on the
// same weights and the same machine.
//
//   node bench/llama_cpp/bench.mjs --model FILE.gguf --threads 2 --prompt-tokens 512 \
//       --decode-tokens 128 [--short-prompt-tokens 1] [--json]
//
// node-llama-cpp is an ES module found the CommonJS way, so either run from a directory whose
// node_modules has it (cd DIR && node PATH/TO/bench/llama_cpp/bench.mjs ...) or point NODE_PATH
// at such a node_modules (NODE_PATH=DIR/node_modules node bench/llama_cpp/bench.mjs); the runner,
// bench/run_llama_cpp_bench.sh, installs node-llama-cpp into ~/.cache/cepe/node-llama-cpp.
//
// CPU only, exactly --threads threads for prompt and decode batches, batch size 512, node-llama-cpp's
// defaults otherwise (F16 KV cache, flash attention "auto", which the CPU backend does take,
// weights mmapped; Q4_0 matrices repacked to q4_0_8x8 at load on this AVX-512 box). Figures:
//   prefill       one evaluation of the prompt (BOS + deterministic ids), no token generated;
//   decode_short  greedy decode after a BOS-only prompt (bench_engine's short decode);
//   decode        greedy decode after the same prompt as prefill.
// A decode's clock starts when the first token (sampled from the prompt's logits) is yielded and
// stops at the --decode-tokens-th token after it: that is --decode-tokens steps of "evaluate the
// previous token, sample greedily", prompt evaluation excluded -- as bench_engine times its
// loop of forward + argmax. The steps include node-llama-cpp's JS/N-API round trip per token.
import {spawnSync} from "node:child_process";
import {readFileSync} from "node:fs";
import {createRequire} from "node:module";
import {pathToFileURL} from "node:url";
import {parseArgs} from "node:util";

// node-llama-cpp runs each llama_decode as a job on libuv's threadpool. With its default 4
// threads, consecutive decode steps land on different threads and, with 2 compute threads on
// this 2-core box, about one step in ten stalls for 10-50 ms (3x slower q4_0 decode); with one
// libuv thread the steps run as fast as the same libllama driven from C. The pool's size is
// fixed before this module runs, so re-run once with it set (an explicit setting is kept).
if (process.env.UV_THREADPOOL_SIZE === undefined) {
    const env = {...process.env, UV_THREADPOOL_SIZE: "1"};
    const child = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {stdio: "inherit", env});
    process.exit(child.status ?? 1);
}

const {values: opt} = parseArgs({options: {
    model: {type: "string"},
    threads: {type: "string", default: "2"},
    "prompt-tokens": {type: "string", default: "512"},
    "decode-tokens": {type: "string", default: "128"},
    "short-prompt-tokens": {type: "string", default: "1"},
    json: {type: "boolean", default: false},
}});
if (!opt.model) {
    console.error("usage: node bench.mjs --model FILE.gguf [--threads N] [--prompt-tokens N] " +
        "[--decode-tokens N] [--short-prompt-tokens N] [--json]");
    process.exit(2);
}
const threads = Number(opt.threads), promptTokens = Number(opt["prompt-tokens"]);
const decodeTokens = Number(opt["decode-tokens"]), shortTokens = Number(opt["short-prompt-tokens"]);

// ES imports ignore NODE_PATH; require.resolve honours it as well as ./node_modules.
const nlcPath = createRequire(process.cwd() + "/").resolve("node-llama-cpp");
const {getLlama} = await import(pathToFileURL(nlcPath).href);

function procStatusMb(field) {
    const m = readFileSync("/proc/self/status", "utf8").match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
    return Number(m[1]) / 1024;
}

// maxThreads 0 turns off node-llama-cpp's thread sharing between contexts, so the context's
// thread count is what llama.cpp gets (n_threads = n_threads_batch), not a hint.
const llama = await getLlama({gpu: false, maxThreads: 0, build: "never", logLevel: "error"});
const baselineRss = procStatusMb("VmRSS");  // node + the llama.cpp libraries, no model yet
const model = await llama.loadModel({modelPath: opt.model, gpuLayers: 0});
const context = await model.createContext({
    contextSize: promptTokens + decodeTokens + 16, batchSize: 512, threads, sequences: 1,
});
const seq = context.getSequence();

// The prompt: BOS, then ids from a fixed LCG over [3, vocab) (no control tokens), the same every run.
const vocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
const bos = model.tokens.bos ?? 1;
function promptIds(n) {
    const ids = [bos];
    for (let x = 12345; ids.length < n;) {
        x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
        ids.push(3 + (x >>> 8) % (vocab - 3));
    }
    return ids.slice(0, n);
}
const prompt = promptIds(promptTokens);

// Greedy tokens after `tokens` on an empty sequence: the first from the prompt's logits, then n more.
// Also the median step, which stays put when a few steps stall (see UV_THREADPOOL_SIZE above).
async function greedy(tokens, n) {
    const ids = [], at = [];
    // yieldEogToken: keep going through EOS, as bench_engine does (random weights emit it freely).
    for await (const tok of seq.evaluate(tokens, {temperature: 0, yieldEogToken: true})) {
        ids.push(tok);
        at.push(performance.now());
        if (ids.length === n + 1) break;
    }
    await seq.clearHistory();
    const steps = at.slice(1).map((t, i) => t - at[i]).sort((a, b) => a - b);
    return {ids, seconds: (at[n] - at[0]) / 1000, medianMs: steps[steps.length >> 1]};
}

const figure = (tokens, seconds) => ({tokens, seconds: +seconds.toFixed(4), tokens_per_s: +(tokens / seconds).toFixed(2)});
const decodeFigure = (g, promptLen) =>
    ({...figure(g.ids.length - 1, g.seconds), median_step_ms: +g.medianMs.toFixed(3), prompt_tokens: promptLen});

// Warm-up on the same paths at small sizes (as bench_engine does), so that first touches of the
// mmapped weights and first-use allocations fall outside the timed runs.
await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 8));
await seq.clearHistory();
await greedy(prompt.slice(0, 8), 2);

const short = await greedy(promptIds(shortTokens), decodeTokens);

let t0 = performance.now();
await seq.evaluateWithoutGeneratingNewTokens(prompt);
const prefillS = (performance.now() - t0) / 1000;
await seq.clearHistory();

const long = await greedy(prompt, decodeTokens);

const cpuVariant = [...new Set(readFileSync("/proc/self/maps", "utf8").match(/libggml-cpu-[\w-]+\.so/g) ?? [])].join(",");
const fileTypes = {0: "f32", 1: "f16", 2: "q4_0", 7: "q8_0", 32: "bf16"};
const result = {
    engine: "llama.cpp (node-llama-cpp 3.22.1)",
    llama_cpp_release: llama.llamaCppRelease.release,
    model: opt.model,
    threads: context.currentThreads,
    type: fileTypes[model.fileInfo.metadata.general.file_type] ?? String(model.fileInfo.metadata.general.file_type),
    prefill: figure(promptTokens, prefillS),
    decode_short: decodeFigure(short, shortTokens),
    decode: decodeFigure(long, promptTokens),
    peak_rss_mb: +procStatusMb("VmHWM").toFixed(1),
    baseline_rss_mb: +baselineRss.toFixed(1),
    cpu_variant: cpuVariant || "unknown",
    context_size: context.contextSize,
    flash_attention: context.flashAttention,
    kv_cache: "f16",
    mmap: model.useMmap,
    uv_threadpool_size: Number(process.env.UV_THREADPOOL_SIZE),
    first_tokens: short.ids.slice(0, 16),
};
await llama.dispose();

if (opt.json) {
    console.log(JSON.stringify(result));
} else {
    const r = result;
    console.log(`${r.engine}, ${r.type}, ${r.threads} threads, cpu backend ${r.cpu_variant}`);
    for (const k of ["prefill", "decode_short", "decode"])
        console.log(`  ${k.padEnd(13)} ${r[k].tokens} tokens in ${r[k].seconds} s: ${r[k].tokens_per_s} tokens/s` +
            (r[k].median_step_ms ? ` (median step ${r[k].median_step_ms} ms)` : ""));
    console.log(`  peak RSS ${r.peak_rss_mb} MB (baseline before the model ${r.baseline_rss_mb} MB)`);
    console.log(`  first greedy tokens after the short prompt: ${r.first_tokens.join(" ")}`);
}
