// Drives `cepe serve`'s OpenAI-compatible API with the real `openai` npm package: models, chat,
// chat streaming (with usage), completions (plain and streamed), log-probabilities, the retrieval
// extension fields, and errors (OpenAI's shape, read by the SDK as APIError). Run by tests/cli_openai.sh with
//   OPENAI_NPM_PREFIX  the folder `npm install --prefix` put the package in
//   CEPE_URL           the server's base URL (http://127.0.0.1:PORT/v1)
//   CEPE_KEY           the API key the server was started with
import { createRequire } from 'node:module';
import assert from 'node:assert/strict';

const require = createRequire(process.env.OPENAI_NPM_PREFIX + '/');
const openai = require('openai');
const OpenAI = openai.OpenAI ?? openai.default ?? openai;

const client = new OpenAI({ baseURL: process.env.CEPE_URL, apiKey: process.env.CEPE_KEY, maxRetries: 0 });
let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok:   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL: ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

// Expects `fn` to throw the SDK's APIError with this status, code and param.
async function expectApiError(fn, status, code, param) {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `not an APIError: ${e}`);
    assert.equal(e.status, status, e.message);
    assert.equal(e.code, code, e.message);
    if (param !== undefined) assert.equal(e.param, param, e.message);
    assert.ok(typeof e.error?.message === 'string' && e.error.message.length > 0);
    assert.ok(typeof e.type === 'string' && e.type.length > 0);
    return;
  }
  assert.fail('no error');
}

let modelId = '';
await check('models.list', async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  assert.equal(ids.length, 1);
  assert.equal(page.data[0].object, 'model');
  modelId = ids[0];
  assert.equal(modelId, 'tiny-openai');
});

const question = 'Which river flows through Paris?';
let plainAnswer = '';
await check('chat.completions.create', async () => {
  const r = await client.chat.completions.create({
    model: modelId,
    messages: [
      { role: 'system', content: 'Answer briefly.' },
      { role: 'user', content: 'ignored earlier question' },
      { role: 'assistant', content: 'ignored' },
      { role: 'user', content: question },
    ],
    max_tokens: 12,
    stop: [],
    k: 3,
    decoder_passages: 1,
  });
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.id.startsWith('chatcmpl-'));
  assert.equal(r.model, modelId);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.ok(['stop', 'length'].includes(c.finish_reason), c.finish_reason);
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.equal(r.passages.length, 3);  // extension: what the answer was conditioned on
  assert.ok(r.passages.some((p) => p.text.includes('Paris')), JSON.stringify(r.passages));
  plainAnswer = c.message.content;
});

await check('chat.completions.create stream', async () => {
  const stream = await client.chat.completions.create({
    model: modelId,
    messages: [
      { role: 'system', content: 'Answer briefly.' },
      { role: 'user', content: 'ignored earlier question' },
      { role: 'assistant', content: 'ignored' },
      { role: 'user', content: [{ type: 'text', text: question }] },
    ],
    max_tokens: 12,
    stop: [],
    k: 3,
    decoder_passages: 1,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '', finish = null, usage = null, chunks = 0, sawRole = false, passages = null;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    if (chunk.passages) passages = chunk.passages;
    for (const c of chunk.choices) {
      if (c.delta.role) sawRole = true;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(sawRole);
  assert.ok(chunks >= 3, `chunks ${chunks}`);
  assert.ok(['stop', 'length'].includes(finish), String(finish));
  assert.ok(usage && usage.completion_tokens > 0);
  assert.equal(passages.length, 3);
  // Greedy decoding: the streamed text is the plain answer (which is whitespace-trimmed).
  assert.equal(text.trim(), plainAnswer);
});

await check('completions.create (plain and stream)', async () => {
  const r = await client.completions.create({ model: modelId, prompt: question, max_tokens: 8, stop: [],
                                              passages: [{ title: 'France', text: 'The Seine flows through Paris.' }] });
  assert.equal(r.object, 'text_completion');
  assert.ok(r.id.startsWith('cmpl-'));
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.passages.length, 1);
  assert.equal(r.passages[0].text, 'The Seine flows through Paris.');
  const stream = await client.completions.create({ model: modelId, prompt: question, max_tokens: 8,
                                                   stop: [], stream: true,
                                                   passages: [{ title: 'France', text: 'The Seine flows through Paris.' }] });
  let text = '', finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text.trim(), r.choices[0].text);
  assert.equal(finish, r.choices[0].finish_reason);
});

// Log-probabilities: chat's logprobs.content (token, logprob, bytes, top_logprobs) and the legacy
// completions' tokens / token_logprobs / top_logprobs / text_offset, plain and streamed.
const lpMessages = [{ role: 'user', content: question }];
const joinBytes = (entries) => Buffer.from(entries.flatMap((e) => e.bytes));
await check('chat logprobs (plain and stream)', async () => {
  const r = await client.chat.completions.create({ model: modelId, messages: lpMessages, max_tokens: 10,
                                                   stop: [], logprobs: true, top_logprobs: 3 });
  const content = r.choices[0].logprobs.content;
  assert.equal(r.choices[0].logprobs.refusal, null);
  assert.equal(content.length, r.usage.completion_tokens);
  for (const e of content) {
    assert.equal(typeof e.token, 'string');
    assert.ok(e.logprob <= 0, String(e.logprob));
    assert.ok(Array.isArray(e.bytes) && e.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256));
    assert.equal(e.top_logprobs.length, 3);
    // Greedy: the chosen token is the most likely one; the list is sorted.
    assert.equal(e.top_logprobs[0].token, e.token);
    assert.equal(e.top_logprobs[0].logprob, e.logprob);
    for (let i = 1; i < 3; i++) assert.ok(e.top_logprobs[i - 1].logprob >= e.top_logprobs[i].logprob);
    assert.ok(e.top_logprobs.reduce((m, t) => m + Math.exp(t.logprob), 0) <= 1 + 1e-5);
  }
  // The tokens' bytes are the generated text (control pieces, listed by name, decode to nothing).
  // Bytes that make no character count as one U+FFFD each there, where Node's decoder may merge
  // them: the comparison leaves U+FFFD out on both sides.
  const noFffd = (t) => t.replaceAll('\ufffd', '');
  if (!content.some((e) => /^<.+>$/.test(e.token)))
    assert.equal(noFffd(joinBytes(content).toString('utf8')).trim(), noFffd(r.choices[0].message.content).trim());

  const stream = await client.chat.completions.create({ model: modelId, messages: lpMessages, max_tokens: 10,
                                                        stop: [], logprobs: true, top_logprobs: 3, stream: true });
  const streamed = [];
  for await (const chunk of stream)
    for (const c of chunk.choices) if (c.logprobs) streamed.push(...c.logprobs.content);
  assert.deepEqual(streamed, content);

  const plain = await client.chat.completions.create({ model: modelId, messages: lpMessages, max_tokens: 2 });
  assert.equal(plain.choices[0].logprobs, null);
  const chosenOnly = await client.chat.completions.create({ model: modelId, messages: lpMessages, max_tokens: 2,
                                                            stop: [], logprobs: true });
  assert.ok(chosenOnly.choices[0].logprobs.content.every((e) => e.top_logprobs.length === 0));
});

