package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/textproto"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// clientName is what an api_keys client may be called: visible ASCII, no
// spaces, so it can stand in headers (${client}) and logs as is.
var clientName = regexp.MustCompile(`^[!-~]{1,128}$`)

// validateAuth checks auth and returns the clients api_keys names, or
// nil when any client name can come (a JWT names its own).
func (c *Config) validateAuth(bad func(key, format string, args ...any)) map[string]bool {
	a := c.Auth
	if a == nil {
		return nil
	}
	if len(a.APIKeys) == 0 && a.JWT == nil {
		bad("auth", "needs api_keys or jwt (leave auth out to run without credentials)")
	}
	clients := map[string]bool{}
	keys := map[string]string{} // SHA-256 of each key -> its key path
	for i, k := range a.APIKeys {
		key := fmt.Sprintf("auth.api_keys[%d]", i)
		if !clientName.MatchString(k.Client) {
			bad(key+".client", "must be 1-128 visible ASCII characters without spaces, got %q", k.Client)
		}
		clients[k.Client] = true
		var sum string
		switch {
		case k.Key != "" && k.KeySHA256 != "":
			bad(key, "set key or key_sha256, not both")
			continue
		case k.Key != "":
			switch {
			case strings.TrimSpace(k.Key) != k.Key || strings.ContainsFunc(k.Key, func(r rune) bool { return r < 0x20 || r == 0x7f }):
				bad(key+".key", "must not start or end with spaces or hold control characters: clients could never send it")
			case len(k.Key) > maxKeyBytes:
				bad(key+".key", "is longer than %d bytes, the most a request carries", maxKeyBytes)
			case a.JWT != nil && strings.Count(k.Key, ".") == 2:
				bad(key+".key", "has two dots, so a Bearer value with it is read as a JWT; use X-API-Key or another key")
			}
			h := sha256.Sum256([]byte(k.Key))
			sum = hex.EncodeToString(h[:])
		case k.KeySHA256 != "":
			b, err := hex.DecodeString(k.KeySHA256)
			if err != nil || len(b) != sha256.Size {
				bad(key+".key_sha256", "must be 64 hex digits (the SHA-256 of the key, e.g. from `printf %%s KEY | sha256sum`)")
				continue
			}
			sum = strings.ToLower(k.KeySHA256)
		default:
			bad(key, "needs key or key_sha256")
			continue
		}
		if prev, dup := keys[sum]; dup {
			bad(key, "has the same key as %s: a key must name one client", prev)
		}
		keys[sum] = key
	}
	if j := a.JWT; j != nil {
		sources := 0
		for _, s := range []string{j.HS256Secret, j.JWKSFile, j.JWKSURL} {
			if s != "" {
				sources++
			}
		}
		if sources != 1 {
			bad("auth.jwt", "needs exactly one of hs256_secret, jwks_file and jwks_url")
		}
		if j.JWKSFile != "" {
			if err := checkJWKSFile(c.Path(j.JWKSFile)); err != nil {
				bad("auth.jwt.jwks_file", "%q: %v", j.JWKSFile, err)
			}
		}
		if j.JWKSURL != "" {
			if httpURL(j.JWKSURL) == nil {
				bad("auth.jwt.jwks_url", "must be an http:// or https:// url, got %q", j.JWKSURL)
			}
		}
		if j.ClientClaim == "" {
			bad("auth.jwt.client_claim", "must name a claim, such as sub")
		}
		if j.JWKSRefresh < Duration(time.Second) {
			bad("auth.jwt.jwks_refresh", "must be at least 1s")
		}
		if j.JWKSMinRefresh < Duration(time.Second) {
			bad("auth.jwt.jwks_min_refresh", "must be at least 1s: a token with an unknown kid, from anyone, fetches the URL")
		}
		if j.Leeway != nil && (*j.Leeway < 0 || *j.Leeway > Duration(5*time.Minute)) {
			bad("auth.jwt.leeway", "must be 0 to 5m")
		}
		return nil // a JWT may name any client
	}
	return clients
}

// checkJWKSFile reads a JWKS file far enough to know that it holds keys;
// the authenticator parses them at start.
func checkJWKSFile(path string) error {
	data, err := os.ReadFile(path)
	if pe, ok := err.(*fs.PathError); ok {
		return fmt.Errorf("cannot read it: %w", pe.Err)
	} else if err != nil {
		return fmt.Errorf("cannot read it: %w", err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return fmt.Errorf("not a JWKS (JSON with a \"keys\" list): %v", err)
	}
	if len(set.Keys) == 0 {
		return fmt.Errorf("holds no keys")
	}
	public := 0
	for i, k := range set.Keys {
		switch kty, _ := k["kty"].(string); kty {
		case "RSA", "EC", "OKP":
			public++
		case "oct":
		default:
			return fmt.Errorf("keys[%d]: kty must be RSA, EC or OKP, got %q", i, kty)
		}
	}
	if public == 0 {
		return fmt.Errorf("holds no public key (RSA, EC or OKP); for a shared secret use hs256_secret")
	}
	return nil
}

// reservedHeaders are set by sluice or the transport, never by set_headers.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"X-Request-Id": true, "X-Sluice-Attempt": true,
}

