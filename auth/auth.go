package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/config"
)

// MaxTokenSize caps a credential: a longer Bearer value is refused with
// "token too large" before anything parses it, a longer X-API-Key as
// invalid. Real JWTs stay well under it; 8 KiB is also the header limit
// of most proxies.
const MaxTokenSize = 8 << 10

// Error is a refused credential. Authenticate returns the same *Error for
// the same reason every time, so a refusal costs no allocation: treat it
// as read-only.
type Error struct {
	// Status is 401, or 503 when the JWKS URL could not be fetched and
	// no key is cached, so no token can be checked.
	Status int
	// Detail is safe to show the client: it never holds the credential,
	// a URL or a host.
	Detail string
	// Challenge is the WWW-Authenticate value for a 401 (RFC 6750):
	// `Bearer realm="sluice"` when no credential came, else with
	// error="invalid_token" and Detail as error_description. Empty for 503.
	Challenge string
	// RetryAfter is in seconds, for 503.
	RetryAfter int
}

func (e *Error) Error() string { return e.Detail }

// refused builds a 401 whose challenge names the problem (RFC 6750 §3.1:
// invalid_token for a credential that came and does not hold).
func refused(detail string) *Error {
	return &Error{Status: http.StatusUnauthorized, Detail: detail,
		Challenge: `Bearer realm="sluice", error="invalid_token", error_description="` + detail + `"`}
}

// The refusals. A request without credentials gets a challenge without an
// error code (RFC 6750 §3.1).
var (
	errMissing = &Error{Status: http.StatusUnauthorized, Detail: "missing credentials", Challenge: `Bearer realm="sluice"`}
	errScheme  = &Error{Status: http.StatusUnauthorized, Detail: "unsupported authorization scheme, use Bearer", Challenge: `Bearer realm="sluice"`}
	errInvalid = refused("invalid credentials")
	errTooBig  = refused("token too large")
)

// Authenticator names the client of a request from its X-API-Key or
// Authorization header. It is safe for concurrent use.
type Authenticator struct {
	keys   map[[sha256.Size]byte]string // the client, by the SHA-256 of its key
	jwt    *verifier                    // nil without auth.jwt
	cancel context.CancelFunc           // ends the JWKS refresh
}

// New builds the authenticator of cfg; cfg nil (auth off) gives nil, nil.
// dir resolves a relative jwks_file. A jwks_file must hold a usable key. A
// jwks_url is fetched before New returns (bounded by a short timeout) and
// then refreshed in the background until ctx ends or Close is called; a
// URL that does not answer does not fail New: tokens get 503 until it
// does.
func New(ctx context.Context, cfg *config.Auth, dir string, log zerolog.Logger) (*Authenticator, error) {
	if cfg == nil {
		return nil, nil
	}
	a := &Authenticator{keys: make(map[[sha256.Size]byte]string, len(cfg.APIKeys))}
	for i, k := range cfg.APIKeys {
		var sum [sha256.Size]byte
		switch {
		case k.Key != "" && k.KeySHA256 != "":
			return nil, fmt.Errorf("auth.api_keys[%d]: set key or key_sha256, not both", i)
		case k.Key != "":
			sum = sha256.Sum256([]byte(k.Key))
		case k.KeySHA256 != "":
			if n, err := hex.Decode(sum[:], []byte(k.KeySHA256)); err != nil || n != sha256.Size {
				return nil, fmt.Errorf("auth.api_keys[%d].key_sha256: must be 64 hex digits", i)
			}
		default:
			return nil, fmt.Errorf("auth.api_keys[%d]: needs key or key_sha256", i)
		}
		if !validClient(k.Client) {
			return nil, fmt.Errorf("auth.api_keys[%d].client: must be 1-128 visible ASCII characters", i)
		}
		if prev, dup := a.keys[sum]; dup {
			return nil, fmt.Errorf("auth.api_keys[%d]: same key as client %q", i, prev)
		}
		a.keys[sum] = k.Client
	}
	if cfg.JWT != nil {
		ctx, cancel := context.WithCancel(ctx)
		v, err := newVerifier(ctx, cfg.JWT, dir, log)
		if err != nil {
			cancel()
			return nil, err
		}
		a.jwt, a.cancel = v, cancel
	}
	return a, nil
}

// Close stops the JWKS refresh. Authenticate keeps answering from the keys
// it holds, but fetches no more.
func (a *Authenticator) Close() {
	if a != nil && a.cancel != nil {
		a.cancel()
	}
}

// Authenticate returns the client named by the raw values of the
// X-API-Key and Authorization headers (either may be empty), or an *Error.
// X-API-Key wins when both came. A Bearer value that looks like a JWT
// (two dots) is checked as one when auth.jwt is set; any other is an API
// key.
func (a *Authenticator) Authenticate(apiKey, authorization []byte) (string, error) {
	if key := trimOWS(apiKey); len(key) > 0 {
		return a.byKey(key)
	}
	if len(authorization) == 0 {
		return "", errMissing
	}
	tok, ok := bearer(authorization)
	switch {
	case !ok:
		return "", errScheme
	case len(tok) == 0:
		return "", errMissing
	case len(tok) > MaxTokenSize:
		return "", errTooBig
	case a.jwt != nil && isJWT(tok):
		return a.jwt.verify(tok)
	}
	return a.byKey(tok)
}

// byKey finds the client of an API key by its SHA-256. The lookup is a
// map keyed by the digest, not a scan: its timing depends on the digest
// of what was presented, which tells an attacker nothing about any key
// (finding a key from how much of its digest matched is a preimage
// attack on SHA-256), and it costs the same for 1 key or 10,000. The
// map's own key comparison is of digests too, so no comparison of secret
// material runs on the request path. Only digests are kept: the keys
// themselves are not in memory after New.
func (a *Authenticator) byKey(key []byte) (string, error) {
	if len(key) > MaxTokenSize {
		return "", errInvalid
	}
	client, ok := a.keys[sha256.Sum256(key)]
	if !ok {
		return "", errInvalid
	}
	return client, nil
}

// bearer returns the token of an "Authorization: Bearer <token>" value,
// and false for another scheme. The scheme is case-insensitive (RFC 9110
// §11.1).
func bearer(h []byte) ([]byte, bool) {
	h = trimOWS(h)
	const scheme = "bearer"
	if len(h) < len(scheme) {
		return nil, false
	}
	for i := range len(scheme) {
		if h[i]|0x20 != scheme[i] { // ASCII letters only: |0x20 lowers them
			return nil, false
		}
	}
	h = h[len(scheme):]
	if len(h) == 0 {
		return nil, true
	}
	if h[0] != ' ' && h[0] != '\t' {
		return nil, false // "Bearerx"
	}
	return trimOWS(h), true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// isJWT reports whether tok has the three parts of a JWS compact
// serialization.
func isJWT(tok []byte) bool {
	dots := 0
	for _, c := range tok {
		if c == '.' {
			dots++
		}
	}
	return dots == 2
}

// validClient reports whether a client name can stand in headers
// (${client}) and logs as is: 1-128 visible ASCII characters, no spaces,
// as config requires of api_keys clients.
func validClient(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := range len(s) {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}
