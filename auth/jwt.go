package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/sluice-gw/sluice/config"
)

// fetchTimeout bounds each fetch of a JWKS URL: the one in New, the
// background refreshes, and the refetch an unknown kid causes (which the
// request that caused it waits for).
const fetchTimeout = 5 * time.Second

// jwksMethods are the algorithms a JWKS key may verify: asymmetric only.
// HS256 is never among them, so a token signed with HMAC over the bytes
// of a public key (the key-confusion attack) is refused before any key is
// looked at.
var jwksMethods = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// The refusals of a token. error_description allows no '"' or '\' (RFC
// 6750 §3); none of these has one.
var (
	errMalformed  = refused("malformed token")
	errMethod     = refused("signing method not allowed")
	errCrit       = refused("token has critical header extensions this server does not understand")
	errSignature  = refused("invalid signature")
	errUnknownKey = refused("unknown signing key")
	errExpired    = refused("token expired")
	errNotYet     = refused("token not valid yet")
	errNoExp      = refused("token has no exp")
	errNoIss      = refused("token has no iss")
	errNoAud      = refused("token has no aud")
	errIssuer     = refused("wrong issuer")
	errAudience   = refused("wrong audience")
	errClaims     = refused("invalid claims")
	errNoClient   = refused("token names no client")
	errBadClient  = refused("client in token is not 1-128 visible ASCII characters")
	errToken      = refused("invalid token")
)

// Why a key lookup failed, as the keyfunc tells the parser.
var (
	errNoKey       = errors.New("no key for this token")
	errUnavailable = errors.New("jwks_url gave no key yet")
)

// verifier checks JWTs against one key source.
type verifier struct {
	parser      *jwt.Parser
	keyfunc     jwt.Keyfunc
	methods     []string
	claim       string
	issuer      string
	audience    string
	remote      *remoteKeys // jwks_url only
	unavailable *Error      // 503: remote has no key
}

