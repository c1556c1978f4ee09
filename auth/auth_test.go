package auth_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/auth"
	"github.com/sluice-gw/sluice/config"
)

const (
	secret = "0123456789abcdef0123456789abcdef-hs256"
	keyA   = "key-of-team-a-7f3c9e"
	keyB   = "key-of-team-b-1d2e4a"
)

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func newAuth(t testing.TB, cfg *config.Auth) *auth.Authenticator {
	t.Helper()
	a, err := auth.New(context.Background(), cfg, t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func keysCfg() *config.Auth {
	return &config.Auth{APIKeys: []config.APIKey{
		{Client: "team-a", Key: keyA},
		{Client: "team-b", KeySHA256: strings.ToUpper(sha(keyB))},
	}}
}

// refusal checks that err is a 401 *auth.Error with a Bearer challenge
// and this detail.
func refusal(t *testing.T, client string, err error, detail string) {
	t.Helper()
	var e *auth.Error
	if !errors.As(err, &e) {
		t.Fatalf("got client %q, err %v; want a 401 %q", client, err, detail)
	}
	if e.Status != http.StatusUnauthorized || e.Detail != detail {
		t.Fatalf("got %d %q, want 401 %q", e.Status, e.Detail, detail)
	}
	if !strings.HasPrefix(e.Challenge, "Bearer") {
		t.Fatalf("401 %q has challenge %q, want one starting with Bearer", e.Detail, e.Challenge)
	}
	if client != "" {
		t.Fatalf("refused, but client %q", client)
	}
}

func accepted(t *testing.T, got string, err error, want string) {
	t.Helper()
	if err != nil || got != want {
		t.Fatalf("got client %q, err %v; want %q", got, err, want)
	}
}

func TestAPIKey(t *testing.T) {
	a := newAuth(t, keysCfg())
	for _, tc := range []struct {
		name          string
		apiKey, authz string
		client        string // "" = refused with detail
		detail        string
	}{
		{name: "key via X-API-Key", apiKey: keyA, client: "team-a"},
		{name: "key via Bearer", authz: "Bearer " + keyA, client: "team-a"},
		{name: "key_sha256 via X-API-Key", apiKey: keyB, client: "team-b"},
		{name: "key_sha256 via Bearer", authz: "Bearer " + keyB, client: "team-b"},
		{name: "scheme case-insensitive", authz: "bEARER  " + keyA + " ", client: "team-a"},
		{name: "X-API-Key spaces trimmed", apiKey: " " + keyA + "\t", client: "team-a"},
		{name: "X-API-Key wins over Authorization", apiKey: keyB, authz: "Bearer " + keyA, client: "team-b"},
		{name: "wrong key", apiKey: keyA + "x", detail: "invalid credentials"},
		{name: "wrong key via Bearer", authz: "Bearer nope", detail: "invalid credentials"},
		{name: "key_sha256 itself is not the key", apiKey: sha(keyB), detail: "invalid credentials"},
		{name: "prefix of a key", apiKey: keyA[:5], detail: "invalid credentials"},
		{name: "JWT-looking without jwt config", authz: "Bearer a.b.c", detail: "invalid credentials"},
		{name: "missing", detail: "missing credentials"},
		{name: "blank X-API-Key", apiKey: "  ", detail: "missing credentials"},
		{name: "Bearer without token", authz: "Bearer", detail: "missing credentials"},
		{name: "Bearer with spaces only", authz: "Bearer   ", detail: "missing credentials"},
		{name: "Basic", authz: "Basic " + base64.StdEncoding.EncodeToString([]byte("team-a:"+keyA)), detail: "unsupported authorization scheme, use Bearer"},
		{name: "Bearer glued to token", authz: "Bearer" + keyA, detail: "unsupported authorization scheme, use Bearer"},
		{name: "key as raw Authorization", authz: keyA, detail: "unsupported authorization scheme, use Bearer"},
		{name: "huge X-API-Key", apiKey: strings.Repeat("k", 16<<10), detail: "invalid credentials"},
		{name: "huge Bearer", authz: "Bearer " + strings.Repeat("k", 16<<10), detail: "token too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Authenticate([]byte(tc.apiKey), []byte(tc.authz))
			if tc.client != "" {
				accepted(t, got, err, tc.client)
				return
			}
			refusal(t, got, err, tc.detail)
		})
	}
	t.Run("nil headers", func(t *testing.T) {
		got, err := a.Authenticate(nil, nil)
		refusal(t, got, err, "missing credentials")
	})
}

// TestChallenge pins the WWW-Authenticate values: none carries an error
// code when no credential came (RFC 6750 §3.1), and invalid_token when one
// did not hold.
func TestChallenge(t *testing.T) {
	a := newAuth(t, keysCfg())
	_, err := a.Authenticate(nil, nil)
	if c := err.(*auth.Error).Challenge; c != `Bearer realm="sluice"` {
		t.Errorf("missing: challenge %q", c)
	}
	_, err = a.Authenticate([]byte("wrong"), nil)
	if c := err.(*auth.Error).Challenge; c != `Bearer realm="sluice", error="invalid_token", error_description="invalid credentials"` {
		t.Errorf("invalid: challenge %q", c)
	}
}

// TestAPIKeyNoAllocs holds the key path to no heap allocation, accepted or
// refused: the ingress runs it for every request.
func TestAPIKeyNoAllocs(t *testing.T) {
	a := newAuth(t, keysCfg())
	for _, tc := range []struct{ name, apiKey, authz string }{
		{"X-API-Key", keyA, ""}, {"Bearer", "", "Bearer " + keyB}, {"wrong", "nope", ""}, {"missing", "", ""},
	} {
		k, h := []byte(tc.apiKey), []byte(tc.authz)
		if n := testing.AllocsPerRun(100, func() { _, _ = a.Authenticate(k, h) }); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tc.name, n)
		}
	}
}

