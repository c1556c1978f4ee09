// Package auth names the client of an ingress request from its
// credentials, as config's auth section says: an API key (X-API-Key, or an
// Authorization Bearer value that is not a JWT) or a JWT (Bearer) signed
// with the HS256 secret or a key of a JWKS file or URL, whose client_claim
// names the client. Refusals are *Error values carrying the status (401,
// or 503 while a JWKS URL has given no key) and the WWW-Authenticate
// challenge of RFC 6750; they never echo a credential or a URL.
//
// API keys are held only as SHA-256 digests and found by the digest, so
// the key path costs a hash and a map lookup and allocates nothing. JWTs
// are checked by golang-jwt with the algorithms of their key source only
// (no alg none, no HMAC with a public key), a required exp and the
// configured iss and aud; JWKS keys come from jwkset through keyfunc. A
// JWKS URL is refreshed in the background and fetched again at once for
// an unknown kid, at most once per jwks_min_refresh; Close ends that.
// Nothing here logs a credential.
package auth
