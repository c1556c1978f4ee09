package main

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/sluice-gw/sluice/internal/wait"
)

// TestPolicies drives SPEC §6's policies through the HTTP API of a
// running sluice: API keys and HS256 JWTs, a route's client list, a
// per-client rate limit, CORS, header transforms, gzip bodies, per-client
// polls and idempotency keys, and the metering table.
func TestPolicies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts sluice")
	}
	be := newBackend(t, nil)
	const secret = "an-hs256-secret-of-32-bytes-or-more!"
	g := startGateway(t, `
auth:
  api_keys:
    - { client: team-a, key: key-a-0123456789 }
    - { client: team-b, key_sha256: "`+sha256Hex("key-b-0123456789")+`" }
  jwt: { hs256_secret: "`+secret+`", issuer: sluice-test, audience: logs }
routes:
  - name: logs
    path: /v1/logs
    backend: be
    ack: { status: 200 }
    rate_limit: { rate: 1, burst: 3 }
    cors: { origins: ["https://app.example"] }
    set_headers: { X-Tenant: "${client}", X-Via: "sluice/${route}" }
    remove_headers: [Cookie]
    decompress: true
  - { name: private, path: /v1/private, backend: be, clients: [team-b] }
backends:
`+backendCfg("be", be.URL, ""))
	keyA := map[string]string{"X-API-Key": "key-a-0123456789"}
	keyB := map[string]string{"Authorization": "Bearer key-b-0123456789"}

	// Without credentials: 401 with a challenge, never enqueued.
	resp, body := do(t, "POST", g.base+"/v1/logs", `{}`, nil)
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") ||
		resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("no credentials: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if resp, _ := do(t, "POST", g.base+"/v1/logs", `{}`, map[string]string{"X-API-Key": "wrong"}); resp.StatusCode != 401 {
		t.Fatalf("wrong key: %d", resp.StatusCode)
	}
	for name, tok := range map[string]string{
		"expired":      hs256(t, secret, jwt.MapClaims{"sub": "svc", "iss": "sluice-test", "aud": "logs", "exp": time.Now().Add(-time.Hour).Unix()}),
		"no exp":       hs256(t, secret, jwt.MapClaims{"sub": "svc", "iss": "sluice-test", "aud": "logs"}),
		"wrong issuer": hs256(t, secret, jwt.MapClaims{"sub": "svc", "iss": "else", "aud": "logs", "exp": time.Now().Add(time.Hour).Unix()}),
		"wrong secret": hs256(t, "another-secret-of-32-bytes-or-more!!", jwt.MapClaims{"sub": "svc", "iss": "sluice-test", "aud": "logs", "exp": time.Now().Add(time.Hour).Unix()}),
		"alg none":     "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJzdmMiLCJpc3MiOiJzbHVpY2UtdGVzdCIsImF1ZCI6ImxvZ3MiLCJleHAiOjQxMDI0NDQ4MDB9.",
		"malformed":    "a.b.c",
	} {
		resp, body := do(t, "POST", g.base+"/v1/private", `{}`, map[string]string{"Authorization": "Bearer " + tok})
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%s token: %d %s", name, resp.StatusCode, body)
		}
	}
	if n := be.count(); n != 0 {
		t.Fatalf("%d refused requests reached the backend", n)
	}

	// clients narrows a route: 403 for team-a, a JWT's sub may pass.
	if resp, _ := do(t, "POST", g.base+"/v1/private", `{}`, keyA); resp.StatusCode != 403 {
		t.Fatalf("team-a on private: %d", resp.StatusCode)
	}
	if resp, body := do(t, "POST", g.base+"/v1/private", `{}`, keyB); resp.StatusCode != 202 {
		t.Fatalf("team-b on private: %d %s", resp.StatusCode, body)
	}
	good := hs256(t, secret, jwt.MapClaims{"sub": "team-b", "iss": "sluice-test", "aud": "logs", "exp": time.Now().Add(time.Hour).Unix()})
	resp, body = do(t, "POST", g.base+"/v1/private", `{}`, map[string]string{"Authorization": "Bearer " + good})
	if resp.StatusCode != 202 {
		t.Fatalf("JWT for team-b: %d %s", resp.StatusCode, body)
	}
	var viaJWT accepted
	_ = json.Unmarshal(body, &viaJWT)

	// A gzip body, inflated for the backend; credentials and Cookie stay
	// behind; set_headers arrive. ack: {status: 200}.
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	_, _ = zw.Write([]byte(`{"msg":"inflated"}`))
	_ = zw.Close()
	req, _ := http.NewRequest("POST", g.base+"/v1/logs", bytes.NewReader(z.Bytes()))
	req.Header.Set("X-API-Key", "key-a-0123456789")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Cookie", "session=1")
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Idempotency-Key", "k1")
	resp, body = send(t, req)
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		resp.Header.Get("RateLimit-Limit") == "" {
		t.Fatalf("gzip submit: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	var a accepted
	_ = json.Unmarshal(body, &a)
	rec := g.awaitAs(a.ID, keyA, 15*time.Second)
	if rec.Status != "succeeded" {
		t.Fatalf("gzip request %s", rec.Status)
	}
	h := be.hitsFor(a.ID)[0]
	if h.Body != `{"msg":"inflated"}` || h.Header.Get("Content-Encoding") != "" || h.Header.Get("X-Tenant") != "team-a" ||
		h.Header.Get("X-Via") != "sluice/logs" || h.Header.Get("Cookie") != "" || h.Header.Get("X-Api-Key") != "" ||
		h.Header.Get("Authorization") != "" {
		t.Fatalf("the backend got %q with %v", h.Body, h.Header)
	}

	// Polls are per client: another client's id is 404, as is no credential.
	if resp, _ := do(t, "GET", g.base+"/v1/requests/"+a.ID, "", keyB); resp.StatusCode != 404 {
		t.Fatalf("team-b polling team-a's id: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", g.base+"/v1/requests/"+a.ID, "", nil); resp.StatusCode != 401 {
		t.Fatalf("polling without credentials: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", g.base+"/v1/requests/"+viaJWT.ID, "", keyB); resp.StatusCode != 200 {
		t.Fatalf("team-b's key polling its JWT request: %d", resp.StatusCode)
	}
	// Idempotency keys are per client: the same key from team-a is its
	// first request, from team-b a new one.
	resp, body = do(t, "POST", g.base+"/v1/logs", `{}`, map[string]string{"X-API-Key": "key-a-0123456789", "Idempotency-Key": "k1"})
	if resp.StatusCode == 200 {
		var again accepted
		_ = json.Unmarshal(body, &again)
		if again.ID != a.ID {
			t.Fatalf("team-a's key k1 again: id %s, want %s", again.ID, a.ID)
		}
	} else if resp.StatusCode != 429 {
		t.Fatalf("team-a's key k1 again: %d", resp.StatusCode)
	}
	resp, body = do(t, "POST", g.base+"/v1/logs", `{}`, map[string]string{"Authorization": "Bearer key-b-0123456789", "Idempotency-Key": "k1"})
	var other accepted
	if resp.StatusCode != 200 || json.Unmarshal(body, &other) != nil || other.ID == a.ID {
		t.Fatalf("team-b's key k1: %d %s (team-a's id %s)", resp.StatusCode, body, a.ID)
	}

	// A preflight is answered by sluice and never enqueued.
	before := be.count()
	resp, _ = do(t, "OPTIONS", g.base+"/v1/logs", "", map[string]string{"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}

	// The rate limit: team-b has its own budget of 3 at once; the 4th is 429.
	var last *http.Response
	codes := []int{}
	for range 5 {
		last, _ = do(t, "POST", g.base+"/v1/logs", `{}`, keyB)
		codes = append(codes, last.StatusCode)
	}
	if codes[0] != 200 || codes[4] != 429 {
		t.Fatalf("team-b's burst: %v", codes)
	}
	if ra, _ := strconv.Atoi(last.Header.Get("Retry-After")); ra < 1 || last.Header.Get("RateLimit-Remaining") != "0" ||
		last.Header.Get("RateLimit-Limit") == "" || last.Header.Get("RateLimit-Reset") == "" {
		t.Fatalf("429 headers: %v", last.Header)
	}
	time.Sleep(200 * time.Millisecond)
	if be.count() > before+4 {
		t.Fatalf("the preflight or a refused request reached the backend: %d hits, want at most %d", be.count(), before+4)
	}

	// Metering: per client and route, with rejections by status.
	var m struct {
		Clients []struct {
			Client string `json:"client"`
			Routes []struct {
				Route    string           `json:"route"`
				Accepted int              `json:"accepted"`
				Bytes    int              `json:"bytes"`
				Rejected map[string]int64 `json:"rejected"`
			} `json:"routes"`
		} `json:"clients"`
	}
	resp, body = do(t, "GET", g.admin+"/admin/clients", "", nil)
	if resp.StatusCode != 200 || json.Unmarshal(body, &m) != nil {
		t.Fatalf("/admin/clients: %d %s", resp.StatusCode, body)
	}
	rows := map[string]map[string]int64{}
	for _, c := range m.Clients {
		for _, r := range c.Routes {
			row := map[string]int64{"accepted": int64(r.Accepted)}
			for s, n := range r.Rejected {
				row[s] = n
			}
			rows[c.Client+"/"+r.Route] = row
		}
	}
	if rows["team-a/private"]["403"] != 1 || rows["team-b/private"]["accepted"] != 2 || rows["team-b/logs"]["429"] < 1 ||
		rows["/private"]["401"] < 6 || rows["team-a/logs"]["accepted"] < 1 {
		t.Fatalf("metering: %s", body)
	}
}

func hs256(t *testing.T, secret string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestRateLimitAcrossProcesses: with results.store: redis, a client's
// rate_limit is one budget over every ingress process (a GCRA in Redis):
// two processes offered 150/s each at rate 100 accept 100/s together,
// within 5%.
func TestRateLimitAcrossProcesses(t *testing.T) {
	integration(t)
	if testing.Short() {
		t.Skip("starts two sluice processes")
	}
	be := newBackend(t, nil)
	prefix := fmt.Sprintf("sluice-rl-%d:", time.Now().UnixNano())
	cfg := `
auth: { api_keys: [ { client: team-a, key: key-a-0123456789 } ] }
results: { store: redis, redis: { addr: "` + redisAddrForTests() + `", key_prefix: "` + prefix + `" } }
routes: [{ name: logs, path: /v1/logs, backend: be, rate_limit: { rate: 100, burst: 10 } }]
backends:
` + backendCfg("be", be.URL, "")
	gws := []*gw{startGateway(t, cfg), startGateway(t, cfg)}
	const secs, perSec = 5, 150
	var accepted, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 5 * time.Second}
			for i := range secs * perSec {
				time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / perSec)))
				req, _ := http.NewRequest("POST", g.base+"/v1/logs", strings.NewReader(`{}`))
				req.Header.Set("X-API-Key", "key-a-0123456789")
				resp, err := hc.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 202:
					accepted.Add(1)
				case 429:
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	want := 100*elapsed + 10
	got := float64(accepted.Load())
	t.Logf("accepted %.0f, refused %d in %.2fs: want %.0f ±5%%", got, refused.Load(), elapsed, want)
	if got < want*0.95 || got > want*1.05 {
		t.Fatalf("two processes accepted %.0f in %.2fs, want %.0f ±5%% (refused %d)", got, elapsed, want, refused.Load())
	}
}

// TestJWKSURLThroughSluice: RS256 tokens checked against a JWKS URL.
// While the URL has never answered, a token gets 503 with Retry-After
// (the keys are missing, not the token wrong); once it answers, the same
// token is accepted; an HS256 token made with the public key as secret
// (key confusion) and a token from another key are 401.
func TestJWKSURLThroughSluice(t *testing.T) {
	integration(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwks := fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","n":%q,"e":%q}]}`,
		base64.RawURLEncoding.EncodeToString(key.N.Bytes()), base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()))
	var up atomic.Bool
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			http.Error(w, "down", 503)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, jwks)
	}))
	defer idp.Close()
	be := newBackend(t, nil)
	g := startGateway(t, `
auth: { jwt: { jwks_url: "`+idp.URL+`/jwks.json", jwks_min_refresh: 1s, audience: logs } }
routes: [{ name: logs, path: /v1/logs, backend: be }]
backends:
`+backendCfg("be", be.URL, ""))
	claims := jwt.MapClaims{"sub": "svc-a", "aud": "logs", "exp": time.Now().Add(time.Hour).Unix()}
	sign := func(k *rsa.PrivateKey) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := map[string]string{"Authorization": "Bearer " + sign(key)}
	resp, body := do(t, "POST", g.base+"/v1/logs", `{}`, good)
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != 503 || ra < 1 {
		t.Fatalf("JWKS never fetched: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	up.Store(true)
	wait.For(t, 15*time.Second, "the JWKS fetched", func() bool {
		resp, _ := do(t, "POST", g.base+"/v1/logs", `{}`, good)
		return resp.StatusCode == 202
	})
	pub := x509.MarshalPKCS1PublicKey(&key.PublicKey)
	confused := hs256(t, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: pub})), claims)
	for name, tok := range map[string]string{"key confusion": confused, "another key": sign(other)} {
		if resp, body := do(t, "POST", g.base+"/v1/logs", `{}`, map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 401 {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
		}
	}
	// The URL goes down: the keys fetched keep working.
	up.Store(false)
	time.Sleep(1100 * time.Millisecond)
	if resp, body := do(t, "POST", g.base+"/v1/logs", `{}`, good); resp.StatusCode != 202 {
		t.Fatalf("after the URL went down: %d %s", resp.StatusCode, body)
	}
}