func TestNew(t *testing.T) {
	a, err := auth.New(context.Background(), nil, "", zerolog.Nop())
	if a != nil || err != nil {
		t.Fatalf("nil config: got %v, %v; want nil, nil", a, err)
	}
	a.Close() // a nil Authenticator closes

	dir := t.TempDir()
	octOnly := filepath.Join(dir, "oct.json")
	if err := os.WriteFile(octOnly, []byte(`{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.json")
	if err := os.WriteFile(empty, []byte(`{"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  config.Auth
		want string
	}{
		{"bad key_sha256", config.Auth{APIKeys: []config.APIKey{{Client: "a", KeySHA256: "zz"}}}, "key_sha256"},
		{"short key_sha256", config.Auth{APIKeys: []config.APIKey{{Client: "a", KeySHA256: "abcd"}}}, "key_sha256"},
		{"key and key_sha256", config.Auth{APIKeys: []config.APIKey{{Client: "a", Key: "k", KeySHA256: sha("k")}}}, "not both"},
		{"no key", config.Auth{APIKeys: []config.APIKey{{Client: "a"}}}, "needs key"},
		{"same key twice", config.Auth{APIKeys: []config.APIKey{{Client: "a", Key: "k"}, {Client: "b", KeySHA256: sha("k")}}}, "same key"},
		{"client with space", config.Auth{APIKeys: []config.APIKey{{Client: "a b", Key: "k"}}}, "client"},
		{"two key sources", config.Auth{JWT: &config.JWT{HS256Secret: secret, JWKSFile: "x.json"}}, "exactly one"},
		{"no key source", config.Auth{JWT: &config.JWT{}}, "exactly one"},
		{"jwks_file missing", config.Auth{JWT: &config.JWT{JWKSFile: "nope.json"}}, "no such file"},
		{"jwks_file not JSON", config.Auth{JWT: &config.JWT{JWKSFile: "doc.go"}}, "not a JWKS"},
		{"jwks_file only oct", config.Auth{JWT: &config.JWT{JWKSFile: octOnly}}, "no usable public key"},
		{"jwks_file empty", config.Auth{JWT: &config.JWT{JWKSFile: empty}}, "keys list is empty"},
		{"jwks_url not a url", config.Auth{JWT: &config.JWT{JWKSURL: "::"}}, "jwks_url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := auth.New(context.Background(), &tc.cfg, ".", zerolog.Nop())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				a.Close()
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// claims are valid for a minute from now unless changed.
func claims(change func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "team-jwt", "iss": "https://idp.example", "aud": "sluice",
		"exp": time.Now().Add(time.Minute).Unix(), "iat": time.Now().Unix()}
	if change != nil {
		change(c)
	}
	return c
}

func sign(t testing.TB, m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hsCfg() *config.Auth {
	leeway := config.Duration(30 * time.Second)
	return &config.Auth{APIKeys: []config.APIKey{{Client: "team-a", Key: keyA}},
		JWT: &config.JWT{HS256Secret: secret, Issuer: "https://idp.example", Audience: "sluice", Leeway: &leeway}}
}

func TestHS256(t *testing.T) {
	a := newAuth(t, hsCfg())
	hs := func(change func(jwt.MapClaims)) string {
		return sign(t, jwt.SigningMethodHS256, []byte(secret), "", claims(change))
	}
	del := func(k string) func(jwt.MapClaims) { return func(c jwt.MapClaims) { delete(c, k) } }
	set := func(k string, v any) func(jwt.MapClaims) { return func(c jwt.MapClaims) { c[k] = v } }
	ago := func(d time.Duration) int64 { return time.Now().Add(-d).Unix() }
	valid := hs(nil)
	parts := strings.Split(valid, ".")
	critTok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil))
	critTok.Header["crit"] = []string{"x-unknown"}
	withCrit, err := critTok.SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		token  string
		client string // "" = refused with detail
		detail string
	}{
		{name: "valid", token: valid, client: "team-jwt"},
		{name: "crit header", token: withCrit, detail: "token has critical header extensions this server does not understand"},
		{name: "aud as a list", token: hs(set("aud", []string{"other", "sluice"})), client: "team-jwt"},
		{name: "expired within leeway", token: hs(set("exp", ago(10*time.Second))), client: "team-jwt"},
		{name: "expired", token: hs(set("exp", ago(time.Minute))), detail: "token expired"},
		{name: "no exp", token: hs(del("exp")), detail: "token has no exp"},
		{name: "exp not a number", token: hs(set("exp", "tomorrow")), detail: "invalid claims"},
		{name: "nbf in the future", token: hs(set("nbf", ago(-time.Minute))), detail: "token not valid yet"},
		{name: "nbf within leeway", token: hs(set("nbf", ago(-10*time.Second))), client: "team-jwt"},
		{name: "wrong iss", token: hs(set("iss", "https://evil.example")), detail: "wrong issuer"},
		{name: "no iss", token: hs(del("iss")), detail: "token has no iss"},
		{name: "wrong aud", token: hs(set("aud", "other")), detail: "wrong audience"},
		{name: "no aud", token: hs(del("aud")), detail: "token has no aud"},
		{name: "wrong secret", token: sign(t, jwt.SigningMethodHS256, []byte(secret+"x"), "", claims(nil)), detail: "invalid signature"},
		{name: "HS384 not allowed", token: sign(t, jwt.SigningMethodHS384, []byte(secret), "", claims(nil)), detail: "signing method not allowed"},
		{name: "alg none", token: none, detail: "signing method not allowed"},
		{name: "alg none with the signature kept", token: strings.Split(none, ".")[0] + "." + parts[1] + "." + parts[2], detail: "signing method not allowed"},
		{name: "unknown alg", token: b64(`{"alg":"XX256","typ":"JWT"}`) + "." + parts[1] + "." + parts[2], detail: "signing method not allowed"},
		{name: "payload swapped", token: parts[0] + "." + b64(`{"sub":"admin","exp":9999999999,"iss":"https://idp.example","aud":"sluice"}`) + "." + parts[2], detail: "invalid signature"},
		{name: "garbage base64", token: "!!!.@@@.###", detail: "malformed token"},
		{name: "header not JSON", token: b64("nope") + "." + parts[1] + "." + parts[2], detail: "malformed token"},
		{name: "payload not an object", token: parts[0] + "." + b64(`[1,2]`) + "." + parts[2], detail: "malformed token"},
		{name: "empty parts", token: "..", detail: "malformed token"},
		{name: "16 KiB token", token: parts[0] + "." + strings.Repeat("A", 16<<10) + "." + parts[2], detail: "token too large"},
		{name: "client claim missing", token: hs(del("sub")), detail: "token names no client"},
		{name: "client claim not a string", token: hs(set("sub", 42)), detail: "token names no client"},
		{name: "client claim empty", token: hs(set("sub", "")), detail: "token names no client"},
		{name: "client claim with spaces", token: hs(set("sub", "team a")), detail: "client in token is not 1-128 visible ASCII characters"},
		{name: "client claim with newline", token: hs(set("sub", "team\r\nX-Admin: 1")), detail: "client in token is not 1-128 visible ASCII characters"},
		{name: "client claim too long", token: hs(set("sub", strings.Repeat("c", 129))), detail: "client in token is not 1-128 visible ASCII characters"},
		{name: "client claim non-ASCII", token: hs(set("sub", "tëam")), detail: "client in token is not 1-128 visible ASCII characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Authenticate(nil, []byte("Bearer "+tc.token))
			if tc.client != "" {
				accepted(t, got, err, tc.client)
				return
			}
			refusal(t, got, err, tc.detail)
			if e := err.(*auth.Error); strings.Contains(e.Detail+e.Challenge, tc.token) {
				t.Fatalf("refusal echoes the token: %+v", e)
			}
		})
	}
	t.Run("API key still works beside JWT", func(t *testing.T) {
		got, err := a.Authenticate(nil, []byte("Bearer "+keyA))
		accepted(t, got, err, "team-a")
	})
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestClientClaim(t *testing.T) {
	cfg := hsCfg()
	cfg.JWT.ClientClaim = "azp"
	a := newAuth(t, cfg)
	tok := sign(t, jwt.SigningMethodHS256, []byte(secret), "", claims(func(c jwt.MapClaims) { c["azp"] = "billing-svc" }))
	got, err := a.Authenticate(nil, []byte("Bearer "+tok))
	accepted(t, got, err, "billing-svc")
	tok = sign(t, jwt.SigningMethodHS256, []byte(secret), "", claims(nil)) // sub only
	got, err = a.Authenticate(nil, []byte("Bearer "+tok))
	refusal(t, got, err, "token names no client")
}

// signer is a key pair with its kid, for JWKS tests.
type signer struct {
	kid    string
	method jwt.SigningMethod
	priv   any
	pub    any
	alg    jwkset.ALG
	use    jwkset.USE // sig when empty
}

func rsaSigner(t testing.TB, kid string) signer {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, method: jwt.SigningMethodRS256, priv: k, pub: &k.PublicKey, alg: jwkset.AlgRS256}
}

func ecSigner(t testing.TB, kid string) signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, method: jwt.SigningMethodES256, priv: k, pub: &k.PublicKey, alg: jwkset.AlgES256}
}