func newVerifier(ctx context.Context, cfg *config.JWT, dir string, log zerolog.Logger) (*verifier, error) {
	v := &verifier{claim: cfg.ClientClaim, issuer: cfg.Issuer, audience: cfg.Audience}
	if v.claim == "" {
		v.claim = "sub"
	}
	refresh, minRefresh, leeway := cfg.JWKSRefresh.D(), cfg.JWKSMinRefresh.D(), 30*time.Second
	if refresh <= 0 {
		refresh = time.Hour
	}
	if minRefresh <= 0 {
		minRefresh = 10 * time.Second
	}
	if cfg.Leeway != nil {
		leeway = cfg.Leeway.D()
	}
	sources := 0
	for _, s := range []string{cfg.HS256Secret, cfg.JWKSFile, cfg.JWKSURL} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("auth.jwt: needs exactly one of hs256_secret, jwks_file and jwks_url")
	}
	if cfg.HS256Secret == "" && cfg.Audience == "" {
		// A shared identity provider signs tokens for every app it serves.
		log.Warn().Msg("auth.jwt.audience is not set: any token the JWKS keys signed is accepted, also one issued for another app; set audience (and issuer)")
	}
	if u, err := url.Parse(cfg.JWKSURL); err == nil && u.Scheme == "http" && !config.Loopback(u.Hostname()) {
		log.Warn().Msg("auth.jwt.jwks_url is plain http: whoever can change the answer on the way can sign tokens; use https")
	}
	switch {
	case cfg.HS256Secret != "":
		if len(cfg.HS256Secret) < 32 {
			log.Warn().Int("bytes", len(cfg.HS256Secret)).Msg("auth.jwt.hs256_secret is shorter than 32 bytes (RFC 7518 §3.2 asks for at least 256 bits)")
		}
		secret := []byte(cfg.HS256Secret)
		v.methods = []string{"HS256"}
		v.keyfunc = func(*jwt.Token) (any, error) { return secret, nil }
	case cfg.JWKSFile != "":
		path := cfg.JWKSFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		store, err := loadJWKSFile(path, log)
		if err != nil {
			return nil, err
		}
		v.methods = jwksMethods
		v.keyfunc, err = v.jwksKeyfunc(ctx, store)
		if err != nil {
			return nil, err
		}
	default:
		remote, err := newRemoteKeys(ctx, cfg.JWKSURL, refresh, minRefresh, log)
		if err != nil {
			return nil, err
		}
		v.remote = remote
		v.unavailable = &Error{Status: http.StatusServiceUnavailable, Detail: "signing keys unavailable, try again later",
			RetryAfter: int(max(1, math.Ceil(minRefresh.Seconds())))}
		v.methods = jwksMethods
		v.keyfunc, err = v.jwksKeyfunc(ctx, remote)
		if err != nil {
			return nil, err
		}
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(v.methods), jwt.WithExpirationRequired(), jwt.WithLeeway(leeway)}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	if v.audience != "" {
		opts = append(opts, jwt.WithAudience(v.audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// jwksKeyfunc picks the key of a token from store with keyfunc (by kid,
// checking the key's alg and use), and tells why when it finds none.
func (v *verifier) jwksKeyfunc(ctx context.Context, store jwkset.Storage) (jwt.Keyfunc, error) {
	kf, err := keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: store,
		UseWhitelist: []jwkset.USE{jwkset.UseSig, ""}}) // not a key meant for encryption
	if err != nil {
		return nil, fmt.Errorf("auth.jwt: %w", err)
	}
	return func(t *jwt.Token) (any, error) {
		key, err := kf.Keyfunc(t)
		if set, ok := key.(jwt.VerificationKeySet); ok && err == nil && len(set.Keys) == 0 {
			err = jwkset.ErrKeyNotFound // a token without kid, and no key at all
		}
		if err == nil {
			return key, nil
		}
		if v.remote != nil && v.remote.empty() {
			return nil, errUnavailable
		}
		return nil, fmt.Errorf("%w: %w", errNoKey, err)
	}, nil
}

// verify returns the client a valid token names.
func (v *verifier) verify(tok []byte) (string, error) {
	claims := jwt.MapClaims{}
	t, err := v.parser.ParseWithClaims(string(tok), claims, v.keyfunc)
	if err != nil {
		return "", v.reject(t, claims, err)
	}
	if _, crit := t.Header["crit"]; crit {
		return "", errCrit // RFC 7515 §4.1.11: no extension is understood here
	}
	c, ok := claims[v.claim].(string)
	switch {
	case !ok || c == "":
		return "", errNoClient
	case !validClient(c):
		return "", errBadClient
	}
	return c, nil
}

// reject maps a parse error to what the client may be told. Claims come
// first: they are checked only once the signature holds.
func (v *verifier) reject(t *jwt.Token, claims jwt.MapClaims, err error) *Error {
	switch {
	case errors.Is(err, errUnavailable):
		return v.unavailable
	case errors.Is(err, jwt.ErrTokenMalformed):
		return errMalformed
	case errors.Is(err, jwt.ErrTokenExpired):
		return errExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return errNotYet
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		if claims["exp"] == nil {
			return errNoExp
		}
		if iss, _ := claims["iss"].(string); v.issuer != "" && iss == "" {
			return errNoIss
		}
		return errNoAud
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return errIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return errAudience
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return errClaims
	case errors.Is(err, errNoKey):
		return errUnknownKey
	case t == nil || t.Method == nil || !slices.Contains(v.methods, t.Method.Alg()):
		return errMethod // alg none, HS256 against a JWKS, an unknown alg
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return errSignature
	}
	return errToken
}

// loadJWKSFile reads the public keys of a JWKS file. Keys that cannot
// verify a signature (symmetric, encryption-only, unsupported) are skipped
// with a warning; a file left with none is an error naming why.
func loadJWKSFile(path string, log zerolog.Logger) (jwkset.Storage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth.jwt.jwks_file: %w", err)
	}
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("auth.jwt.jwks_file %s: not a JWKS: %w", path, err)
	}
	store := jwkset.NewMemoryStorage()
	var skipped []error
	for i, m := range set.Keys {
		// Private: false reads only the public half of a key pair, and
		// refuses symmetric (oct) keys.
		k, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Errorf("keys[%d] (kid %q): %w", i, m.KID, err))
			continue
		case m.USE != "" && m.USE != jwkset.UseSig:
			skipped = append(skipped, fmt.Errorf("keys[%d] (kid %q): use is %q, not sig", i, m.KID, m.USE))
			continue
		}
		switch k.Key().(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			skipped = append(skipped, fmt.Errorf("keys[%d] (kid %q): a %T cannot verify a signature", i, m.KID, k.Key()))
			continue
		}
		if err := store.KeyWrite(context.Background(), k); err != nil {
			return nil, fmt.Errorf("auth.jwt.jwks_file %s: %w", path, err)
		}
	}
	keys, _ := store.KeyReadAll(context.Background())
	if len(keys) == 0 {
		why := errors.Join(skipped...)
		if why == nil {
			why = errors.New("its keys list is empty")
		}
		return nil, fmt.Errorf("auth.jwt.jwks_file %s: holds no usable public key (RSA, EC or Ed25519, use sig): %w", path, why)
	}
	for _, err := range skipped {
		log.Warn().Err(err).Str("jwks_file", path).Msg("auth: JWKS key skipped")
	}
	log.Info().Int("keys", len(keys)).Str("jwks_file", path).Msg("auth: JWKS loaded")
	return store, nil
}

