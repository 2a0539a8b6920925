// content-inspector: a Weir plugin in JavaScript.
//
// At DATA it reads the Subject and the attachments' file names through the
// message resource (metadata only: no `body` grant needed), then
// - refuses the message with 550 5.7.1 if an attachment has a listed
//   extension;
// - otherwise adds a header saying what it saw, and tags and scores the
//   message when the subject holds one of the listed keywords.
//
// Its configuration (`content-inspector.toml`; the plugin receives it as
// JSON):
//
//   blocked_extensions = ["exe", "scr", "js"]
//   subject_keywords = ["invoice", "payment"]
//   keyword_score = 2.0
//   header = "X-Content-Inspected"   # "": no header
//
// Grant it needs: `modify` (the header, the tag and the score).

import { log } from 'weir:plugin/log@0.2.0';

const KNOWN = ['blocked_extensions', 'subject_keywords', 'keyword_score', 'header'];

// What `init` derived from the configuration. Every instance gets `init`
// before it serves, so this is set whenever a hook runs.
let settings = null;

function strings(config, key) {
  const value = config[key] ?? [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw `${key} must be a list of strings`;
  }
  return value.map((v) => v.toLowerCase().replace(/^\./, ''));
}

function parse(text) {
  const config = JSON.parse(text);
  const unknown = Object.keys(config).filter((k) => !KNOWN.includes(k));
  if (unknown.length > 0) {
    throw `unknown keys: ${unknown.join(', ')}`;
  }
  const score = config.keyword_score ?? 1.0;
  if (typeof score !== 'number' || !Number.isFinite(score)) {
    throw 'keyword_score must be a number';
  }
  const header = config.header ?? 'X-Content-Inspected';
  // A header field name (RFC 5322 3.6.8): printable ASCII but ":".
  if (typeof header !== 'string' || (header !== '' && !/^[!-9;-~]+$/.test(header))) {
    throw 'header must be a header field name, or "" for none';
  }
  return {
    blockedExtensions: strings(config, 'blocked_extensions'),
    subjectKeywords: strings(config, 'subject_keywords'),
    keywordScore: score,
    header,
  };
}

// Trailing dots and spaces are dropped first, as Windows does when it
// opens the file: "Setup.exe. " is an .exe.
function extension(name) {
  const trimmed = name.replace(/[. ]+$/, '');
  const dot = trimmed.lastIndexOf('.');
  return dot < 0 ? '' : trimmed.slice(dot + 1).toLowerCase();
}

const CONTINUE = { tag: 'continue' };

// An export returning `result<_, string>` returns normally for `ok`; what
// it throws becomes the `err` text, which the gateway logs.
export function init(config) {
  try {
    settings = parse(config);
  } catch (e) {
    throw `content-inspector: ${e}`;
  }
}

// Hook names are the WIT enum's cases, as strings.
export function hooks() {
  return ['data'];
}

export function onData(msg) {
  const subject = msg.header('subject')[0] ?? '';
  const names = msg
    .parts()
    .filter((part) => part.filename !== undefined)
    .map((part) => part.filename);

  const refused = names.find((name) => settings.blockedExtensions.includes(extension(name)));
  if (refused !== undefined) {
    log('info', `refusing attachment ${refused}`);
    return {
      verdict: {
        tag: 'reject',
        val: {
          code: 550,
          enhanced: '5.7.1',
          text: `Attachments of type .${extension(refused)} are not accepted`,
        },
      },
      mutations: [],
    };
  }

  const lower = subject.toLowerCase();
  const hits = settings.subjectKeywords.filter((k) => lower.includes(k));
  const mutations = [];
  if (settings.header !== '') {
    mutations.push({
      tag: 'add-header',
      val: {
        name: settings.header,
        value: `attachments=${names.length}; keywords=${hits.join(',') || 'none'}`,
      },
    });
  }
  if (hits.length > 0) {
    mutations.push({ tag: 'tag', val: 'subject-keyword' });
    mutations.push({ tag: 'add-score', val: settings.keywordScore * hits.length });
  }
  return { verdict: CONTINUE, mutations };
}

// The hooks it does not name are never called; the contract still wants
// every export.
export function onConnect() {
  return CONTINUE;
}
export function onHelo(name) {
  return CONTINUE;
}
export function onMailFrom(sender) {
  return CONTINUE;
}
export function onRcpt(recipient) {
  return CONTINUE;
}
export function onPreDelivery(destination, msg) {
  return { verdict: CONTINUE, mutations: [] };
}
export function onDeliveryResult(outcomes) {}