await check('completions logprobs (plain and stream)', async () => {
  const r = await client.completions.create({ model: modelId, prompt: question, max_tokens: 8, stop: [], logprobs: 2 });
  const lp = r.choices[0].logprobs;
  const n = r.usage.completion_tokens;
  assert.equal(lp.tokens.length, n);
  assert.equal(lp.token_logprobs.length, n);
  assert.equal(lp.top_logprobs.length, n);
  assert.equal(lp.text_offset.length, n);
  for (let i = 0; i < n; i++) {
    const top = lp.top_logprobs[i];
    // Up to logprobs + 1 entries: the two most likely and the chosen one (here, greedy, among them).
    assert.ok(Object.keys(top).length >= 1 && Object.keys(top).length <= 3);
    assert.equal(top[lp.tokens[i]], lp.token_logprobs[i]);
    assert.ok(Object.values(top).every((v) => v <= lp.token_logprobs[i]));
    // text_offset counts bytes: a token's string tells its length unless a byte of it was shown
    // as U+FFFD.
    if (i === 0) assert.equal(lp.text_offset[0], 0);
    else if (!lp.tokens[i - 1].includes('\ufffd'))
      assert.equal(lp.text_offset[i] - lp.text_offset[i - 1], Buffer.byteLength(lp.tokens[i - 1], 'utf8'));
    else assert.ok(lp.text_offset[i] > lp.text_offset[i - 1]);
  }
  const stream = await client.completions.create({ model: modelId, prompt: question, max_tokens: 8, stop: [],
                                                   logprobs: 2, stream: true });
  const tokens = [], logprobs = [], offsets = [];
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      if (!c.logprobs) continue;
      tokens.push(...c.logprobs.tokens);
      logprobs.push(...c.logprobs.token_logprobs);
      offsets.push(...c.logprobs.text_offset);
    }
  }
  assert.deepEqual(tokens, lp.tokens);
  assert.deepEqual(logprobs, lp.token_logprobs);
  assert.deepEqual(offsets, lp.text_offset, 'text_offset continues across chunks');
});

await check('errors in OpenAI shape', async () => {
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [] }), 400,
                       'invalid_field', 'messages');
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }],
                                                              temperature: 5 }), 400, 'invalid_field', 'temperature');
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }],
                                                              n: 2 }), 400, 'unsupported_value', 'n');
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }],
                                                              max_tokens: 100000 }), 400, 'limit_exceeded', 'max_tokens');
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [{ role: 'system', content: 'x' }] }),
                       400, 'missing_field', 'messages');
  await expectApiError(() => client.completions.create({ model: modelId, prompt: 'x', bogus: 1 }), 400,
                       'unknown_field', 'bogus');
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }],
                                                              top_logprobs: 2 }), 400, 'invalid_field', 'top_logprobs');
  await expectApiError(() => client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }],
                                                              logprobs: true, top_logprobs: 21 }),
                       400, 'limit_exceeded', 'top_logprobs');
  await expectApiError(() => client.completions.create({ model: modelId, prompt: 'x', logprobs: 21 }), 400,
                       'limit_exceeded', 'logprobs');
  const anonymous = new OpenAI({ baseURL: process.env.CEPE_URL, apiKey: 'wrong-key', maxRetries: 0 });
  await expectApiError(() => anonymous.models.list(), 401, 'unauthorized');
  await expectApiError(() => anonymous.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }] }),
                       401, 'unauthorized');
});

if (failures) {
  console.log(`${failures} check(s) failed`);
  process.exit(1);
}
console.log('all OpenAI client checks passed');
