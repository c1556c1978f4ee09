// Package ingress is sluice's client-facing HTTP front end, on fasthttp: it
// matches routes, checks each request (method, size, JSON Schema, backlog),
// writes it to the broker and answers 202 with an id; and it answers polls
// from the result store. No fasthttp type leaves this package, and no
// request memory outlives its handler: bodies and headers are copied.
package ingress
