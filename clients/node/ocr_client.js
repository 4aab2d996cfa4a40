#!/usr/bin/env node
// Client of the OCR job queue in plain Node.js (18+), with no npm packages.
//
// It speaks Redis's protocol (RESP) over a socket and Celery's task message protocol
// v2, as docs/tasks.md describes: the file goes to Redis as a blob
// (SET ocr:blob:<id> <bytes> EX <ttl>), a message naming the task `ocr.document` and
// the blob is pushed onto the queue's list, and the result is read from the result
// backend key `celery-task-meta-<id>` (a cancelled job's, with the pages it kept, from
// `ocr:job:<id>:cancelled`: CANCELLED, as every client of the service says, where
// Celery's own state says REVOKED).
//
//   node clients/node/ocr_client.js [OPTIONS] FILE...      (--help lists the options)
//   node clients/node/ocr_client.js cancel [--redis URL] ID...
//
// Prints one JSON result per file, each with `filename` (or, with --no-wait, each
// job's id and file name), and a line on stderr naming the file of each job that did
// not succeed (a cancelled job's says how many pages it kept, as submit.py's `wait`). Exit status as submit.py's (USAGE below). REDIS_URL
// (redis://[:password@]host:port/db, or rediss:// for verified TLS; sentinel:// is refused
// with what to use instead) is the default for --redis,
// else the URL `make run` wrote to var/redis-url (its own Redis), as submit.py finds it.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const tls = require('tls');

const DEFAULT_QUEUE = 'ocr';
const CONTROL_QUEUE = 'ocr-control';
const BLOB_TTL_SECONDS = 3600;
const RESULT_TTL_SECONDS = 86400; // the workers' OCR_RESULT_TTL default
// Job priorities (worker_config.PRIORITIES) and kombu's Redis priority lists as the
// workers configure them (broker_transport_options `priority_steps`, kombu's default
// `sep`): a message of priority N > 0 waits in the list `<queue>\x06\x16<N>`; lower N
// is served first.
const PRIORITIES = { interactive: 0, normal: 3, batch: 6 };
const PRIORITY_STEPS = [0, 3, 6, 9];
const PRIORITY_SEP = '\x06\x16'; // kombu's default separator
// The worker check of submit.py: a job whose queue no live worker consumes for
// NO_WORKER_GRACE s ends the wait as PENDING with error no_worker (exit status 5).
const NO_WORKER_GRACE_MS = 6000;
const WORKER_RECHECK_MS = 15000; // between checks while a worker is there
const WORKERS_KEY = 'ocr:workers'; // presence records of live workers (tasks/state/keys.py)
// The input limit, as the workers' OCR_MAX_INPUT_MB (tasks/settings, default 64): a file
// larger than it is refused here, before anything is sent.
const DEFAULT_MAX_INPUT_MB = 64;
// Status names, as tasks/records/status.py owns them (tests/clients/test_node_client.py holds
// these tables to it): how a job ends and what a caller sees before (STATUS), and the
// states of Celery's result backend this client reads (CELERY).
const STATUS = Object.freeze({
  SUCCESS: 'SUCCESS', PARTIAL: 'PARTIAL', FAILURE: 'FAILURE', CANCELLED: 'CANCELLED',
  PENDING: 'PENDING', TIMEOUT: 'TIMEOUT',
});
const CELERY = Object.freeze({
  SUCCESS: 'SUCCESS', FAILURE: 'FAILURE', REVOKED: 'REVOKED', PROGRESS: 'PROGRESS',
});

class RedisError extends Error {}

// A file larger than the input limit; `code` is the service's error code.
class InputTooLarge extends Error {
  constructor(message) {
    super(message);
    this.code = 'input_too_large';
  }
}

// The input limit in megabytes when none is given: $OCR_MAX_INPUT_MB, else 64.
function defaultMaxInputMb() {
  return process.env.OCR_MAX_INPUT_MB || String(DEFAULT_MAX_INPUT_MB);
}

// The refusal of a `size`-byte input over `megabytes`, or null when within it (bytes
// as tasks/settings computes them).
function sizeRefusal(size, megabytes, name = 'the input') {
  if (size <= Math.floor(Number(megabytes) * 1024 * 1024)) return null;
  return new InputTooLarge(`${name} is larger than ${megabytes} MB (OCR_MAX_INPUT_MB); nothing was sent`);
}