func edSigner(t testing.TB, kid string) signer {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, method: jwt.SigningMethodEdDSA, priv: priv, pub: pub, alg: jwkset.AlgEdDSA}
}

func (s signer) token(t testing.TB, c jwt.MapClaims) string {
	return sign(t, s.method, s.priv, s.kid, c)
}

// jwks is the public JWK Set of signers, written by jwkset.
func jwks(t testing.TB, signers ...signer) []byte {
	t.Helper()
	store := jwkset.NewMemoryStorage()
	for _, s := range signers {
		use := s.use
		if use == "" {
			use = jwkset.UseSig
		}
		k, err := jwkset.NewJWKFromKey(s.pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: s.kid, ALG: s.alg, USE: use}})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.KeyWrite(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	b, err := store.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileCfg(t testing.TB, set []byte) (*config.Auth, string) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "jwks.json"), set, 0o600); err != nil {
		t.Fatal(err)
	}
	return &config.Auth{JWT: &config.JWT{JWKSFile: "jwks.json", Issuer: "https://idp.example", Audience: "sluice"}}, dir
}

func TestJWKSFile(t *testing.T) {
	rs, es, ed := rsaSigner(t, "rsa-1"), ecSigner(t, "ec-1"), edSigner(t, "ed-1")
	other := rsaSigner(t, "rsa-1") // same kid, another key
	enc := rsaSigner(t, "rsa-enc")
	enc.use = jwkset.UseEnc // skipped at load: not for signatures
	cfg, dir := fileCfg(t, jwks(t, rs, es, ed, enc))
	a, err := auth.New(context.Background(), cfg, dir, zerolog.Nop()) // relative jwks_file, resolved in dir
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	noKid := rs
	noKid.kid = ""
	ps := rs
	ps.method = jwt.SigningMethodPS256
	for _, tc := range []struct {
		name   string
		token  string
		client string
		detail string
	}{
		{name: "RS256", token: rs.token(t, claims(nil)), client: "team-jwt"},
		{name: "ES256", token: es.token(t, claims(nil)), client: "team-jwt"},
		{name: "EdDSA", token: ed.token(t, claims(nil)), client: "team-jwt"},
		{name: "no kid: tried against every key", token: noKid.token(t, claims(nil)), client: "team-jwt"},
		{name: "RS256 expired", token: rs.token(t, claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })), detail: "token expired"},
		{name: "RS256 wrong aud", token: rs.token(t, claims(func(c jwt.MapClaims) { c["aud"] = "x" })), detail: "wrong audience"},
		{name: "unknown kid", token: sign(t, rs.method, rs.priv, "rsa-2", claims(nil)), detail: "unknown signing key"},
		{name: "key for encryption", token: enc.token(t, claims(nil)), detail: "unknown signing key"},
		{name: "known kid, other key", token: other.token(t, claims(nil)), detail: "invalid signature"},
		{name: "ES256 token under an RSA kid", token: sign(t, es.method, es.priv, "rsa-1", claims(nil)), detail: "unknown signing key"},
		{name: "PS256 under a key that says RS256", token: ps.token(t, claims(nil)), detail: "unknown signing key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Authenticate(nil, []byte("Bearer "+tc.token))
			if tc.client != "" {
				accepted(t, got, err, tc.client)
				return
			}
			refusal(t, got, err, tc.detail)
		})
	}
}

