// Package watch is the in-process half of results.Store's Watch, shared by
// both stores: a Hub of channels per record id, closed when a store learns
// the record changed (its own Apply, or a Redis announcement from another
// process).
package watch