// Why `url` cannot be used here, or null: Sentinel (sentinel://) is not spoken by this
// client; it takes the primary's own address.
function sentinelRefusal(url) {
  if (!/^sentinel:/i.test(String(url || ''))) return null;
  return 'sentinel:// is not supported by the Node client: give --redis (or REDIS_URL) the '
    + "primary's address as redis:// or rediss:// (a managed Redis's endpoint, or a proxy "
    + 'that follows the Sentinels), or send jobs through the HTTP API';
}

// A minimal Redis connection: commands in, RESP2 replies out, in order. rediss://
// verifies the server's certificate (against OCR_REDIS_TLS_CA_FILE when set).
class RedisConnection {
  constructor(url) {
    const refusal = sentinelRefusal(url);
    if (refusal) throw new RedisError(refusal);
    this.url = new URL(url || 'redis://127.0.0.1:6379/0');
    this.pending = [];
    this.buffer = Buffer.alloc(0);
    this.socket = null;
    this.db = Number((this.url.pathname || '/0').slice(1) || 0);
  }

  async connect() {
    const host = (this.url.hostname || '127.0.0.1').replace(/^\[|\]$/g, '');
    const port = Number(this.url.port || 6379);
    await new Promise((resolve, reject) => {
      const onError = (err) => reject(err);
      this.socket = this.url.protocol === 'rediss:'
        ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ...tlsFiles() },
          resolve)
        : net.createConnection({ host, port }, resolve);
      this.socket.once('error', onError);
    });
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.socket.on('error', (err) => this.failAll(err));
    this.socket.on('close', () => this.failAll(new RedisError('connection closed')));
    const password = decodeURIComponent(this.url.password || '');
    const user = decodeURIComponent(this.url.username || '');
    if (password) {
      await (user ? this.command('AUTH', user, password) : this.command('AUTH', password));
    }
    if (this.db) await this.command('SELECT', String(this.db));
    return this;
  }

  command(...args) {
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const arg of args) {
      const bytes = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg));
      parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(Buffer.concat(parts));
    });
  }

  onData(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const parsed = parseReply(this.buffer, 0);
      if (parsed === null) return;
      this.buffer = this.buffer.subarray(parsed.end);
      const waiter = this.pending.shift();
      if (!waiter) continue;
      if (parsed.value instanceof RedisError) waiter.reject(parsed.value);
      else waiter.resolve(parsed.value);
    }
  }

  failAll(err) {
    for (const waiter of this.pending.splice(0)) waiter.reject(err);
  }

  close() {
    if (this.socket) this.socket.end();
  }
}

// One RESP2 reply from `buf` at `start`: {value, end}, or null while incomplete.
function parseReply(buf, start) {
  const lineEnd = buf.indexOf('\r\n', start);
  if (lineEnd < 0) return null;
  const kind = String.fromCharCode(buf[start]);
  const line = buf.toString('utf8', start + 1, lineEnd);
  const next = lineEnd + 2;
  if (kind === '+') return { value: line, end: next };
  if (kind === '-') return { value: new RedisError(line), end: next };
  if (kind === ':') return { value: Number(line), end: next };
  if (kind === '$') {
    const size = Number(line);
    if (size < 0) return { value: null, end: next };
    if (buf.length < next + size + 2) return null;
    return { value: buf.subarray(next, next + size), end: next + size + 2 };
  }
  if (kind === '*') {
    const count = Number(line);
    if (count < 0) return { value: null, end: next };
    const items = [];
    let offset = next;
    for (let i = 0; i < count; i += 1) {
      const item = parseReply(buf, offset);
      if (item === null) return null;
      items.push(item.value);
      offset = item.end;
    }
    return { value: items, end: offset };
  }
  throw new RedisError(`unexpected reply type ${JSON.stringify(kind)}`);
}

// The Redis list entry of a Celery protocol v2 task message (kombu's Redis transport).
function buildMessage(taskId, taskName, kwargs, queue, shownKwargs, priority = PRIORITIES.normal) {
  const body = [[], kwargs, { callbacks: null, errbacks: null, chain: null, chord: null }];
  return {
    body: Buffer.from(JSON.stringify(body)).toString('base64'),
    'content-encoding': 'utf-8',
    'content-type': 'application/json',
    headers: {
      lang: 'js',
      task: taskName,
      id: taskId,
      shadow: null,
      eta: null,
      expires: null,
      group: null,
      group_index: null,
      retries: 0,
      timelimit: [null, null],
      root_id: taskId,
      parent_id: null,
      argsrepr: '()',
      kwargsrepr: JSON.stringify(shownKwargs),
      origin: `node-${process.pid}@${os.hostname()}`,
      ignore_result: false,
      // when it was sent: the age of the oldest waiting message (the metrics exporter)
      ocr_published: Date.now() / 1000,
    },
    properties: {
      correlation_id: taskId,
      reply_to: '',
      delivery_mode: 2,
      delivery_info: { exchange: '', routing_key: queue },
      priority,
      body_encoding: 'base64',
      delivery_tag: crypto.randomUUID(),
    },
  };
}

