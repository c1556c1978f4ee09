// Package storetest is the conformance suite every result store passes
// (results.Store): accepted records readable at once, from this process
// and others; events merged by job.Record.Apply's rule whatever their
// order, batching and the handle they arrive through; concurrent merges
// from two handles that lose no update; a late stale event that never
// undoes an outcome; watches woken by a merge in another process;
// expiry after the ttl; idempotency claims in every state, per client,
// under contention and after expiry; and Admit on a healthy store. A
// store's test calls Run with a Factory.
package storetest
