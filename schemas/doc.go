// Package schemas compiles the JSON Schemas that routes name in their config
// and checks request bodies against them. It is a leaf: it knows nothing of
// HTTP or brokers. The folder also holds the example schemas that the demo
// config uses (log.json).
package schemas