// The CA and client certificate files of OCR_REDIS_TLS_* (the Python side's settings).
function tlsFiles() {
  const files = {};
  const named = { ca: 'OCR_REDIS_TLS_CA_FILE', cert: 'OCR_REDIS_TLS_CERT_FILE', key: 'OCR_REDIS_TLS_KEY_FILE' };
  for (const [option, env] of Object.entries(named)) {
    if (process.env[env]) files[option] = fs.readFileSync(process.env[env]);
  }
  return files;
}

// With OCR_REDIS_MIN_REPLICAS (replicas behind the address), a job is sent once that many
// replicas hold its message (WAIT, on the connection that wrote it: every earlier write
// of the job is covered). Short of them, the job is withdrawn (should its message
// survive, it ends CANCELLED unread) and a `transient` error asks to send it again.
async function keptOnReplicas(redis, taskId) {
  const replicas = Number(process.env.OCR_REDIS_MIN_REPLICAS || 0);
  if (!(replicas > 0)) return;
  const seconds = Number(process.env.OCR_REDIS_REPLICA_TIMEOUT || 2);
  const reached = await redis.command('WAIT', String(replicas), String(Math.max(1, Math.round(seconds * 1000))));
  if (reached >= replicas) return;
  await redis.command('HSET', `ocr:job:${taskId}`, 'cancelled', '1');
  await redis.command('EXPIRE', `ocr:job:${taskId}`, String(RESULT_TTL_SECONDS));
  const err = new RedisError(`transient: job ${taskId} reached ${reached} of the ${replicas} Redis replica(s) required (OCR_REDIS_MIN_REPLICAS) within ${seconds} s; send it again`);
  err.code = 'transient';
  throw err;
}

// Wake one idle worker of `queue` (its doorbell, `{<queue>}:wake`: one item at most,
// for a minute). Workers take a message in one atomic step and wait on doorbells when
// their queues are empty; a message pushed without a ring waits for the end of an idle
// worker's wait (up to 10 s).
async function ring(redis, queue) {
  const key = `{${queue}}:wake`;
  await redis.command('LPUSH', key, '1');
  await redis.command('LTRIM', key, '0', '0');
  await redis.command('PEXPIRE', key, '60000');
}

// The Redis list a message of `priority` waits in (kombu's Redis transport).
function queueList(queue, priority) {
  const step = PRIORITY_STEPS.filter((s) => s <= priority).pop() || 0;
  return step ? `${queue}${PRIORITY_SEP}${step}` : queue;
}

// The queue a job is sent to: `queue`, else the engine's (`ocr-<engine>`), else `ocr`;
// the same routing as the Python client.
function jobQueue({ queue, engine } = {}) {
  return queue || (engine ? `${DEFAULT_QUEUE}-${engine}` : DEFAULT_QUEUE);
}

// Upload `data` as a blob and enqueue `ocr.document`; resolves to the job id.
// `priority` is interactive, normal (default) or batch. Data larger than `maxInputMb`
// (default $OCR_MAX_INPUT_MB, else 64) is refused with InputTooLarge before sending.
// `resultUrl` (s3://bucket/prefix/) has the workers write the result there too.
async function submit(redis, data, options = {}) {
  const {
    queue, priority = 'normal', blobTtl = BLOB_TTL_SECONDS,
    maxInputMb = defaultMaxInputMb(), ...rest
  } = options;
  if (!(priority in PRIORITIES)) {
    throw new Error(`priority must be one of ${Object.keys(PRIORITIES).join(', ')}`);
  }
  const refusal = sizeRefusal(data.length, maxInputMb);
  if (refusal) throw refusal;
  const blob = `ocr:blob:${crypto.randomBytes(16).toString('hex')}`;
  await redis.command('SET', blob, data, 'EX', String(blobTtl));
  return enqueueDocument(redis, { blob }, { queue, priority, ...rest });
}

