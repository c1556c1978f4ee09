package ratelimit

import "unsafe"

// unsafeString is a string over b's bytes, as fasthttp callers make them.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