// TestKeyConfusion signs HS256 tokens with the public key's bytes as the
// HMAC secret: a verifier that let the token pick HMAC would check them
// with the bytes it holds and pass them. They must be refused, and an
// RS256 token must be refused where only HS256 is configured.
func TestKeyConfusion(t *testing.T) {
	rs := rsaSigner(t, "rsa-1")
	cfg, dir := fileCfg(t, jwks(t, rs))
	a, err := auth.New(context.Background(), cfg, dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	der, err := x509.MarshalPKIXPublicKey(rs.pub)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	for name, secret := range map[string][]byte{"PEM": pemKey, "DER": der, "JWKS": jwks(t, rs)} {
		for _, kid := range []string{"rsa-1", ""} {
			t.Run(name+" kid "+kid, func(t *testing.T) {
				tok := sign(t, jwt.SigningMethodHS256, secret, kid, claims(nil))
				got, err := a.Authenticate(nil, []byte("Bearer "+tok))
				refusal(t, got, err, "signing method not allowed")
			})
		}
	}
	t.Run("RS256 against hs256_secret", func(t *testing.T) {
		h := newAuth(t, hsCfg())
		got, err := h.Authenticate(nil, []byte("Bearer "+rs.token(t, claims(nil))))
		refusal(t, got, err, "signing method not allowed")
	})
}

// jwksServer serves a JWK Set that a test can change or break, counting
// the fetches.
type jwksServer struct {
	*httptest.Server
	hits atomic.Int64
	down atomic.Bool // answer 500
	mu   sync.Mutex
	set  []byte
}

func newJWKSServer(t testing.TB, set []byte) *jwksServer {
	s := &jwksServer{set: set}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.down.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.set)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(set []byte) {
	s.mu.Lock()
	s.set = set
	s.mu.Unlock()
}

func urlCfg(u string, refresh, minRefresh time.Duration) *config.Auth {
	return &config.Auth{JWT: &config.JWT{JWKSURL: u, Issuer: "https://idp.example", Audience: "sluice",
		JWKSRefresh: config.Duration(refresh), JWKSMinRefresh: config.Duration(minRefresh)}}
}

// waitHits waits until the server has been fetched at least n times.
func waitHits(t *testing.T, s *jwksServer, n int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.hits.Load() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches, want at least %d", s.hits.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestJWKSURL(t *testing.T) {
	rs, es := rsaSigner(t, "rsa-1"), ecSigner(t, "ec-1")
	enc := ecSigner(t, "ec-enc")
	enc.use = jwkset.UseEnc
	srv := newJWKSServer(t, jwks(t, rs, es, enc))
	a := newAuth(t, urlCfg(srv.URL, time.Hour, time.Hour))
	for _, s := range []signer{rs, es} {
		got, err := a.Authenticate(nil, []byte("Bearer "+s.token(t, claims(nil))))
		accepted(t, got, err, "team-jwt")
	}
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1 (at New)", n)
	}
	got, err := a.Authenticate(nil, []byte("Bearer "+enc.token(t, claims(nil))))
	refusal(t, got, err, "unknown signing key") // its use is enc
	// A token signed by a key not in the set: one refetch, still unknown.
	got, err = a.Authenticate(nil, []byte("Bearer "+rsaSigner(t, "rsa-9").token(t, claims(nil))))
	refusal(t, got, err, "unknown signing key")
}