// Enqueue `ocr.document` for an object the workers read themselves (issue 32):
// `url` is s3://bucket/key or https://host/path, under the workers' OCR_ALLOWED_URLS.
// Nothing is uploaded; the size limit is the workers' (HEAD, then counted while read).
async function submitUrl(redis, url, options = {}) {
  if (!isUrl(url)) throw new Error('url must be an s3:// or https:// URL');
  const { priority = 'normal' } = options;
  if (!(priority in PRIORITIES)) {
    throw new Error(`priority must be one of ${Object.keys(PRIORITIES).join(', ')}`);
  }
  const filename = options.filename || url.split('?')[0].replace(/\/+$/, '').split('/').pop();
  return enqueueDocument(redis, { url: String(url) }, { ...options, filename, priority });
}

function isUrl(value) {
  return /^(s3|https?):\/\//i.test(String(value));
}

async function enqueueDocument(redis, source, options) {
  const { queue, priority = 'normal', resultUrl, ...rest } = options;
  const taskId = crypto.randomUUID();
  const kwargs = { ...source };
  for (const name of ['filename', 'engine', 'pages', 'password', 'output', 'mode', 'lang']) {
    if (rest[name] !== undefined && rest[name] !== null) kwargs[name] = String(rest[name]);
  }
  if (resultUrl !== undefined && resultUrl !== null) kwargs.result_url = String(resultUrl);
  const shown = { ...kwargs };
  if (shown.password !== undefined) shown.password = '***';
  const target = jobQueue({ queue, engine: kwargs.engine });
  const level = PRIORITIES[priority];
  const message = buildMessage(taskId, 'ocr.document', kwargs, target, shown, level);
  await redis.command('LPUSH', queueList(target, level), JSON.stringify(message));
  await ring(redis, target);
  await keptOnReplicas(redis, taskId);
  return taskId;
}

// Cancel a job with the public task `ocr.cancel` (kwargs job_id) on the control queue,
// which every worker and the control worker serve; resolves to the cancel task's id.
// Its result ({job_id, status: cancelled|already_ended}) can be waited for like a job's.
async function cancel(redis, jobId) {
  const taskId = crypto.randomUUID();
  const kwargs = { job_id: String(jobId) };
  const message = buildMessage(taskId, 'ocr.cancel', kwargs, CONTROL_QUEUE, kwargs,
    PRIORITIES.interactive);
  await redis.command('LPUSH', queueList(CONTROL_QUEUE, PRIORITIES.interactive),
    JSON.stringify(message));
  await ring(redis, CONTROL_QUEUE);
  return taskId;
}

// The public error of a FAILURE stored by Celery: {code, message, retryable}.
function errorInfo(exc) {
  const args = Array.isArray(exc.exc_message) ? exc.exc_message : [exc.exc_message];
  if (exc.exc_module === 'tasks.errors' && args.length === 2) {
    return { code: String(args[0]), message: String(args[1]), retryable: args[0] === 'transient' };
  }
  if (['TimeLimitExceeded', 'SoftTimeLimitExceeded'].includes(exc.exc_type)) {
    return { code: 'timeout', message: 'the job ran past its time limit', retryable: false };
  }
  if (exc.exc_type === 'WorkerLostError') {
    return { code: 'worker_lost', message: 'the worker child running the job died', retryable: false };
  }
  return { code: 'internal_error', message: `unexpected ${exc.exc_type}`, retryable: false };
}

// A job Celery revoked that has no cancel record yet: expired at its deadline (never
// cancelled, sent with one: FAILURE deadline_exceeded, as the worker ends it) or
// cancelled. The rule of tasks/state/job_state.py (expired_before_start).
async function revokedResult(redis, taskId) {
  const [asked, deadline] = await redis.command('HMGET', `ocr:job:${taskId}`, 'cancelled', 'deadline');
  if (asked === null && deadline !== null && deadline.length) {
    return {
      id: taskId, status: STATUS.FAILURE,
      error: { code: 'deadline_exceeded', message: "the job's deadline passed before it started", retryable: false },
    };
  }
  return { id: taskId, status: STATUS.CANCELLED, pages: [], text: '' };
}

