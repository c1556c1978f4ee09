// Package wire is how sluice's requests and events travel through the
// broker: it turns a job.Request or job.Event into a broker.Message and
// back. It is the only package that knows the message format: ingress and
// dead-letter replay (workers.DeadLetters) encode requests, workers decode
// them and encode events, the collector decodes events.
//
// A request travels as its client's body, unchanged, in the message body,
// keyed by the request id; everything else rides in "sluice-" headers
// (HID, HRoute, ...), so other tools reading the topics see the body as the
// client sent it. The client's forwarded headers are one header, a JSON
// array of [name, value] pairs in order; its attempt log so far
// (HAttemptLog, added after the others) is a JSON array of the entries a
// poll shows, and a log that cannot be read is dropped rather than the
// request. Times are RFC 3339 with nanoseconds, in UTC; counts are
// decimal. Optional headers are left out when empty.
//
// An event travels as a JSON object in the message body, keyed by the
// request id, with no headers; its attempt log, when it has one, is the
// "attempt_log" field in the poll's shape. JSON is written without HTML
// escaping (a backend's "<" stays one byte) and read leniently: unknown
// fields are ignored.
//
// Requests that arrive together may travel packed in one message (group
// commit, Pack and Unpack): the header HBatch gives their number, and the
// body holds each one's key, headers and body as length-prefixed strings.
// A request alone is never packed.
//
// The format is a contract with messages already waiting in users'
// queues: a sluice upgraded while requests wait must still read them.
// Change it only by adding optional fields; the golden tests pin it.
package wire
