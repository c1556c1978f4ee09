// Package embedded is sluice's default broker: a NATS JetStream server running
// inside the sluice process, with file storage and no network listener, and
// one in-process client connection. Each topic is a stream: requests and
// results are work queues (an acknowledged message is removed), dead letters
// are kept until replayed.
//
// The embedded broker belongs to one process. When it opens, it recreates its
// consumers so that every message the previous process had not acknowledged
// (it crashed, or was killed) is delivered again at once.
package embedded