// remoteKeys holds the keys of a JWKS URL. jwkset fetches the set and
// refreshes it in the background; a refresh that fails keeps the keys it
// had. An unknown kid fetches the set again at once (the issuer may have
// rotated its keys), at most once per jwks_min_refresh.
//
// jwkset's own unknown-kid limiter waits for its next slot, which would
// hold a request for up to jwks_min_refresh; the gate here never waits:
// without a slot the kid is unknown. Requests that arrive while a refetch
// runs wait for it (mu) and then look again, so a burst of tokens with a
// freshly rotated kid all pass after one fetch.
type remoteKeys struct {
	jwkset.Storage                // the keys last fetched; reading never fetches
	refetch        jwkset.Storage // reading an unknown kid fetches at once
	gate           *rate.Limiter
	mu             sync.Mutex // one refetch at a time
	ctx            context.Context
}

func newRemoteKeys(ctx context.Context, u string, refresh, minRefresh time.Duration, log zerolog.Logger) (*remoteKeys, error) {
	failed := func(_ context.Context, err error) {
		if ctx.Err() != nil {
			return // closing
		}
		log.Warn().Err(err).Msg("auth: jwks_url fetch failed; the keys fetched before, if any, stay in use")
	}
	cache, err := jwkset.NewStorageFromHTTP(u, jwkset.HTTPClientStorageOptions{
		Client:                    &http.Client{Timeout: fetchTimeout},
		Ctx:                       ctx,
		HTTPTimeout:               fetchTimeout,
		NoErrorReturnFirstHTTPReq: true, // start anyway: 503 until it answers
		RefreshErrorHandler:       failed,
		RefreshInterval:           refresh,
	})
	if err != nil {
		return nil, fmt.Errorf("auth.jwt.jwks_url: %w", err)
	}
	refetch, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs: map[string]jwkset.Storage{u: cache},
		// Never waits: the gate has decided before refetch is read.
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("auth.jwt.jwks_url: %w", err)
	}
	r := &remoteKeys{Storage: cache, refetch: refetch, gate: rate.NewLimiter(rate.Every(minRefresh), 1), ctx: ctx}
	if keys, _ := cache.KeyReadAll(ctx); len(keys) == 0 {
		log.Warn().Msg("auth: jwks_url gave no key yet; requests with a JWT get 503 until it does")
	} else {
		log.Info().Int("keys", len(keys)).Msg("auth: JWKS fetched")
	}
	return r, nil
}

// KeyRead returns the key with this kid, fetching the set again when it is
// unknown and the gate allows.
func (r *remoteKeys) KeyRead(ctx context.Context, kid string) (jwkset.JWK, error) {
	if k, err := r.Storage.KeyRead(ctx, kid); !errors.Is(err, jwkset.ErrKeyNotFound) {
		return k, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, err := r.Storage.KeyRead(ctx, kid); !errors.Is(err, jwkset.ErrKeyNotFound) {
		return k, err // the refetch we waited for brought it
	}
	if !r.gate.Allow() {
		return jwkset.JWK{}, jwkset.ErrKeyNotFound
	}
	ctx, cancel := context.WithTimeout(r.ctx, fetchTimeout)
	defer cancel()
	return r.refetch.KeyRead(ctx, kid)
}

// KeyReadAll returns every key, for a token without kid; with none cached
// it first fetches the set again when the gate allows.
func (r *remoteKeys) KeyReadAll(ctx context.Context) ([]jwkset.JWK, error) {
	if keys, err := r.Storage.KeyReadAll(ctx); err != nil || len(keys) > 0 {
		return keys, err
	}
	_, _ = r.KeyRead(ctx, "") // cached is empty, so any kid is unknown: fetches
	return r.Storage.KeyReadAll(ctx)
}

// empty reports whether no key is cached: the URL never answered, or
// answered with none.
func (r *remoteKeys) empty() bool {
	keys, err := r.Storage.KeyReadAll(context.Background())
	return err != nil || len(keys) == 0
}