// Poll the result backend until the job ends; resolves to its result (or FAILURE/TIMEOUT).
// A cancelled job's result (CANCELLED, with the pages it finished) is kept beside
// Celery's state, which says REVOKED: both are read in one round trip, and the
// cancel's result wins, as in the Python client.
async function wait(redis, taskId, { timeout = 120, poll = 200, onProgress } = {}) {
  const deadline = Date.now() + timeout * 1000;
  for (;;) {
    const [raw, kept] = await redis.command('MGET', `celery-task-meta-${taskId}`, `ocr:job:${taskId}:cancelled`);
    if (kept !== null) return JSON.parse(kept.toString('utf8'));
    if (raw !== null) {
      const meta = JSON.parse(raw.toString('utf8'));
      if (meta.status === CELERY.SUCCESS) return meta.result;
      if (meta.status === CELERY.FAILURE) {
        return { id: taskId, status: STATUS.FAILURE, error: errorInfo(meta.result || {}) };
      }
      if (meta.status === CELERY.REVOKED) return revokedResult(redis, taskId);
      if (meta.status === CELERY.PROGRESS && onProgress) onProgress(meta.result);
    }
    if (Date.now() >= deadline) {
      return { id: taskId, status: STATUS.TIMEOUT, error: { code: 'wait_timeout', retryable: true, message: 'the job had not finished when waiting stopped' } };
    }
    await new Promise((resolve) => setTimeout(resolve, poll));
  }
}

// The queues each live worker consumes, {nodename: [queue, ...]}: the presence records the worker
// parents keep in the hash ocr:workers (tasks/state/liveness.py; each refreshed on every
// heartbeat, live until its `expires`). One HGETALL, no broadcast: the same answer as
// submit.py's and the HTTP API's readiness.
async function liveQueues(redis) {
  const live = {};
  for (const [name, record] of await livePresence(redis)) {
    if (Array.isArray(record.queues)) live[name] = record.queues.map(String);
  }
  return live;
}

// The presence records of WORKERS_KEY that have not expired, as [worker name, record].
async function livePresence(redis) {
  const flat = (await redis.command('HGETALL', WORKERS_KEY)) || [];
  const now = Date.now() / 1000;
  const live = [];
  for (let i = 0; i + 1 < flat.length; i += 2) {
    let record;
    try {
      record = JSON.parse(flat[i + 1].toString('utf8'));
    } catch (err) {
      continue; // not a presence record
    }
    if (record && Number(record.expires) >= now) live.push([flat[i].toString('utf8'), record]);
  }
  return live;
}

// The engines a job may name, as the live workers' registries know them (their presence
// records), and those a live worker serves by queue (`ocr-<engine>`); empty when no
// worker is live (nothing can be told yet: the wait reports no_worker).
async function knownEngines(redis) {
  const engines = new Set();
  for (const [, record] of await livePresence(redis)) {
    for (const name of Array.isArray(record.engines) ? record.engines : []) engines.add(String(name));
    for (const queue of Array.isArray(record.queues) ? record.queues : []) {
      if (String(queue).startsWith(`${DEFAULT_QUEUE}-`) && queue !== CONTROL_QUEUE) {
        engines.add(String(queue).slice(DEFAULT_QUEUE.length + 1));
      }
    }
  }
  return [...engines];
}

// The job's error when no live worker consumes its queue (submit.py's no_worker).
function noWorkerRecord(job) {
  return {
    id: job.id, status: STATUS.PENDING, filename: job.filename,
    error: { code: 'no_worker', message: `no live worker consumes queue '${job.queue}'`, retryable: true },
  };
}

// Wait for `jobs` ({id, filename, queue}) as submit.py does: before waiting and every
// WORKER_RECHECK_MS the workers are asked which queues they consume; a job whose queue
// none consumes for NO_WORKER_GRACE_MS is answered PENDING with error no_worker instead
// of being waited for until --timeout. Resolves to {id: result}.
async function waitAll(redis, jobs, { timeout = 120, poll = 200 } = {}) {
  const results = {};
  const pending = new Map(jobs.map((job) => [job.id, job]));
  const stop = Date.now() + timeout * 1000;
  let nextCheck = Date.now();
  let orphanedSince = null;
  while (pending.size) {
    for (const job of [...pending.values()]) {
      const result = await wait(redis, job.id, { timeout: 0 });
      if (result.status !== STATUS.TIMEOUT || Date.now() >= stop) {
        results[job.id] = result;
        pending.delete(job.id);
      }
    }
    const now = Date.now();
    if (pending.size && now >= nextCheck) {
      const live = new Set(Object.values(await liveQueues(redis)).flat());
      const orphans = [...pending.values()].filter((job) => !live.has(job.queue));
      orphanedSince = orphans.length ? (orphanedSince || now) : null;
      if (orphanedSince !== null && Date.now() - orphanedSince >= NO_WORKER_GRACE_MS) {
        for (const job of orphans) {
          results[job.id] = noWorkerRecord(job);
          pending.delete(job.id);
        }
      }
      nextCheck = Date.now() + (orphans.length ? 2000 : WORKER_RECHECK_MS);
    }
    if (pending.size) await new Promise((resolve) => setTimeout(resolve, poll));
  }
  return results;
}