func TestJWKSRotation(t *testing.T) {
	old, next := rsaSigner(t, "2024"), ecSigner(t, "2025")
	srv := newJWKSServer(t, jwks(t, old))
	a := newAuth(t, urlCfg(srv.URL, time.Hour, time.Hour))
	got, err := a.Authenticate(nil, []byte("Bearer "+old.token(t, claims(nil))))
	accepted(t, got, err, "team-jwt")

	srv.serve(jwks(t, next)) // the issuer rotates: the old key is gone
	var wg sync.WaitGroup
	for range 20 { // a burst of tokens with the new kid: one fetch serves all
		wg.Go(func() {
			got, err := a.Authenticate(nil, []byte("Bearer "+next.token(t, claims(nil))))
			if err != nil || got != "team-jwt" {
				t.Errorf("new kid after rotation: got %q, %v", got, err)
			}
		})
	}
	wg.Wait()
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (New, then one refetch for the new kid)", n)
	}
	got, err = a.Authenticate(nil, []byte("Bearer "+old.token(t, claims(nil))))
	refusal(t, got, err, "unknown signing key") // revoked with the refetch
}

func TestJWKSUnknownKidRateLimited(t *testing.T) {
	rs := rsaSigner(t, "rsa-1")
	srv := newJWKSServer(t, jwks(t, rs))
	const minRefresh = 300 * time.Millisecond
	a := newAuth(t, urlCfg(srv.URL, time.Hour, minRefresh))
	var toks []string
	for i := range 50 {
		toks = append(toks, sign(t, rs.method, rs.priv, fmt.Sprintf("unknown-%d", i), claims(nil)))
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, tok := range toks {
		wg.Go(func() {
			got, err := a.Authenticate(nil, []byte("Bearer "+tok))
			if err == nil || got != "" {
				t.Errorf("unknown kid accepted as %q", got)
			}
		})
	}
	wg.Wait()
	if time.Since(start) >= minRefresh {
		t.Skip("too slow a machine to keep the burst inside jwks_min_refresh")
	}
	if n := srv.hits.Load(); n > 2 {
		t.Fatalf("%d fetches for 50 unknown kids within jwks_min_refresh, want at most 2 (New and one refetch)", n)
	}
	// Known kids never fetch.
	before := srv.hits.Load()
	for range 10 {
		_, _ = a.Authenticate(nil, []byte("Bearer "+rs.token(t, claims(nil))))
	}
	if n := srv.hits.Load(); n != before {
		t.Fatalf("known kids fetched %d times", n-before)
	}
	// After jwks_min_refresh an unknown kid may fetch again.
	time.Sleep(minRefresh + 50*time.Millisecond)
	_, _ = a.Authenticate(nil, []byte("Bearer "+sign(t, rs.method, rs.priv, "later", claims(nil))))
	if n := srv.hits.Load(); n != before+1 {
		t.Fatalf("%d fetches after jwks_min_refresh, want %d", n, before+1)
	}
}

func unavailable(t *testing.T, got string, err error) {
	t.Helper()
	var e *auth.Error
	if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.RetryAfter <= 0 || got != "" {
		t.Fatalf("got %q, %#v; want 503 with RetryAfter > 0", got, err)
	}
	if strings.Contains(e.Detail, "127.0.0.1") || strings.Contains(e.Detail, "http") {
		t.Fatalf("503 detail names the URL: %q", e.Detail)
	}
}

func TestJWKSURLDownAtStart(t *testing.T) {
	rs := rsaSigner(t, "rsa-1")
	t.Run("nothing listening", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		dead.Close()
		start := time.Now()
		a := newAuth(t, urlCfg(dead.URL, time.Hour, time.Hour))
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("New took %v with the URL down", d)
		}
		got, err := a.Authenticate(nil, []byte("Bearer "+rs.token(t, claims(nil))))
		unavailable(t, got, err)
		noKid := rs
		noKid.kid = ""
		got, err = a.Authenticate(nil, []byte("Bearer "+noKid.token(t, claims(nil))))
		unavailable(t, got, err)
		// What the parser refuses before any key is needed stays 401.
		got, err = a.Authenticate(nil, []byte("Bearer a.b.c"))
		refusal(t, got, err, "malformed token")
	})
	t.Run("answers 500, then recovers", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, rs))
		srv.down.Store(true)
		a := newAuth(t, urlCfg(srv.URL, time.Hour, 50*time.Millisecond))
		got, err := a.Authenticate(nil, []byte("Bearer "+rs.token(t, claims(nil))))
		unavailable(t, got, err)
		srv.down.Store(false)
		time.Sleep(60 * time.Millisecond) // past jwks_min_refresh: the next token fetches
		got, err = a.Authenticate(nil, []byte("Bearer "+rs.token(t, claims(nil))))
		accepted(t, got, err, "team-jwt")
	})
}