// Bounds of a rate_limit: past them the arithmetic means nothing.
const (
	maxRate  = 1e9
	maxBurst = 1_000_000_000
)

// maxKeyBytes is the longest API key a request can carry (auth's token
// cap).
const maxKeyBytes = 8 << 10

// validatePolicies checks a route's policy keys: clients, rate_limit,
// ack, cors, set_headers and remove_headers.
func (c *Config) validatePolicies(key string, r Route, clients map[string]bool, bad func(key, format string, args ...any)) {
	if len(r.Clients) > 0 && c.Auth == nil {
		bad(key+".clients", "needs auth: without it no request names a client")
	}
	for j, cl := range r.Clients {
		if !clientName.MatchString(cl) {
			bad(fmt.Sprintf("%s.clients[%d]", key, j), "must be 1-128 visible ASCII characters without spaces, got %q", cl)
			continue
		}
		if clients != nil && !clients[cl] {
			bad(fmt.Sprintf("%s.clients[%d]", key, j), "unknown client %q: no auth.api_keys entry names it", cl)
		}
	}
	if rl := r.RateLimit; rl != nil {
		if !(rl.Rate > 0) || rl.Rate > maxRate {
			bad(key+".rate_limit.rate", "must be > 0 and at most %g (requests per second per client)", float64(maxRate))
		}
		if rl.Burst < 0 || rl.Burst > maxBurst {
			bad(key+".rate_limit.burst", "must be 1 to %d", maxBurst)
		}
	}
	switch r.Ack.Status {
	case 200, 201, 202:
	default:
		bad(key+".ack.status", "must be 200, 201 or 202, got %d", r.Ack.Status)
	}
	if co := r.CORS; co != nil {
		if len(co.Origins) == 0 {
			bad(key+".cors.origins", "at least one origin (or \"*\") is required")
		}
		for j, o := range co.Origins {
			okey := fmt.Sprintf("%s.cors.origins[%d]", key, j)
			if o == "*" {
				if co.Credentials {
					bad(okey, "\"*\" cannot be used with credentials: true (browsers refuse it); list the origins")
				}
				continue
			}
			if why := badOrigin(o); why != "" {
				bad(okey, "%s, got %q", why, o)
			}
		}
		for j, h := range co.Headers {
			if !httpguts.ValidHeaderFieldName(h) {
				bad(fmt.Sprintf("%s.cors.headers[%d]", key, j), "must be a header name, got %q", h)
			}
		}
		if co.MaxAge < 0 {
			bad(key+".cors.max_age", "must be >= 0")
		}
	}
	canon := map[string]string{}
	for _, name := range sortedKeys(r.SetHeaders) {
		hkey := key + ".set_headers." + name
		c := textproto.CanonicalMIMEHeaderKey(name)
		if prev, dup := canon[c]; dup {
			bad(hkey, "sets the same header as %s (header names are case-insensitive)", prev)
		}
		canon[c] = name
		if !httpguts.ValidHeaderFieldName(name) {
			bad(hkey, "%q is not a header name", name)
			continue
		}
		if reservedHeaders[textproto.CanonicalMIMEHeaderKey(name)] {
			bad(hkey, "%s is set by sluice or the transport", name)
		}
		if _, err := ParseTemplate(r.SetHeaders[name]); err != nil {
			bad(hkey, "%v", err)
		}
	}
	for j, name := range r.RemoveHeaders {
		if !httpguts.ValidHeaderFieldName(name) {
			bad(fmt.Sprintf("%s.remove_headers[%d]", key, j), "%q is not a header name", name)
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// badOrigin explains why o cannot match the Origin a browser sends:
// scheme://host[:port], lower case, no path, no default port, no
// wildcard. Empty: it can.
func badOrigin(o string) string {
	const shape = "must be an origin such as \"https://app.example\" (scheme, host and port only) or \"*\""
	u := httpURL(o)
	if u == nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return shape
	}
	if strings.Contains(u.Host, "*") {
		return "wildcards in a host are not supported; list each origin, or use \"*\""
	}
	if p := u.Port(); p != "" {
		n, _ := strconv.Atoi(p)
		switch {
		case !validPort(p):
			return "has no valid port"
		case u.Scheme == "https" && n == 443, u.Scheme == "http" && n == 80:
			return "names the default port, which browsers leave out of Origin; drop :" + p
		}
	}
	return ""
}