const USAGE = `usage: node clients/node/ocr_client.js [OPTIONS] FILE...
       node clients/node/ocr_client.js cancel [--redis URL] ID...

Send images and PDFs to the OCR service (task ocr.document) and print one JSON result
per file, each with its filename.

options:
  --redis URL        the broker's Redis (default: $REDIS_URL, else make run's var/redis-url,
                     else redis://127.0.0.1:6379/0)
  --engine NAME      tesseract, rapidocr, mlx-vlm or vlm-api (default: the worker's); the job goes to ocr-NAME
  --pages RANGE      pages to read, e.g. 1-3,7
  --output FORMAT    text, markdown, json or pdf
  --mode MODE        PDFs: auto (text layer where present), ocr, text
  --lang LANG        tesseract languages, e.g. vie or ell+eng, or auto: each page in its
                     own script's languages (default: the worker's OCR_LANG, auto unless set)
  --password PW      password of an encrypted PDF
  --priority P       interactive, normal (default) or batch
  --queue NAME       send to this queue instead of the engine's
  --timeout S        stop waiting after S seconds (default 120; the jobs go on)
  --max-input-mb MB  refuse a larger file without sending it, as input_too_large (default:
                     $OCR_MAX_INPUT_MB, else 64, the workers' default limit)
  --result-url URL   s3://bucket/prefix/ the workers write each result to (the result's
                     result_object names the object)
FILE may be an s3://bucket/key or https:// URL: the workers read it themselves (under
their OCR_ALLOWED_URLS); nothing is uploaded.
  --no-wait          print each job's id and file name, and return
  -h, --help         show this help

cancel sends the task ocr.cancel for each job id and prints {"id", "status"}:
cancelled, already_ended, or requested (no worker answered within 30 s).

examples:
  node clients/node/ocr_client.js --engine tesseract scan.png report.pdf
  node clients/node/ocr_client.js --result-url s3://results/ocr/ s3://invoices/2026/a.pdf
  node clients/node/ocr_client.js cancel 5b0c2a1e-...

exit status (several jobs: the most severe, in this order):
  5  service unreachable: Redis did not answer, or no live worker consumes the queue
     (checked as submit.py does: a job's queue without a worker for 6 s; the job stays queued)
  1  a job failed
  6  --timeout passed with jobs still running (they go on)
  4  a job was cancelled
  3  a job was PARTIAL (some pages failed)
  0  every job succeeded
  2  usage error (bad option or no file; nothing was sent)
`;
const SEVERITY = [5, 1, 6, 4, 3, 0];
const EXIT_BY_STATUS = {
  [STATUS.SUCCESS]: 0, [STATUS.PARTIAL]: 3, [STATUS.CANCELLED]: 4, [STATUS.TIMEOUT]: 6,
  [STATUS.FAILURE]: 1, [STATUS.PENDING]: 5,
};
const UNREACHABLE_HINT = 'start the service with `make run`, or point REDIS_URL (or --redis) '
  + "at the broker's Redis";
const NO_WORKER_HINT = 'start a worker that consumes that queue (`make run` starts one for '
  + '`ocr` and `ocr-tesseract`; docs/vlm.md: a VLM worker); the jobs stay queued';

class UsageError extends Error {}

