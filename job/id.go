package job

import (
	"crypto/rand"
	"encoding/base64"
	"time"
)

// NewID returns a request id: URL-safe, 144 bits — the acceptance time in
// milliseconds (48 bits, so stores that key by the decoded id append
// instead of scattering writes) and 96 random bits, which make it
// unguessable.
func NewID() string { return NewIDAt(time.Now()) }

// NewIDAt is NewID for an id accepted at t.
func NewIDAt(t time.Time) string {
	var b [18]byte
	ms := uint64(t.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// IssuedAt reads the acceptance time an id made by NewID starts with.
func IssuedAt(id string) (time.Time, bool) {
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil {
		return time.Time{}, false
	}
	return IssuedAtRaw(b)
}

// IssuedAtRaw is IssuedAt of an id already decoded from base64.
func IssuedAtRaw(b []byte) (time.Time, bool) {
	if len(b) != 18 {
		return time.Time{}, false
	}
	var ms int64
	for _, c := range b[:6] {
		ms = ms<<8 | int64(c)
	}
	return time.UnixMilli(ms), true
}