func TestJWKSURLDownLater(t *testing.T) {
	rs := rsaSigner(t, "rsa-1")
	srv := newJWKSServer(t, jwks(t, rs))
	a := newAuth(t, urlCfg(srv.URL, 20*time.Millisecond, 10*time.Millisecond))
	tok := []byte("Bearer " + rs.token(t, claims(nil)))
	got, err := a.Authenticate(nil, tok)
	accepted(t, got, err, "team-jwt")

	srv.down.Store(true)
	waitHits(t, srv, srv.hits.Load()+3) // background refreshes fail
	got, err = a.Authenticate(nil, tok)
	accepted(t, got, err, "team-jwt")
	// An unknown kid's refetch fails too, and keeps the cache.
	_, err = a.Authenticate(nil, []byte("Bearer "+sign(t, rs.method, rs.priv, "new", claims(nil))))
	refusal(t, "", err, "unknown signing key")
	got, err = a.Authenticate(nil, tok)
	accepted(t, got, err, "team-jwt")

	srv.Close() // now nothing listens at all
	time.Sleep(60 * time.Millisecond)
	got, err = a.Authenticate(nil, tok)
	accepted(t, got, err, "team-jwt")
}

func TestCloseStopsRefresh(t *testing.T) {
	srv := newJWKSServer(t, jwks(t, rsaSigner(t, "rsa-1")))
	a, err := auth.New(context.Background(), urlCfg(srv.URL, 10*time.Millisecond, time.Hour), "", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	waitHits(t, srv, 3)
	a.Close()
	time.Sleep(30 * time.Millisecond) // a fetch under way ends
	n := srv.hits.Load()
	time.Sleep(100 * time.Millisecond)
	if m := srv.hits.Load(); m != n {
		t.Fatalf("%d fetches after Close", m-n)
	}
}

// TestNoCredentialsInLogs runs refusals and JWKS failures with a logger
// that records everything, and looks for the credentials in it.
func TestNoCredentialsInLogs(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	log := zerolog.New(zerolog.SyncWriter(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}))).Level(zerolog.TraceLevel)
	rs := rsaSigner(t, "rsa-1")
	srv := newJWKSServer(t, jwks(t, rs))
	cfg := urlCfg(srv.URL, 10*time.Millisecond, time.Millisecond)
	cfg.APIKeys = []config.APIKey{{Client: "team-a", Key: keyA}}
	a, err := auth.New(context.Background(), cfg, "", log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	expired := rs.token(t, claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	unknown := sign(t, rs.method, rs.priv, "nope", claims(nil))
	srv.down.Store(true)
	waitHits(t, srv, 3)
	creds := []string{keyA, expired, unknown, keyA + "x"}
	for _, c := range creds {
		_, _ = a.Authenticate([]byte(c), nil)
		_, _ = a.Authenticate(nil, []byte("Bearer "+c))
	}
	h := newAuth(t, hsCfg())
	_, _ = h.Authenticate(nil, []byte("Bearer "+sign(t, jwt.SigningMethodHS256, []byte(secret), "", claims(nil))))
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "jwks_url fetch failed") {
		t.Fatalf("the failing fetches were not logged (the check below would see nothing): %s", logs.String())
	}
	for _, c := range append(creds, secret, strings.Split(expired, ".")[2]) {
		if strings.Contains(logs.String(), c) {
			t.Fatalf("a credential reached the log: %s", logs.String())
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// FuzzAuthenticate feeds arbitrary header values: never a panic, always a
// client or a 401 with a Bearer challenge.
func FuzzAuthenticate(f *testing.F) {
	tok := sign(f, jwt.SigningMethodHS256, []byte(secret), "", claims(nil))
	for _, s := range []string{"", keyA, "Bearer " + keyA, "Bearer " + tok, "Bearer ..", "Bearer a.b.c", "bearer\t" + tok + "x",
		"Bearer eyJhbGciOiJub25lIn0.e30.", "Bearer " + strings.Repeat(".", 9000)} {
		f.Add([]byte(nil), []byte(s))
		f.Add([]byte(s), []byte(nil))
	}
	a, err := auth.New(context.Background(), hsCfg(), "", zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, apiKey, authz []byte) {
		got, err := a.Authenticate(apiKey, authz)
		if err == nil {
			if got == "" {
				t.Fatal("accepted without a client")
			}
			return
		}
		var e *auth.Error
		if !errors.As(err, &e) || e.Status != http.StatusUnauthorized || !strings.HasPrefix(e.Challenge, "Bearer") || got != "" {
			t.Fatalf("got %q, %#v", got, err)
		}
	})
}

func BenchmarkAuthenticate(b *testing.B) {
	a := newAuth(b, keysCfg())
	rs := rsaSigner(b, "rsa-1")
	cfg, dir := fileCfg(b, jwks(b, rs))
	r, err := auth.New(context.Background(), cfg, dir, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Close)
	h := newAuth(b, hsCfg())
	for _, bc := range []struct {
		name          string
		a             *auth.Authenticator
		apiKey, authz string
	}{
		{"api_key/X-API-Key", a, keyA, ""},
		{"api_key/Bearer", a, "", "Bearer " + keyB},
		{"api_key/wrong", a, "not-a-key", ""},
		{"jwt/HS256", h, "", "Bearer " + sign(b, jwt.SigningMethodHS256, []byte(secret), "", claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(time.Hour).Unix() }))},
		{"jwt/RS256", r, "", "Bearer " + rs.token(b, claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(time.Hour).Unix() }))},
	} {
		k, z := []byte(bc.apiKey), []byte(bc.authz)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = bc.a.Authenticate(k, z)
			}
		})
	}
}