// The Redis `make run` started (var/redis-url under the current directory), or undefined.
function runRedisUrl() {
  try {
    return fs.readFileSync(path.join('var', 'redis-url'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

function parseArgs(argv) {
  const options = {
    redis: process.env.REDIS_URL || runRedisUrl(), timeout: 120, wait: true, files: [],
    'max-input-mb': defaultMaxInputMb(),
  };
  const valued = ['redis', 'engine', 'pages', 'output', 'mode', 'lang', 'password', 'priority',
    'queue', 'timeout', 'max-input-mb', 'result-url'];
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') options.help = true;
    else if (arg === '--no-wait') options.wait = false;
    else if (arg.startsWith('--') && valued.includes(arg.slice(2))) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      options[arg.slice(2)] = argv[i + 1];
      i += 1;
    } else if (arg.startsWith('-') && arg !== '-') throw new UsageError(`unknown option ${arg} (--help lists them)`);
    else options.files.push(arg);
  }
  if (options.help) return options;
  if (!options.files.length) throw new UsageError('give at least one file (--help shows how)');
  options.timeout = Number(options.timeout);
  if (!(options.timeout > 0)) throw new UsageError('--timeout must be a positive number of seconds');
  if (!(Number(options['max-input-mb']) > 0)) {
    throw new UsageError('--max-input-mb (or OCR_MAX_INPUT_MB) must be a positive number of megabytes');
  }
  return options;
}

async function cancelMain(argv) {
  const ids = argv.filter((a) => !a.startsWith('--'));
  const at = argv.indexOf('--redis');
  const url = at >= 0 && at + 1 < argv.length ? argv[at + 1]
    : process.env.REDIS_URL || runRedisUrl();
  if (at >= 0) ids.splice(ids.indexOf(argv[at + 1]), 1);
  if (!ids.length) {
    process.stderr.write('ocr_client: cancel: give at least one job id\n');
    return 2;
  }
  const redis = await new RedisConnection(url).connect();
  try {
    for (const id of ids) {
      const answer = await wait(redis, await cancel(redis, id), { timeout: 30 });
      const status = answer.status === STATUS.TIMEOUT ? 'requested' : answer.status;
      process.stdout.write(`${JSON.stringify({ id, status })}\n`);
    }
    return 0;
  } finally {
    redis.close();
  }
}

// The URL without its password, to show in messages.
function maskedUrl(url) {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch (err) {
    return String(url);
  }
}

// 1,2,3,7 -> 1-3,7 (as submit.py writes page lists).
function pageRanges(numbers) {
  const runs = [];
  for (const n of [...new Set(numbers)].sort((a, b) => a - b)) {
    const last = runs[runs.length - 1];
    if (last && last[1] === n - 1) last[1] = n;
    else runs.push([n, n]);
  }
  return runs.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(',');
}

// What a cancelled job kept, as submit.py's `wait` says it: how many pages (of the
// `total` it was to read, when known) and where they are.
function keptPages(result, total) {
  const pages = (result.pages || []).map((p) => p.number);
  if (!pages.length) return ': no page had finished';
  const of = total >= pages.length ? ` of ${total}` : '';
  return `: ${pages.length}${of} pages kept (pages ${pageRanges(pages)}; its JSON result on stdout has them)`;
}

// The pages a job was to read (its control hash's `total`, written with its progress), or 0.
async function plannedPages(redis, taskId) {
  const raw = await redis.command('HGET', `ocr:job:${taskId}`, 'total');
  return raw === null ? 0 : Number(raw.toString('utf8')) || 0;
}

// The stderr line of a result that is not a plain success, naming its file; `total`:
// the pages a cancelled job was to read.
function problemLine(result, total = 0) {
  const name = result.filename || result.id;
  const error = result.error || {};
  const written = (result.result_object || {}).error;
  if (written) {  // the result is stored; only its copy at --result-url failed
    const rest = problemLine({ ...result, result_object: undefined }, total);
    return `${name}: ${written.code}: ${written.message} (the result is kept in the result store)${rest ? `\n${rest}` : ''}`;
  }
  if (result.status === STATUS.SUCCESS) return null;
  if (result.status === STATUS.PARTIAL) {
    return (result.failed_pages || []).map((p) => `${name}: PARTIAL: page ${p.number} failed: ${p.code}: ${p.message}`).join('\n') || null;
  }
  if (result.status === STATUS.CANCELLED) return `${name}: CANCELLED${keptPages(result, total)}`;
  if (result.status === STATUS.TIMEOUT) return `${name}: still running when --timeout passed (job ${result.id})`;
  if (result.status === STATUS.PENDING) return `${name}: ${error.code}: ${error.message} (job ${result.id} stays queued)`;
  return `${name}: ${result.status} ${error.code}: ${error.message}`;
}

function exitStatus(results) {
  const codes = new Set(results.map((r) => (r.status in EXIT_BY_STATUS ? EXIT_BY_STATUS[r.status] : 1)));
  return SEVERITY.find((code) => codes.has(code)) || 0;
}

async function main() {
  if (process.argv[2] === 'cancel') return cancelMain(process.argv.slice(3));
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`ocr_client: ${err.message}\n`);
    return 2;
  }
  if (options.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const url = options.redis || 'redis://127.0.0.1:6379/0';
  if (sentinelRefusal(url)) {
    process.stderr.write(`ocr_client: ${sentinelRefusal(url)}\n`);
    return 2;
  }
  let redis;
  try {
    redis = await new RedisConnection(url).connect();
  } catch (err) {
    process.stderr.write(`ocr_client: cannot reach Redis at ${maskedUrl(url)} (${err.message}): ${UNREACHABLE_HINT}\n`);
    return 5;
  }
  try {
    if (options.engine !== undefined && !options.queue) {
      const engines = await knownEngines(redis);
      if (engines.length && !engines.includes(options.engine)) {
        process.stderr.write(`ocr_client: unknown engine '${options.engine}'; choose one of ${engines.join(', ')} (nothing was sent)\n`);
        return 2;
      }
    }
    const jobs = []; // {id, filename} or a FAILURE record for a file that was not sent
    for (const file of options.files) {
      if (isUrl(file)) {
        const id = await submitUrl(redis, file, {
          engine: options.engine, pages: options.pages, output: options.output,
          mode: options.mode, lang: options.lang, password: options.password,
          priority: options.priority, queue: options.queue, resultUrl: options['result-url'],
        });
        jobs.push({ filename: file.split('?')[0].replace(/\/+$/, '').split('/').pop(), queue: jobQueue(options), id });
        continue;
      }
      const filename = path.basename(file);
      const limit = options['max-input-mb'];
      let data;
      try {
        // The size first: a file over the limit is neither read nor sent.
        const refusal = sizeRefusal(fs.statSync(file).size, limit, filename);
        if (refusal) {
          jobs.push({ id: null, status: STATUS.FAILURE, filename, error: { code: refusal.code, message: refusal.message, retryable: false } });
          continue;
        }
        data = fs.readFileSync(file);
      } catch (err) {
        jobs.push({ id: null, status: STATUS.FAILURE, filename, error: { code: 'input_not_found', message: `cannot read ${filename}`, retryable: false } });
        continue;
      }
      jobs.push({ filename, queue: jobQueue(options), id: await submit(redis, data, {
        filename, engine: options.engine, pages: options.pages,
        output: options.output, mode: options.mode, lang: options.lang,
        password: options.password, priority: options.priority, queue: options.queue,
        maxInputMb: limit,
        resultUrl: options['result-url'],
      }) });
    }
    const sent = jobs.filter((job) => job.status === undefined);
    const ended = options.wait ? await waitAll(redis, sent, { timeout: options.timeout }) : {};
    const results = [];
    for (const job of jobs) {
      let result = job;
      if (job.status === undefined) {
        if (!options.wait) {
          process.stdout.write(`${job.id}\t${job.filename}\n`);
          continue;
        }
        result = ended[job.id];
        if (!result.filename) result = { ...result, filename: job.filename };
      }
      results.push(result);
      if (options.wait) process.stdout.write(`${JSON.stringify(result)}\n`);
      const kept = result.status === STATUS.CANCELLED && (result.pages || []).length;
      const line = problemLine(result, kept ? await plannedPages(redis, result.id) : 0);
      if (line) process.stderr.write(`${line}\n`);
    }
    if (results.some((r) => r.status === STATUS.PENDING)) process.stderr.write(`ocr_client: ${NO_WORKER_HINT}\n`);
    return exitStatus(results);
  } catch (err) {
    if (err instanceof RedisError || err.code === 'ECONNRESET' || err.code === 'EPIPE') {
      process.stderr.write(`ocr_client: lost Redis at ${maskedUrl(url)} (${err.message}): ${UNREACHABLE_HINT}\n`);
      return 5;
    }
    throw err;
  } finally {
    redis.close();
  }
}

module.exports = {
  RedisConnection, knownEngines, RedisError, InputTooLarge, buildMessage, queueList, jobQueue, submit,
  submitUrl, wait, waitAll, liveQueues, cancel, errorInfo, problemLine, PRIORITIES, STATUS,
  CELERY,
};

if (require.main === module) {
  main().then((code) => { process.exitCode = code; }, (err) => {
    process.stderr.write(`ocr_client: ${err.message}\n`);
    process.exitCode = 1;
  });
}
